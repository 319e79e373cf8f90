"""A float32 engine in a process set to TF32 (torch.set_float32_matmul_precision("high"), as applications do): the
same logits as under "highest", bit for bit, the process's setting kept; NativeEngine(tf32=True) within TF32's
rounding of them (native/precision.py)."""
import pytest
import torch
from prompts import ids

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "hybrid"])
def test_a_float32_engine_keeps_float32_products_unless_asked(native, checkpoints, rel_err, arch):
    prompt = ids(2, 40, 3)

    def logits(process: str, **options) -> torch.Tensor:
        torch.set_float32_matmul_precision(process)
        eng = native.load_engine(checkpoints[arch], dtype=torch.float32, max_batch=2, **options)
        state = eng.new_state(2)
        out = [eng.prefill(prompt, state).clone()]
        for _ in range(3):
            out.append(eng.decode(out[-1].argmax(-1), state).clone())
        return torch.cat(out, 1)

    before = torch.get_float32_matmul_precision()
    try:
        exact = logits("highest")
        assert torch.equal(logits("high"), exact), "the process's TF32 setting reached the engine"
        assert torch.get_float32_matmul_precision() == "high", "the process's setting was not restored"
        assert rel_err(logits("highest", tf32=True), exact) <= 1e-2
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
