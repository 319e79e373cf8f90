"""Helpers of the CUDA kernel tests (tests/ops/test_*_cuda.py): inputs on the GPU and the error check against a
float32 reference. Outputs are poisoned with NaN before every launch; errors are ||out - ref|| / ||ref||."""
import math

import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
SEQS = [1, 2, 129, 1000]


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def f32(*ts):
    return [None if t is None else t.float() for t in ts]


def check(name, out, ref, dtype):
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten output?)"
    diff = (out.float() - ref.float()).abs()
    rel = (diff.norm() / ref.float().norm().clamp_min(1e-30)).item()
    print(f"{name}: rel {rel:.2e} max {diff.max().item():.2e} mean {diff.mean().item():.2e}")
    assert rel <= TOL[dtype], f"{name}: relative error {rel:.2e} > {TOL[dtype]:.0e}"


def dt_inputs(shape, nparams, dtype):
    """dt raw values and a bias so that softplus(dt + bias) lies around 0.001 .. 0.1."""
    target = torch.empty(nparams, device="cuda").uniform_(math.log(1e-3), math.log(1e-1)).exp()
    bias = target + torch.log(-torch.expm1(-target))  # softplus^-1
    return rnd(*shape, dtype=dtype, scale=0.1), bias


def mamba2_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, dtype):
    x, z = rnd(batch, seqlen, nheads, headdim, dtype=dtype), rnd(batch, seqlen, nheads, headdim, dtype=dtype)
    dt, bias = dt_inputs((batch, seqlen, nheads), nheads, dtype)
    B, C = rnd(batch, seqlen, ngroups, dstate, dtype=dtype), rnd(batch, seqlen, ngroups, dstate, dtype=dtype)
    A = -torch.empty(nheads, device="cuda").uniform_(1, 16)
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=rnd(nheads), z=z, dt_bias=bias,
                initial_state=rnd(batch, nheads, headdim, dstate, scale=0.5), dt_limit=(0.0, 0.08))
