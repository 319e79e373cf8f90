"""Which form decode.mamba1_mixer gives Mamba1's dt_proj (on the CPU, the kernels recorded, not run): inside the
step on CUDA cores below dt_gemm_min_batch; from there a projection of its own before the streaming step, or with
the engine's step_dt_tc, where the step's tensor-core form takes the buffers, a product inside the step; and the
engine's switches (step_dt_tc among them) dropping the graphs captured under their other value."""
import types

import pytest
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.native import decode as D, gemv as G

CFG = parse_config({"d_model": 32, "n_layer": 1, "vocab_size": 50, "ssm_cfg": {"d_state": 16}})


def _mixer_calls(monkeypatch, batch, step_dt_tc, tc_ok=True):
    """decode.mamba1_mixer at `batch`: [(projection name or "step"), ...] and the step's keyword arguments."""
    calls, step_kwargs = [], {}
    monkeypatch.setattr(D, "proj", lambda eng, x, w, b, out, *a, name=None, **k: calls.append(name or "dt_proj"))
    monkeypatch.setattr(G, "mamba1_step_tc_ok", lambda *a: tc_ok)

    def step(*args, **kwargs):
        calls.append("step")
        step_kwargs.update(kwargs)
    monkeypatch.setattr(G, "mamba1_step", step)
    c, B = CFG, batch
    eng = types.SimpleNamespace(config=c, unit=None, dt_gemm_min_batch=8, step_dt_tc=step_dt_tc,
                                x_proj_tc_max_batch=16, out_proj_tc_max_batch=None, out_proj_slices=0, out_parts=None,
                                xz=torch.zeros(B, c.in_proj_dim), xdbl=torch.zeros(B, c.dt_rank + 2 * c.d_state),
                                y=torch.zeros(B, c.d_inner), dt=torch.zeros(B, c.d_inner), hidden=torch.zeros(B, 32))
    layer = types.SimpleNamespace(x_w=None, dt_packed="packed", dt_w=None, dt_b=None, A=None, D=None, out_w=None,
                                  out_b=None)
    D.mamba1_mixer(eng, batch, layer, torch.zeros(B, c.d_inner, 16), torch.arange(B))
    return calls, step_kwargs


@pytest.mark.parametrize("step_dt_tc", [False, True])
def test_below_dt_gemm_min_batch_the_step_computes_dt(monkeypatch, step_dt_tc):
    calls, kwargs = _mixer_calls(monkeypatch, 4, step_dt_tc)
    assert calls == ["x_proj", "step", "out_proj"] and not kwargs.get("tc") and kwargs.get("dt") is None


@pytest.mark.parametrize("batch", [8, 64])
def test_from_dt_gemm_min_batch_step_dt_tc_saves_the_projection(monkeypatch, batch):
    calls, kwargs = _mixer_calls(monkeypatch, batch, True)
    assert calls == ["x_proj", "step", "out_proj"] and kwargs["tc"] is True and kwargs.get("dt") is None
    calls, kwargs = _mixer_calls(monkeypatch, batch, False)
    assert calls == ["x_proj", "dt_proj", "step", "out_proj"] and not kwargs.get("tc")
    assert kwargs["dt"] is not None


def test_buffers_the_tensor_core_form_refuses_keep_the_projection(monkeypatch):
    calls, kwargs = _mixer_calls(monkeypatch, 16, True, tc_ok=False)
    assert calls == ["x_proj", "dt_proj", "step", "out_proj"] and not kwargs.get("tc")


@pytest.mark.parametrize("switch", ["step_dt_tc", "fold_gated_norm", "tf32"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_changing_a_switch_drops_the_graphs_that_hold_its_kernels(switch, dtype):
    """NativeEngine's boolean switches (engine._GraphSwitch): setting the value it has keeps the graphs, another
    drops decode, sampled-decode and prefill graphs alike; tf32 changes only a float32 engine's kernels."""
    from mamba_deploy.native.engine import NativeEngine

    eng = object.__new__(NativeEngine)  # no __init__: no GPU
    eng.dtype, eng._step_dt_tc, eng._fold_gated_norm, eng._tf32 = dtype, False, False, False
    eng.graphs, eng.sample_graphs = {1: "graph"}, {(1, 10, True): "graph"}
    eng.prefill_graphs = types.SimpleNamespace(graphs={(1, 16): "graph"})
    setattr(eng, switch, 0)
    assert eng.graphs and eng.sample_graphs and eng.prefill_graphs.graphs
    setattr(eng, switch, 1)
    assert getattr(eng, switch) is True
    dropped = switch != "tf32" or dtype == torch.float32
    assert (not eng.graphs and not eng.sample_graphs and not eng.prefill_graphs.graphs) == dropped
    assert bool(eng.graphs) != dropped
