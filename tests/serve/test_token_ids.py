"""A model without a tokenizer (as `--random-init` serves): token-id prompts in, token ids out, in process
(the ASGI app through Starlette's TestClient), on a tiny export with the torch backend."""
import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from mamba_deploy.serve import ServeOptions, load_service  # noqa: E402
from mamba_deploy.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def service(exports):
    service = load_service(str(exports("mamba1")), ServeOptions(backend="torch", max_batch=4))
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as client:
        yield client


def test_token_ids_whole_and_streamed(client, service):
    from mamba_deploy.runtime import SamplingParams

    body = {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 5, "temperature": 0.7, "seed": 3}
    whole = client.post("/v1/completions", json=body).json()
    alone = service.scheduler.submit([4, 5], SamplingParams(0.7), seed=3, max_new_tokens=5).result()
    assert [c["text"] for c in whole["choices"]] == ["", ""] and whole["choices"][1]["token_ids"] == alone
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = [[], []]
    for chunk in map(json.loads, events[:-1]):
        streamed[chunk["choices"][0]["index"]] += chunk["choices"][0]["token_ids"]
    assert streamed == [c["token_ids"] for c in whole["choices"]]


def test_text_is_refused_without_a_tokenizer(client):
    response = client.post("/v1/completions", json={"prompt": "hello"})
    assert response.status_code == 400 and "no tokenizer" in response.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).status_code == 400


def test_a_closing_server_refuses_new_requests(exports):
    service = load_service(str(exports("mamba1")), ServeOptions(backend="torch", max_batch=1))
    with TestClient(create_app(service)) as client:
        service.close()
        response = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 1})
    assert response.status_code == 503 and "shutting down" in response.json()["error"]["message"]


def test_an_engine_failure_is_a_500_or_an_error_event(client, service, monkeypatch):
    def broken(*args):
        raise RuntimeError("device lost")

    monkeypatch.setattr(service.engine.backend, "decode_slots", broken)
    body = {"prompt": [1, 2], "max_tokens": 4}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 500 and "device lost" in response.json()["error"]["message"]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "device lost" in json.loads(events[-2])["error"]["message"] and events[-1] == "[DONE]"
