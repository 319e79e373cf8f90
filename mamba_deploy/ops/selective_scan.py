"""Mamba1 selective scan over a sequence from an initial state (prefill).

u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (batch, dstate, seqlen);
D, delta_bias: (dim,); ssm_state: (batch, dim, dstate) or None (zeros).
h_t = exp(delta_t*A)*h_{t-1} + delta_t*B_t*u_t; y_t = C_t.h_t + D*u_t; y *= silu(z),
with delta = softplus(delta + delta_bias). Math in float32; y in u.dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .state_update import selective_state_update_ref

_TIME_BLOCK = 256  # bounds the (batch, dim, block, dstate) temporaries


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    ssm_state: Optional[torch.Tensor] = None,
    delta_softplus: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y: (batch, dim, seqlen) in u.dtype, final state like ssm_state (float32 if None))."""
    batch, dim, seqlen = u.shape
    state_dtype = ssm_state.dtype if ssm_state is not None else torch.float32
    # A copy: autograd keeps h for backward, and callers may overwrite their state in place afterwards.
    h = (ssm_state.to(torch.float32, copy=True) if ssm_state is not None
         else u.new_zeros(batch, dim, A.shape[-1], dtype=torch.float32))
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    uf, Af = u.float(), A.float()
    ys = []
    for start in range(0, seqlen, _TIME_BLOCK):
        sl = slice(start, min(start + _TIME_BLOCK, seqlen))
        dA = torch.exp(delta[:, :, sl, None] * Af[:, None, :])  # (batch, dim, block, dstate)
        dBu = (delta[:, :, sl] * uf[:, :, sl]).unsqueeze(-1) * B[:, None, :, sl].float().transpose(-1, -2)
        Cb = C[:, :, sl].float()
        for t in range(dA.shape[2]):
            h = dA[:, :, t] * h + dBu[:, :, t]
            ys.append(torch.einsum("bdn,bn->bd", h, Cb[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), h.to(state_dtype)


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, ssm_state=None,
                              delta_softplus=True):
    """`selective_scan_ref` as a chain of `selective_state_update_ref` steps (for testing)."""
    state = ssm_state if ssm_state is not None else u.new_zeros(u.shape[0], u.shape[1], A.shape[-1],
                                                                 dtype=torch.float32)
    ys = []
    for t in range(u.shape[-1]):
        y, state = selective_state_update_ref(
            state, u[:, :, t], delta[:, :, t], A, B[:, :, t], C[:, :, t], D,
            None if z is None else z[:, :, t], delta_bias, delta_softplus)
        ys.append(y)
    return torch.stack(ys, dim=-1), state
