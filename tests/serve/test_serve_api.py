"""`mamba-deploy serve` as a client sees it, through the official `openai` client and raw HTTP: completions
(whole and streamed, text and token-id prompts), batching that changes nothing, disconnects that free their
slots, every refusal with OpenAI's error body, the API key, /metrics. One server for the whole module."""
import concurrent.futures
import json
import re
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

API_KEY = "test-key-123"
MAX_PROMPT = 64
PROMPTS = ["The list of ", "Exceptions", "A class definition", "The import statement", "Dictionaries are",
           "The for statement", "Strings are", "A function", "Integers", "The while loop", "Lambda expressions",
           "The with statement", "Slicings", "Comparisons", "Boolean operations", "Assignment statements"]


@pytest.fixture(scope="module")
def server(start_server, demo_export):
    return start_server(demo_export, "--api-key", API_KEY, "--max-batch", 16, "--max-prompt-tokens", MAX_PROMPT,
                        "--max-tokens-limit", 4096)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def engine(demo_export):
    from mamba_deploy import Engine

    return Engine.load(demo_export, backend="onnxruntime")


def metrics(http) -> dict:
    """The /metrics samples as {'name{labels}': value}."""
    text = http.get("/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_completion_is_what_the_engine_generates(client, engine):
    out = client.completions.create(model="mamba-tiny-pydoc", prompt="The list of ", max_tokens=24, temperature=0)
    expected = engine.generate("The list of ", max_new_tokens=24, temperature=0)
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "length"
    prompt_tokens = len(engine.tokenizer.encode("The list of ").ids)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (prompt_tokens, 24, prompt_tokens + 24)
    assert out.object == "text_completion" and out.model == "mamba-tiny-pydoc" and out.id.startswith("cmpl-")


def test_streaming_gives_the_same_text_and_ends_with_done(client, http):
    kwargs = dict(model="mamba-tiny-pydoc", prompt="Exceptions", max_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    raw = http.post("/v1/completions", json={**kwargs, "stream": True}).text
    assert raw.endswith("data: [DONE]\n\n") and all(e.startswith("data: ") for e in raw.split("\n\n") if e)


def test_token_id_prompts_and_several_prompts(client, engine):
    ids = engine.tokenizer.encode("The list of ").ids
    by_ids = client.completions.create(model="mamba-tiny-pydoc", prompt=ids, max_tokens=8, temperature=0)
    by_text = client.completions.create(model="mamba-tiny-pydoc", prompt="The list of ", max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    several = client.completions.create(model="mamba-tiny-pydoc", prompt=[ids, engine.tokenizer.encode("A").ids],
                                        max_tokens=8, temperature=0)
    assert [c.index for c in several.choices] == [0, 1] and several.choices[0].text == by_text.choices[0].text
    texts = client.completions.create(model="mamba-tiny-pydoc", prompt=["The list of ", "A"], max_tokens=8,
                                      temperature=0)
    assert [c.text for c in texts.choices] == [c.text for c in several.choices]


def test_stop_string_ends_the_completion_before_it(client):
    whole = client.completions.create(model="mamba-tiny-pydoc", prompt="The list of ", max_tokens=24,
                                      temperature=0).choices[0]
    stop = whole.text[10:13]
    cut = client.completions.create(model="mamba-tiny-pydoc", prompt="The list of ", max_tokens=24, temperature=0,
                                    stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == whole.text[:whole.text.index(stop)]


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, top_k=40, top_p=0.95)])
def test_16_concurrent_clients_get_what_they_get_alone(client, sampling):
    def ask(index, stream=False):
        kwargs = dict(model="mamba-tiny-pydoc", prompt=PROMPTS[index], max_tokens=16, seed=100 + index,
                      temperature=sampling["temperature"], extra_body={k: v for k, v in sampling.items()
                                                                       if k != "temperature"})
        if not stream:
            return client.completions.create(**kwargs).choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True))

    alone = [ask(i) for i in range(16)]
    barrier = threading.Barrier(16)

    def together(index):
        barrier.wait(timeout=30)
        return ask(index, stream=index % 2 == 1)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(together, range(16))) == alone
    assert len(set(alone)) > 8  # the prompts (and seeds) really differ


