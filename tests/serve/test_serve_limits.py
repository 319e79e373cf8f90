"""`mamba-deploy serve` with one slot and a queue of one (429 beyond), a chat template, and SIGTERM: in-flight
requests drain (a short one finishes, a long one is cancelled after --drain-timeout) and the process exits 0."""
import json
import signal
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

DRAIN_S = 2


@pytest.fixture(scope="module")
def server(start_server, chat_export):
    return start_server(chat_export, "--max-batch", 1, "--max-queue", 1, "--drain-timeout", DRAIN_S)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


LONG = {"prompt": "The list of ", "max_tokens": 4096, "temperature": 0.8, "seed": 5, "stream": True,
        "ignore_eos": True}  # runs until cancelled (about 10 s)


def _first_data(lines):
    """The first event of a stream; `lines` must stay referenced (httpx closes a response whose iterator is
    collected, and the server then cancels the request)."""
    return next(line for line in lines if line.startswith("data: "))


def test_a_full_queue_gets_429(server):
    with httpx.Client(base_url=server.url, timeout=30) as a, httpx.Client(base_url=server.url, timeout=30) as b:
        with a.stream("POST", "/v1/completions", json=LONG) as running:
            lines = running.iter_lines()
            assert _first_data(lines)
            with b.stream("POST", "/v1/completions", json=LONG) as waiting:  # submitted: its headers came back
                assert waiting.status_code == 200
                refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "queue_full"
                assert refused.json()["error"]["type"] == "rate_limit_error"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # both clients gone: their requests are cancelled, there is room again
        response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        if response.status_code == 200:
            break
        time.sleep(0.1)
    assert response.status_code == 200


def test_chat_renders_the_template(client, server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The list of"}]
    out = client.chat.completions.create(model="mamba-tiny-chat", messages=messages, max_tokens=12, temperature=0)
    prompt = "system: Be brief.\nuser: The list of\nassistant:"
    same = client.completions.create(model="mamba-tiny-chat", prompt=prompt, max_tokens=12, temperature=0)
    assert out.choices[0].message.content == same.choices[0].text and out.choices[0].message.role == "assistant"
    assert out.object == "chat.completion" and out.usage.prompt_tokens == same.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model="mamba-tiny-chat", messages=messages, max_tokens=12,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == same.choices[0].text
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert client.chat.completions.create(model="mamba-tiny-chat", messages=parts, max_completion_tokens=3,
                                          temperature=0).usage.completion_tokens == 3


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "bad", "content": "x"}]}, "messages"),  # the template's raise_exception
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, "max_completion_tokens"),
])
def test_bad_chat_requests(server, body, param):
    response = httpx.post(f"{server.url}/v1/chat/completions", content=json.dumps(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_sigterm_drains_and_exits_cleanly(server):
    """Last in the module: it stops the server."""
    with httpx.Client(base_url=server.url, timeout=30) as a:
        with a.stream("POST", "/v1/completions", json=LONG) as running:
            lines = running.iter_lines()
            assert _first_data(lines)
            server.proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            events = [line for line in lines if line.startswith("data: ")]
            elapsed = time.monotonic() - start
    assert events[-1] == "data: [DONE]" and "shutting down" in events[-2]
    assert DRAIN_S - 0.5 < elapsed < DRAIN_S + 10
    assert server.proc.wait(30) == 0
    assert server.next_line(5) == "stopped"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")
