"""A hybrid export (attention layers: the pool's slots carry KV caches and lengths) through the Scheduler and
Engine.generate on the onnxruntime and torch backends, and on the native backend on a GPU."""
import pytest
import torch

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.errors import ParameterError
from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.export.testing import tiny_checkpoint
from mamba_deploy.runtime import Engine, SamplingParams
from mamba_deploy.runtime.scheduler import Scheduler

pytestmark = pytest.mark.filterwarnings("ignore:the checkpoint has no tokenizer")
GREEDY = dict(params=SamplingParams(temperature=0))
SEEDED = dict(params=SamplingParams(temperature=0.9, top_k=30), seed=5)
MAX_LEN = 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint("hybrid", tmp_path_factory.mktemp("hybrid") / "ckpt", seed=2)


@pytest.fixture(scope="module", params=["onnxruntime", "torch", pytest.param("native", marks=pytest.mark.gpu)])
def engine(request, checkpoint):
    folder = export_model(checkpoint, checkpoint.parent / f"export-{request.param}",
                          ExportOptions(max_seq_len=MAX_LEN), progress=False)
    return Engine.load(folder, backend=request.param, **({"threads": 1} if request.param == "onnxruntime" else {}))


def _solo(engine, prompt, **kwargs):
    with Scheduler(engine.backend, max_batch=1) as alone:
        return alone.submit(prompt, output="ids", **kwargs).result()


def test_greedy_tokens_are_the_references(engine, checkpoint):
    model, ids = load_reference(checkpoint), [3, 14, 15, 92, 65]
    want = []
    for _ in range(9):
        want.append(int(model(torch.tensor([ids + want]))[0, -1, :100].argmax()))
    assert engine.generate([ids], max_new_tokens=9, temperature=0) == [want]


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_ragged_batch_and_late_joiner_get_their_solo_tokens(engine, sampling):
    """Slots at different positions decode together; chunks of a long prompt are prefilled beside them."""
    prompts = [[5, 6, 7, 8], [40, 41], [(7 * j) % 90 + 1 for j in range(23)]]
    want = [_solo(engine, p, max_new_tokens=12, **sampling) for p in prompts]
    with Scheduler(engine.backend, max_batch=3, prefill_chunk=6, token_budget=6) as sched:
        first = sched.submit(prompts[0], max_new_tokens=12, output="ids", **sampling)
        stream = iter(first)
        head = [next(stream) for _ in range(3)]
        others = [sched.submit(p, max_new_tokens=12, output="ids", **sampling) for p in prompts[1:]]
        assert head + list(stream) == want[0]
        assert [h.result(timeout=60) for h in others] == want[1:]
        sched.pool.check_no_leaks()


def test_slots_reused_after_a_longer_sequence(engine):
    """A slot's stale cache entries (beyond the new sequence's length) must not leak into the next request."""
    want = _solo(engine, [9, 8, 7], max_new_tokens=5, **GREEDY)
    with Scheduler(engine.backend, max_batch=1) as sched:
        sched.submit(list(range(1, 31)), max_new_tokens=8, output="ids", **GREEDY).result()
        assert sched.submit([9, 8, 7], max_new_tokens=5, output="ids", **GREEDY).result() == want


def test_prompt_plus_output_is_bounded_by_max_seq_len(engine):
    assert len(engine.generate([list(range(1, 31))], max_new_tokens=MAX_LEN - 30, temperature=0)[0]) == 10
    with Scheduler(engine.backend, max_batch=1) as sched:
        with pytest.raises(ParameterError, match=f"max_seq_len {MAX_LEN}") as info:
            sched.submit(list(range(1, 31)), max_new_tokens=MAX_LEN - 29)
        assert info.value.param == "max_new_tokens"
    with pytest.raises(ParameterError, match="max_seq_len"):
        engine.generate([[1] * (MAX_LEN + 1)], max_new_tokens=0)
