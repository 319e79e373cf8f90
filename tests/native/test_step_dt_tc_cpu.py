"""Which form decode.mamba1_mixer gives Mamba1's dt_proj (on the CPU, the kernels recorded, not run): inside the
step on CUDA cores below dt_gemm_min_batch; from there a projection of its own before the streaming step, or with
the engine's step_dt_tc, where the step's tensor-core form takes the buffers, a product inside the step."""
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
                                x_proj_tc_max_batch=16, out_proj_tc_max_batch=None,
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
