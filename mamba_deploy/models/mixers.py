"""Mamba1 (incl. Falcon-Mamba) and Mamba2 mixers, written on the registry ops.

Each mixer has `forward(hidden, conv_state, ssm_state)` over a sequence (prefill ops) and
`step(hidden, conv_state, ssm_state)` for one token (decode ops); both return
(out, new_conv_state, new_ssm_state) and leave their inputs untouched.
Parameter names follow mamba-ssm, so checkpoints load by name.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..ops import (causal_conv1d_ref, causal_conv1d_update_ref, chunk_scan_ref, gated_rms_norm_ref, rms_norm_ref,
                   selective_scan_ref, selective_state_update_ref)


def _conv_weight(conv: nn.Conv1d) -> torch.Tensor:
    return conv.weight.squeeze(1)  # (channels, 1, width) -> (channels, width)


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        d, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, 2 * d, bias=cfg.bias, **kw)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, bias=cfg.conv_bias, **kw)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False, **kw)
        self.dt_proj = nn.Linear(r, d, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d, n, dtype=torch.float32, device=device))
        self.D = nn.Parameter(torch.empty(d, dtype=torch.float32, device=device))
        self.out_proj = nn.Linear(d, cfg.d_model, bias=cfg.bias, **kw)

    def _ssm_inputs(self, x: torch.Tensor):
        """x: (..., d_inner) -> dt (..., d_inner) without bias, B, C (..., d_state); Falcon-Mamba
        (mixer_rms_eps set) normalises dt (before dt_proj), B and C."""
        dt, B, C = torch.split(self.x_proj(x), [self.cfg.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        if self.cfg.mixer_rms_eps is not None:
            dt, B, C = (rms_norm_ref(t, self.cfg.mixer_rms_eps) for t in (dt, B, C))
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, hidden, conv_state, ssm_state):
        """hidden: (batch, seqlen, d_model)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x, conv_state = causal_conv1d_ref(x.transpose(1, 2), _conv_weight(self.conv1d), self.conv1d.bias,
                                          conv_state, "silu")  # (batch, d_inner, seqlen)
        dt, B, C = self._ssm_inputs(x.transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        y, ssm_state = selective_scan_ref(x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D,
                                          z.transpose(1, 2), self.dt_proj.bias, ssm_state, True)
        return self.out_proj(y.transpose(1, 2)), conv_state, ssm_state

    def step(self, hidden, conv_state, ssm_state):
        """hidden: (batch, 1, d_model)."""
        x, z = self.in_proj(hidden[:, 0]).chunk(2, dim=-1)
        x, conv_state = causal_conv1d_update_ref(x, _conv_weight(self.conv1d), self.conv1d.bias, conv_state, "silu")
        dt, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = selective_state_update_ref(ssm_state, x, dt, A, B, C, self.D, z, self.dt_proj.bias, True)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.in_proj_dim, bias=cfg.bias, **kw)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads, dtype=torch.float32, device=device))
        self.A_log = nn.Parameter(torch.empty(cfg.nheads, dtype=torch.float32, device=device))
        self.D = nn.Parameter(torch.empty(cfg.nheads, dtype=torch.float32, device=device))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.empty(cfg.d_inner, **kw))
        self.out_proj = nn.Linear(cfg.mixer_out_dim, cfg.d_model, bias=cfg.bias, **kw)

    def _split_in_proj(self, hidden):
        """-> z, xBC, dt and the gated MLP's part of in_proj (mamba2_mlp_dim: silu(z0) * x0; None without)."""
        c = self.cfg
        m = c.mamba2_mlp_dim
        z0, x0, z, xbc, dt = torch.split(self.in_proj(hidden), [m, m, c.d_inner, c.conv_dim, c.nheads], dim=-1)
        return z, xbc, dt, F.silu(z0) * x0 if m else None

    def _split_xbc(self, xbc):
        c = self.cfg
        gn = c.ngroups * c.d_state
        x, B, C = torch.split(xbc, [c.d_inner, gn, gn], dim=-1)
        shape = xbc.shape[:-1]
        return (x.reshape(*shape, c.nheads, c.headdim), B.reshape(*shape, c.ngroups, c.d_state),
                C.reshape(*shape, c.ngroups, c.d_state))

    def _gated_norm_out(self, y, z, mlp):
        c = self.cfg
        y = gated_rms_norm_ref(y.flatten(-2), z, self.norm.weight, c.norm_eps, c.d_inner // c.ngroups)
        return self.out_proj(y if mlp is None else torch.cat([mlp, y], dim=-1))

    def forward(self, hidden, conv_state, ssm_state):
        """hidden: (batch, seqlen, d_model)."""
        c = self.cfg
        z, xbc, dt, mlp = self._split_in_proj(hidden)
        xbc, conv_state = causal_conv1d_ref(xbc.transpose(1, 2), _conv_weight(self.conv1d), self.conv1d.bias,
                                            conv_state, "silu")
        x, B, C = self._split_xbc(xbc.transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        y, ssm_state = chunk_scan_ref(x, dt, A, B, C, c.chunk_size, self.D, None, self.dt_bias, ssm_state, True,
                                      c.dt_limit)
        return self._gated_norm_out(y, z, mlp), conv_state, ssm_state

    def step(self, hidden, conv_state, ssm_state):
        """hidden: (batch, 1, d_model)."""
        z, xbc, dt, mlp = self._split_in_proj(hidden[:, 0])
        xbc, conv_state = causal_conv1d_update_ref(xbc, _conv_weight(self.conv1d), self.conv1d.bias, conv_state,
                                                   "silu")
        x, B, C = self._split_xbc(xbc)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = selective_state_update_ref(ssm_state, x, dt, A, B, C, self.D, None, self.dt_bias, True,
                                                  self.cfg.dt_limit)
        return self._gated_norm_out(y, z, mlp).unsqueeze(1), conv_state, ssm_state
