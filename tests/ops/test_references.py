"""Each scan/conv reference equals its naive token-by-token version (odd sizes, both state dtypes)."""
import math

import pytest
import torch

from mamba_deploy.ops import (causal_conv1d_ref, causal_conv1d_sequential, chunk_scan_ref, chunk_scan_sequential,
                              gated_rms_norm_ref, selective_scan_ref, selective_scan_sequential)
from numerics import rel_err


def report(name, out, ref):
    err = rel_err(out, ref)
    print(f"{name}: max abs {(out.double() - ref.double()).abs().max().item():.2e}, rel {err:.2e}")
    return err


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch,dim,seqlen,width", [(1, 5, 1, 4), (2, 7, 2, 3), (3, 16, 129, 4), (1, 3, 151, 2)])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d(batch, dim, seqlen, width, with_state):
    g = gen(seqlen)
    x, w, b = torch.randn(batch, dim, seqlen, generator=g), torch.randn(dim, width, generator=g), torch.randn(dim, generator=g)
    state = torch.randn(batch, dim, width - 1, generator=g) if with_state else None
    y, s = causal_conv1d_ref(x, w, b, state)
    y_seq, s_seq = causal_conv1d_sequential(x, w, b, state)
    assert report("conv y", y, y_seq) <= 1e-6 and torch.equal(s, s_seq)
    assert s.shape == (batch, dim, width - 1)


def _mamba1_inputs(batch, dim, seqlen, dstate, seed):
    g = gen(seed)
    u = torch.randn(batch, dim, seqlen, generator=g)
    delta = torch.randn(batch, dim, seqlen, generator=g) - 2
    A = -torch.rand(dim, dstate, generator=g) * 4 - 0.1
    B, C = torch.randn(batch, dstate, seqlen, generator=g), torch.randn(batch, dstate, seqlen, generator=g)
    D, z, bias = torch.randn(dim, generator=g), torch.randn(batch, dim, seqlen, generator=g), torch.randn(dim, generator=g)
    h0 = torch.randn(batch, dim, dstate, generator=g)
    return u, delta, A, B, C, D, z, bias, h0


@pytest.mark.parametrize("batch,dim,seqlen,dstate", [(1, 4, 1, 16), (2, 7, 2, 4), (3, 5, 129, 16), (1, 3, 300, 8)])
def test_selective_scan(batch, dim, seqlen, dstate):
    u, delta, A, B, C, D, z, bias, h0 = _mamba1_inputs(batch, dim, seqlen, dstate, seqlen)
    y, h = selective_scan_ref(u, delta, A, B, C, D, z, bias, h0)
    y_seq, h_seq = selective_scan_sequential(u, delta, A, B, C, D, z, bias, h0)
    assert report("scan y", y, y_seq) <= 1e-5 and report("scan state", h, h_seq) <= 1e-5


def test_selective_scan_state_carries():
    u, delta, A, B, C, D, z, bias, h0 = _mamba1_inputs(2, 6, 40, 8, 0)
    y, h = selective_scan_ref(u, delta, A, B, C, D, z, bias, h0)
    y1, h1 = selective_scan_ref(u[..., :17], delta[..., :17], A, B[..., :17], C[..., :17], D, z[..., :17], bias, h0)
    y2, h2 = selective_scan_ref(u[..., 17:], delta[..., 17:], A, B[..., 17:], C[..., 17:], D, z[..., 17:], bias, h1)
    assert rel_err(torch.cat([y1, y2], -1), y) <= 1e-6 and rel_err(h2, h) <= 1e-6


@pytest.mark.parametrize("batch,seqlen,nheads,headdim,ngroups,dstate,chunk",
                         [(1, 1, 2, 4, 1, 8, 4), (2, 2, 4, 8, 2, 16, 8), (2, 129, 4, 8, 2, 16, 16),
                          (1, 151, 6, 4, 3, 8, 32), (1, 64, 2, 4, 1, 4, 64)])
@pytest.mark.parametrize("dt_limit", [(0.0, math.inf), (0.01, 0.2)])
def test_chunk_scan(batch, seqlen, nheads, headdim, ngroups, dstate, chunk, dt_limit):
    g = gen(seqlen + nheads)
    x = torch.randn(batch, seqlen, nheads, headdim, generator=g)
    dt = torch.randn(batch, seqlen, nheads, generator=g) - 2
    A = -torch.rand(nheads, generator=g) * 8 - 0.5
    B = torch.randn(batch, seqlen, ngroups, dstate, generator=g)
    C = torch.randn(batch, seqlen, ngroups, dstate, generator=g)
    D, dt_bias = torch.randn(nheads, generator=g), torch.randn(nheads, generator=g)
    z = torch.randn(batch, seqlen, nheads, headdim, generator=g)
    h0 = torch.randn(batch, nheads, headdim, dstate, generator=g)
    args = (x, dt, A, B, C, chunk, D, z, dt_bias, h0, True, dt_limit)
    y, h = chunk_scan_ref(*args)
    y_seq, h_seq = chunk_scan_sequential(*args)
    assert report("ssd y", y, y_seq) <= 1e-5 and report("ssd state", h, h_seq) <= 1e-5


def test_gated_rms_norm_groups_are_independent():
    g = gen(0)
    x, z, w = torch.randn(3, 12, generator=g), torch.randn(3, 12, generator=g), torch.randn(12, generator=g)
    full = gated_rms_norm_ref(x, z, w, 1e-5, group_size=4)
    parts = [gated_rms_norm_ref(x[:, i:i + 4], z[:, i:i + 4], w[i:i + 4], 1e-5) for i in range(0, 12, 4)]
    assert rel_err(full, torch.cat(parts, -1)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_dtype_and_float32_state(dtype):
    u, delta, A, B, C, D, z, bias, h0 = _mamba1_inputs(1, 4, 9, 4, 1)
    y, h = selective_scan_ref(u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), bias, h0)
    assert y.dtype == dtype and h.dtype == torch.float32
