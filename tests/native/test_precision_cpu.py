"""A float32 engine's matrix products follow its tf32 option, not the process's torch setting (native/precision.py),
on the CPU: the setting inside the engine's GPU entry points (prefill, the decode replay, decode_sample), and the
process's own setting back after them, also after an error."""
import subprocess
import sys
import types

import pytest
import torch

from mamba_deploy.native import engine as E
from mamba_deploy.native.precision import float32_matmuls

MATMUL = torch.backends.cuda.matmul


def tf32_now() -> bool:
    return MATMUL.fp32_precision == "tf32"


@pytest.fixture
def process_setting():
    """The test runs with the process in TF32 ("high", as applications set it); restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("process", ["high", "highest"])
def test_the_block_runs_under_the_option_then_restores(tf32, process):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(process)
    try:
        with float32_matmuls(tf32):
            assert tf32_now() == tf32
        assert tf32_now() == (process == "high")
        with pytest.raises(RuntimeError), float32_matmuls(tf32):
            raise RuntimeError("a kernel failed")
        assert tf32_now() == (process == "high")
    finally:
        torch.set_float32_matmul_precision(before)


def test_legacy_flag_reads_the_same_after_the_block():
    """An application that set allow_tf32 (the older API) can still read it after an engine call."""
    before = MATMUL.fp32_precision
    MATMUL.allow_tf32 = True
    try:
        with float32_matmuls(False):
            assert not tf32_now()
        assert MATMUL.allow_tf32 is True
    finally:
        MATMUL.fp32_precision = before


FRESH_PROCESS = """
import torch
from mamba_deploy.native.precision import float32_matmuls
m = torch.backends.cuda.matmul
with float32_matmuls(False), float32_matmuls(True):  # an application that set nothing
    pass
assert m.allow_tf32 is False, "its legacy flag reads as before"
torch.backends.fp32_precision = "tf32"  # the generic setting, which cuda.matmul's "none" inherits
assert m.fp32_precision == "tf32"
with float32_matmuls(False):
    assert m.fp32_precision == "ieee", "inherited TF32 inside the engine"
assert m.fp32_precision == "tf32"
print("ok")
"""


def test_fresh_processes_keep_their_flags():
    """In a process of its own (torch's flags are global, and the tests above set them): the legacy flag of an
    application that set nothing still reads after an engine call, and TF32 inherited from the generic setting
    does not reach the engine."""
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _stand_in(dtype, tf32):
    """A NativeEngine without __init__ (no GPU): only what the decorated methods read before the patched work."""
    eng = object.__new__(E.NativeEngine)
    eng.dtype, eng._tf32, eng.use_graphs, eng.device, eng.max_batch = dtype, tf32, False, torch.device("cpu"), 4
    eng.config = types.SimpleNamespace(attn_layer_idx=[])
    eng.prefill_graphs = types.SimpleNamespace(max_tokens=0)
    eng.chunk_len = 8
    eng._sampler, eng.slot_ids, eng.tokens = "sampler", torch.zeros(4, dtype=torch.int64), torch.zeros(4)
    return eng


@pytest.mark.parametrize("dtype,tf32,want", [(torch.float32, False, False), (torch.float32, True, True),
                                             (torch.float16, False, True)])  # fp16: the process's setting kept
def test_engine_entry_points_run_under_the_option(process_setting, monkeypatch, dtype, tf32, want):
    seen = []
    monkeypatch.setattr(E.D, "step", lambda eng, b, **k: seen.append(("step", tf32_now())))
    monkeypatch.setattr(E.NativeEngine, "_sample_step", lambda self, *a: seen.append(("sample", tf32_now())))
    monkeypatch.setattr(E.NativeEngine, "_prefill_chunk",
                        lambda self, ids, *a, **k: seen.append(("prefill", tf32_now())) or ids)
    eng = _stand_in(dtype, tf32)
    eng._replay(2)
    eng.decode_sample(torch.tensor([0, 1]), "sampler", 10)
    eng.prefill(torch.zeros(1, 12, dtype=torch.int64), types.SimpleNamespace(length=None))
    assert seen == [("step", want), ("sample", want), ("prefill", want), ("prefill", want)]
    assert tf32_now(), "the process's own setting was not restored"


def test_setting_the_option_drops_the_graphs_of_a_float32_engine():
    eng = _stand_in(torch.float32, False)
    eng.graphs, eng.sample_graphs = {1: "graph"}, {(1, 10, True): "graph"}
    eng.prefill_graphs = types.SimpleNamespace(graphs={(1, 16): "graph"})
    eng.tf32 = False
    assert eng.graphs and eng.sample_graphs and eng.prefill_graphs.graphs
    eng.tf32 = True
    assert eng.tf32 and not eng.graphs and not eng.sample_graphs and not eng.prefill_graphs.graphs

