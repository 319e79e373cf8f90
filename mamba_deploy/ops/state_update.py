"""One recurrent step of the selective SSM (decode), for Mamba1 and Mamba2.

Mamba1 (per channel, state rank 3):
    state (batch, dim, dstate); x, dt, z (batch, dim); A (dim, dstate);
    B, C (batch, dstate); D, dt_bias (dim,)
Mamba2 (per head, state rank 4, scalar A per head, grouped B/C):
    state (batch, nheads, headdim, dstate); x, z (batch, nheads, headdim); dt (batch, nheads);
    A, D, dt_bias (nheads,); B, C (batch, ngroups, dstate)

dt <- clamp(softplus(dt + dt_bias), *dt_limit); state <- exp(dt*A)*state + dt*B*x;
y <- C.state + D*x; y <- y*silu(z) when z is given. All math in float32.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F



def discretize_dt(dt, dt_bias, dt_softplus, dt_limit):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or math.isfinite(hi):
        dt = dt.clamp(min=lo, max=hi)
    return dt


def expand_groups(t: torch.Tensor, nheads: int, dim: int) -> torch.Tensor:
    """Repeat grouped B/C over the heads of each group: (..., ngroups, ...) -> (..., nheads, ...)."""
    return t.repeat_interleave(nheads // t.shape[dim], dim=dim)


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y like x, new state like state). Does not modify `state`."""
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    s = state.float()
    xf = x.float()
    if state.dim() == 3:  # Mamba1
        dA = torch.exp(dt.unsqueeze(-1) * A.float())  # (batch, dim, dstate)
        dBx = (dt * xf).unsqueeze(-1) * B.float().unsqueeze(1)
        s = s * dA + dBx
        y = (s * C.float().unsqueeze(1)).sum(-1)
        if D is not None:
            y = y + D.float() * xf
    elif state.dim() == 4:  # Mamba2
        nheads = state.shape[1]
        Bh = expand_groups(B.float(), nheads, 1)  # (batch, nheads, dstate)
        Ch = expand_groups(C.float(), nheads, 1)
        dA = torch.exp(dt * A.float())  # (batch, nheads)
        s = s * dA[:, :, None, None] + (dt.unsqueeze(-1) * xf).unsqueeze(-1) * Bh.unsqueeze(2)
        y = torch.einsum("bhpn,bhn->bhp", s, Ch)
        if D is not None:
            y = y + D.float()[:, None] * xf
    else:
        raise ValueError(f"state must have rank 3 (Mamba1) or 4 (Mamba2), got {tuple(state.shape)}")
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype), s.to(state.dtype)
