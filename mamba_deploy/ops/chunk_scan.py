"""Mamba2 SSD scan over a sequence from an initial state (prefill), computed chunk-wise.

x, z: (batch, seqlen, nheads, headdim); dt: (batch, seqlen, nheads); A, D, dt_bias: (nheads,);
B, C: (batch, seqlen, ngroups, dstate); initial_state: (batch, nheads, headdim, dstate) or None.
Same recurrence as the Mamba2 form of `selective_state_update_ref`, token by token.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .state_update import discretize_dt, expand_groups, selective_state_update_ref


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a: (..., T) -> (..., T, T) with out[..., i, j] = sum(a[..., j+1:i+1]) for j <= i, -inf above."""
    T = a.shape[-1]
    cs = torch.cumsum(a, dim=-1)
    seg = cs[..., :, None] - cs[..., None, :]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return seg.masked_fill(~mask, -math.inf)


def chunk_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y like x, final state (batch, nheads, headdim, dstate) like initial_state)."""
    batch, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]
    state_dtype = initial_state.dtype if initial_state is not None else torch.float32
    h0 = (initial_state.float() if initial_state is not None
          else x.new_zeros(batch, nheads, headdim, dstate, dtype=torch.float32))
    dtf = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (batch, seqlen, nheads)
    pad = (-seqlen) % chunk_size
    # Padding after discretisation: dt = 0 means no decay and no input, so the final state is exact.
    xs = F.pad(x.float(), (0, 0, 0, 0, 0, pad))
    dtp = F.pad(dtf, (0, 0, 0, pad))
    Bh = F.pad(expand_groups(B.float(), nheads, 2), (0, 0, 0, 0, 0, pad))
    Ch = F.pad(expand_groups(C.float(), nheads, 2), (0, 0, 0, 0, 0, pad))
    nchunks = (seqlen + pad) // chunk_size

    def chunked(t):  # (batch, L, ...) -> (batch, nchunks, chunk, ...)
        return t.reshape(batch, nchunks, chunk_size, *t.shape[2:])

    X = chunked(xs * dtp.unsqueeze(-1))  # dt-weighted input
    Bc, Cc = chunked(Bh), chunked(Ch)
    a = chunked(dtp * A.float()).permute(0, 3, 1, 2)  # (batch, nheads, nchunks, chunk)
    a_cum = torch.cumsum(a, dim=-1)
    # 1. within each chunk (the quadratic, attention-like form)
    decay_in = torch.exp(_segsum(a))  # (batch, nheads, nchunks, chunk, chunk)
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay_in
    y = torch.einsum("bhcls,bcshp->bclhp", scores, X)
    # 2. state contributed by each chunk, at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (batch, nheads, nchunks, chunk)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, X)
    # 3. carry states across chunks, starting from h0
    states = torch.cat([h0.unsqueeze(1), chunk_states], dim=1)  # (batch, nchunks + 1, ...)
    decay_chunk = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (batch, nheads, n+1, n+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    carried, final = states[:, :-1], states[:, -1]
    # 4. output contributed by the state entering each chunk
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, carried, torch.exp(a_cum))
    y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype), final.to(state_dtype)


def chunk_scan_sequential(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_state=None,
                          dt_softplus=True, dt_limit=(0.0, math.inf)):
    """`chunk_scan_ref` as a chain of `selective_state_update_ref` steps (for testing)."""
    batch, seqlen, nheads, headdim = x.shape
    state = (initial_state if initial_state is not None
             else x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=torch.float32))
    ys = []
    for t in range(seqlen):
        y, state = selective_state_update_ref(
            state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, None if z is None else z[:, t],
            dt_bias, dt_softplus, dt_limit)
        ys.append(y)
    return torch.stack(ys, dim=1), state
