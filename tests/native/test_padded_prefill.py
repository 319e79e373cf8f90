"""NativeEngine.prefill(..., lengths=): prompts of different lengths right-aligned in one batch (left padding)
== each prompt prefilled alone from a zero state (logits of its last token, every state tensor), in one chunk
and across chunk boundaries where whole chunks of a row are padding; on the GPU.
CPU twin with the kernels' references: tests/native/test_engine_parts_cpu.py."""
import pytest
import torch

pytestmark = pytest.mark.gpu

ARCHS = ["mamba1", "mamba2", "falcon_mamba", "mamba2_d_ssm", "mamba1_mlp"]  # conftest.CONFIGS without attention
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunk_len", [2048, 16])
def test_left_padded_rows_equal_each_prompt_alone(native, checkpoints, rel_err, arch, dtype, chunk_len):
    eng = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, chunk_len=chunk_len)
    lengths, n = [37, 5, 1, 20], 37
    ids = torch.randint(1, 1000, (4, n), generator=torch.Generator().manual_seed(9))
    state = eng.new_state(4).zero_()
    got = eng.prefill(ids, state, lengths=lengths)
    for r, k in enumerate(lengths):
        alone = eng.new_state(1).zero_()
        want = eng.prefill(ids[r:r + 1, n - k:], alone)
        assert rel_err(got[r:r + 1], want) <= TOL[dtype], f"row {r} ({k} tokens): logits"
        for padded, single in zip(state.tensors(), alone.tensors()):
            assert rel_err(padded[r:r + 1], single) <= TOL[dtype], f"row {r} ({k} tokens): state"


def test_lengths_that_cannot_be_padded_are_refused(native, checkpoints):
    from mamba_deploy.errors import ParameterError

    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=2)
    with pytest.raises(ParameterError, match="lengths must be 2 prompt lengths in 1..5"):
        eng.prefill(torch.ones(2, 5, dtype=torch.int64), eng.new_state(2), lengths=[5, 0])
    hybrid = native.load_engine(checkpoints["hybrid"], dtype=torch.float32, max_batch=2)
    with pytest.raises(ParameterError, match="without attention layers"):
        hybrid.prefill(torch.ones(2, 5, dtype=torch.int64), hybrid.new_state(2), lengths=[5, 2])
