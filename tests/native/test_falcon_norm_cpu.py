"""The native engine's Falcon-Mamba norm step (`NativeEngine._dt_bc_norm`) on the CPU, with the gated-norm kernel
it launches replaced by that kernel's reference: the slices it normalises, in place, are exactly dt, B and C."""
import types

import pytest
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.native import engine as native_engine
from mamba_deploy.ops import cuda as K
from mamba_deploy.ops import gated_rms_norm_ref, rms_norm_ref


def _kernel_reference(x, z, weight, eps=1e-5, group_size=None, *, out=None):
    """K.gated_rms_norm's checks of its views (shared code, CPU-safe) and its reference math, into `out`."""
    d = x.shape[-1]
    assert weight.shape == (d,) and out is not None and out.shape == x.shape
    K._rows(x, "x", d), K._rows(out, "out", d)  # the kernel's row view of strided slices must exist
    out.copy_(gated_rms_norm_ref(x, z, weight, eps, group_size))
    return out


@pytest.mark.parametrize("dt_rank,d_state", [(20, 16), (5, 8), (256, 16)])
@pytest.mark.parametrize("shape", [(3,), (2, 7)])  # decode rows of the static buffer; a prefill chunk
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dt_bc_norm_equals_reference(monkeypatch, dt_rank, d_state, shape, dtype):
    cfg = parse_config({"model_type": "falcon_mamba", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 50,
                        "state_size": d_state, "time_step_rank": dt_rank, "mixer_rms_eps": 1e-3})
    monkeypatch.setattr(K, "gated_rms_norm", _kernel_reference)
    fake = types.SimpleNamespace(config=cfg, unit=torch.ones(dt_rank + 2 * d_state, dtype=dtype))
    width = dt_rank + 2 * d_state
    if len(shape) == 1:  # decode: rows [:b] of the static (max_batch, width) buffer
        xdbl = (torch.randn(shape[0] + 2, width, dtype=dtype) * 3)[:shape[0]]
    else:  # prefill: x_proj's fresh (batch, seq, width) output
        xdbl = torch.randn(*shape, width, dtype=dtype) * 3
    dt, B, C = torch.split(xdbl.clone(), [dt_rank, d_state, d_state], dim=-1)
    native_engine.NativeEngine._dt_bc_norm(fake, xdbl)
    want = torch.cat([rms_norm_ref(t, 1e-3) for t in (dt, B, C)], dim=-1)
    assert torch.equal(xdbl, want)
    assert not torch.equal(xdbl, torch.cat([dt, B, C], -1))


def test_dt_bc_norm_does_nothing_for_plain_mamba(monkeypatch):
    cfg = parse_config({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 50})
    monkeypatch.setattr(K, "gated_rms_norm", None)  # would raise if called
    xdbl = torch.randn(2, cfg.dt_rank + 2 * cfg.d_state)
    before = xdbl.clone()
    native_engine.NativeEngine._dt_bc_norm(types.SimpleNamespace(config=cfg, unit=None), xdbl)
    assert torch.equal(xdbl, before)
