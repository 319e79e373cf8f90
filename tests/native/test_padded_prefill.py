"""NativeEngine.prefill(..., lengths=): prompts of different lengths right-aligned in one batch (left padding)
== each prompt prefilled alone from a zero state (logits of its last token, every state tensor): eager, in one
chunk and across chunk boundaries where whole chunks of a row are padding, and as one replay of a padded
prefill graph (reused for other lengths); on the GPU.
CPU twin with the kernels' references: tests/native/test_engine_parts_cpu.py."""
import pytest
import torch

pytestmark = pytest.mark.gpu

ARCHS = ["mamba1", "mamba2", "falcon_mamba", "mamba2_d_ssm", "mamba1_mlp"]  # conftest.CONFIGS without attention
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


def _check_rows_equal_prompts_alone(eng, rel_err, ids, lengths, state, got, dtype):
    n = ids.shape[1]
    for r, k in enumerate(lengths):
        alone = eng.new_state(1).zero_()  # another state is alive: its own tensors, the eager path
        want = eng.prefill(ids[r:r + 1, n - k:], alone)
        assert rel_err(got[r:r + 1], want) <= TOL[dtype], f"row {r} ({k} tokens): logits"
        for padded, single in zip(state.tensors(), alone.tensors()):
            assert rel_err(padded[r:r + 1], single) <= TOL[dtype], f"row {r} ({k} tokens): state"


def _prompts(seed, n=37):
    return torch.randint(1, 1000, (4, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunk_len", [2048, 16])
def test_left_padded_rows_equal_each_prompt_alone(native, checkpoints, rel_err, arch, dtype, chunk_len):
    eng = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, chunk_len=chunk_len)
    lengths, ids = [37, 5, 1, 20], _prompts(9)
    state = eng.new_state(4).zero_()
    got = eng.prefill(ids, state, lengths=lengths)
    _check_rows_equal_prompts_alone(eng, rel_err, ids, lengths, state, got, dtype)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "falcon_mamba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_padded_graph_rows_equal_each_prompt_alone(native, checkpoints, rel_err, arch, dtype):
    eng = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, prefill_graph_tokens=64)
    state = eng.new_state(4)  # the pool's slots 0-3: the graphs' state
    for lengths, seed in (([37, 5, 1, 20], 9), ([2, 37, 30, 3], 10)):  # the second call replays the same graph
        ids = _prompts(seed)
        got = eng.prefill(ids, state.zero_(), lengths=lengths)
        _check_rows_equal_prompts_alone(eng, rel_err, ids, lengths, state, got, dtype)
    assert set(eng.prefill_graphs.graphs) == {(4, 64, True)}


def test_lengths_that_cannot_be_padded_are_refused(native, checkpoints):
    from mamba_deploy.errors import ParameterError

    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=2)
    with pytest.raises(ParameterError, match="lengths must be 2 prompt lengths in 1..5"):
        eng.prefill(torch.ones(2, 5, dtype=torch.int64), eng.new_state(2), lengths=[5, 0])
    hybrid = native.load_engine(checkpoints["hybrid"], dtype=torch.float32, max_batch=2)
    with pytest.raises(ParameterError, match="without attention layers"):
        hybrid.prefill(torch.ones(2, 5, dtype=torch.int64), hybrid.new_state(2), lengths=[5, 2])