def _wait_for_running(http, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics(http)["mamba_deploy_running_requests"] == wanted:
            return True
        time.sleep(0.05)
    return False


def test_disconnect_mid_stream_frees_the_slot(http, server):
    before = metrics(http)["mamba_deploy_generation_tokens_total"]
    body = {"prompt": "The list of ", "max_tokens": 4096, "temperature": 0.8, "seed": 1, "stream": True,
            "ignore_eos": True}
    with httpx.Client(base_url=server.url, headers=http.headers, timeout=30) as other:
        with other.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert metrics(http)["mamba_deploy_running_requests"] == 1
    assert _wait_for_running(http, 0)  # the client closed its connection: the request was cancelled
    assert metrics(http)["mamba_deploy_generation_tokens_total"] - before < 4096


def test_disconnect_while_waiting_for_a_whole_completion_frees_the_slot(http, server):
    before = metrics(http)["mamba_deploy_generation_tokens_total"]
    body = {"prompt": "Exceptions", "max_tokens": 4096, "temperature": 0.8, "seed": 2, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers=http.headers, timeout=1.0)
    assert _wait_for_running(http, 0)
    assert metrics(http)["mamba_deploy_generation_tokens_total"] - before < 4096
    assert metrics(http)['mamba_deploy_requests_total{endpoint="/v1/completions",status="499"}'] >= 1


BAD_REQUESTS = [  # (body, status, param, code)
    (b"{not json", 400, None, None),
    ([1, 2], 400, None, None),
    ({}, 400, "prompt", None),
    ({"prompt": 123}, 400, "prompt", None),
    ({"prompt": []}, 400, "prompt", None),
    ({"prompt": [1, "a"]}, 400, "prompt", None),
    ({"prompt": [[1, 2], []]}, 400, "prompt", None),
    ({"prompt": [5, 2045]}, 400, "prompt", None),  # vocab_size 2045: out of vocabulary
    ({"prompt": [-1]}, 400, "prompt", None),
    ({"prompt": [[1.5]]}, 400, "prompt", None),
    ({"prompt": list(range(1, MAX_PROMPT + 2))}, 400, "prompt", "context_length_exceeded"),
    ({"prompt": "x", "max_tokens": "10"}, 400, "max_tokens", None),
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
    ({"prompt": "x", "max_tokens": 4097}, 400, "max_tokens", None),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature", None),
    ({"prompt": "x", "temperature": -1}, 400, "temperature", None),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ({"prompt": "x", "top_k": 1.5}, 400, "top_k", None),
    ({"prompt": "x", "min_p": 2}, 400, "min_p", None),
    ({"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty", None),
    ({"prompt": "x", "seed": -1}, 400, "seed", None),
    ({"prompt": "x", "seed": "7"}, 400, "seed", None),
    ({"prompt": "x", "stop": 5}, 400, "stop", None),
    ({"prompt": "x", "stop": [""]}, 400, "stop", None),
    ({"prompt": "x", "stream": "yes"}, 400, "stream", None),
    ({"prompt": "x", "ignore_eos": 1}, 400, "ignore_eos", None),
    ({"prompt": "x", "stream_options": {"include_usage": 1}}, 400, "stream_options", None),
    ({"prompt": "x", "n": 2}, 400, "n", "unsupported_parameter"),
    ({"prompt": "x", "logprobs": 5}, 400, "logprobs", "unsupported_parameter"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"prompt": "x", "model": 7}, 400, "model", None),
]


@pytest.mark.parametrize("body,status,param,code", BAD_REQUESTS)
def test_bad_requests_get_an_openai_error(http, body, status, param, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_a_body_too_large_is_refused(http):
    response = http.post("/v1/completions", content=b" " * (16 * 2**20 + 1))
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]


def test_unknown_paths_and_methods(http):
    for method, path, status in (("GET", "/v2/nothing", 404), ("GET", "/v1/completions", 405)):
        response = http.request(method, path)
        assert response.status_code == status and response.json()["error"]["message"]


def test_api_key(server, client):
    url = f"{server.url}/v1/models"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic x"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in client.models.list().data] == ["mamba-tiny-pydoc"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # health and metrics need no key


def test_metrics_counters_move(http, client):
    before = metrics(http)
    key = 'mamba_deploy_requests_total{endpoint="/v1/completions",status="200"}'
    out = client.completions.create(model="mamba-tiny-pydoc", prompt="Strings are", max_tokens=12, temperature=0,
                                    stream=True, stream_options={"include_usage": True})
    chunks = list(out)
    pieces = sum(1 for c in chunks if c.choices and c.choices[0].text)
    http.post("/v1/completions", json={"prompt": [99999]})
    after = metrics(http)
    assert after[key] == before.get(key, 0) + 1
    bad = 'mamba_deploy_requests_total{endpoint="/v1/completions",status="400"}'
    assert after[bad] == before.get(bad, 0) + 1
    assert after["mamba_deploy_prompt_tokens_total"] - before["mamba_deploy_prompt_tokens_total"] == \
        chunks[-1].usage.prompt_tokens
    assert after["mamba_deploy_generation_tokens_total"] - before["mamba_deploy_generation_tokens_total"] == \
        chunks[-1].usage.completion_tokens > 0
    ttft, itl = "mamba_deploy_time_to_first_token_seconds_count", "mamba_deploy_inter_token_latency_seconds_count"
    assert after[ttft] == before[ttft] + 1 and after[itl] == before[itl] + pieces - 1
    assert after['mamba_deploy_time_to_first_token_seconds_bucket{le="+Inf"}'] == after[ttft]
    assert after["mamba_deploy_queue_depth"] == 0 and after["mamba_deploy_slots"] == 16
    text = http.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert re.search(r"^# TYPE mamba_deploy_inter_token_latency_seconds histogram$", text.text, re.M)


def test_chat_without_a_template_is_refused(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mamba-tiny-pydoc", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400 and "no chat template" in info.value.message
