"""Backends under concurrent calls (threads sharing one Engine) and with strided (non-contiguous) states."""
import threading

import pytest
import torch

from mamba_deploy.models.state import InferenceState
from mamba_deploy.runtime import Engine

PROMPTS = [[3 + k, 40 - k, 7 * k % 90 + 1, 11] for k in range(8)]
SETTINGS = [dict(temperature=0), dict(temperature=0.9, top_k=30, seed=5)]


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def engine(request, export_dir):
    return Engine.load(export_dir, backend=request.param, **({"threads": 1} if request.param == "onnxruntime" else {}))


def _run_threads(fn, n: int) -> list:
    """fn(k) in n threads started together; their results in order (re-raises a thread's error)."""
    results, errors, barrier = [None] * n, [], threading.Barrier(n)

    def work(k):
        try:
            barrier.wait()
            results[k] = fn(k)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "seeded"])
def test_threads_sharing_one_engine_get_solo_outputs(engine, settings):
    solo = [engine.generate(p, max_new_tokens=24, **settings) for p in PROMPTS]
    for _ in range(3):
        assert _run_threads(lambda k: engine.generate(PROMPTS[k], max_new_tokens=24, **settings), 8) == solo


def test_threads_batched_generate(engine):
    batch = [PROMPTS[:3], PROMPTS[3:]]
    solo = [engine.generate(b, max_new_tokens=16, temperature=0) for b in batch]
    assert _run_threads(lambda k: engine.generate(batch[k % 2], max_new_tokens=16, temperature=0), 6) == solo * 3


def _strided_like(state: InferenceState, layout: str) -> InferenceState:
    """A copy of `state` whose tensors are non-contiguous: transposed storage or slices of a larger buffer."""
    def strided(t):
        if layout == "transposed":  # storage in reversed dimension order, viewed back to t's shape
            return t.permute(*reversed(range(t.dim()))).contiguous().permute(*reversed(range(t.dim()))).copy_(t)
        big = torch.full((t.shape[0] * 2, *(s + 3 for s in t.shape[1:])), float("nan"), dtype=t.dtype)
        view = big[1::2, *(slice(2, 2 + s) for s in t.shape[1:])]
        return view.copy_(t)

    out = InferenceState([strided(t) for t in state.conv], [strided(t) for t in state.ssm])
    assert not any(t.is_contiguous() for t in out.conv + out.ssm)
    return out


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_strided_state_gives_same_logits(engine, layout):
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    dense = engine.new_state(2)
    engine.prefill(ids[:, :5], dense)
    strided = _strided_like(dense, layout)
    for chunk in (ids[:, 5:8], ids[:, 8:9]):
        want = engine.prefill(chunk, dense) if chunk.shape[1] > 1 else engine.decode(chunk, dense)
        got = engine.prefill(chunk, strided) if chunk.shape[1] > 1 else engine.decode(chunk, strided)
        assert torch.equal(got, want)
        for a, b in zip(strided.conv + strided.ssm, dense.conv + dense.ssm):
            assert torch.equal(a, b)


def test_threads_streaming_text(engine):
    prompts = ["HI", "A LONGER PROMPT", "é!", "42"]
    solo = [engine.generate(p, max_new_tokens=12, temperature=0.8, seed=2) for p in prompts]
    streamed = _run_threads(
        lambda k: "".join(engine.generate(prompts[k % 4], max_new_tokens=12, temperature=0.8, seed=2, stream=True)), 8)
    assert streamed == solo * 2
