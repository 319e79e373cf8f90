"""A hybrid's attention mixer: mamba-ssm's MHA (causal multi-head / grouped-query attention, optional rotary
embedding and in-projection gated MLP) over a KV cache of fixed maximum length per sequence."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..ops import attention_ref, causal_conv1d_ref, rotary_ref


class AttentionMixer(nn.Module):
    """Parameter names follow mamba-ssm's MHA (`in_proj`, `out_proj`), or with attn_separate_proj NemotronH's
    attention (`q_proj`, `k_proj`, `v_proj`, `o_proj`; no rotary, no MLP part)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.cfg = cfg
        q_dim, kv_dim = cfg.attn_num_heads * cfg.attn_head_dim, cfg.attn_num_heads_kv * cfg.attn_head_dim
        if cfg.attn_separate_proj:
            for name, width in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
                setattr(self, name, nn.Linear(cfg.d_model, width, bias=cfg.attn_qkv_bias, **kw))
            self.o_proj = nn.Linear(q_dim, cfg.d_model, bias=cfg.attn_out_bias, **kw)
            return
        self.in_proj = nn.Linear(cfg.d_model, cfg.attn_qkv_dim + cfg.attn_mlp_dim, bias=cfg.attn_qkv_bias, **kw)
        if cfg.attn_d_conv:
            self.conv1d = nn.Conv1d(cfg.attn_qkv_dim, cfg.attn_qkv_dim, cfg.attn_d_conv, groups=cfg.attn_qkv_dim, **kw)
        self.out_proj = nn.Linear(q_dim + cfg.attn_mlp_dim // 2, cfg.d_model, bias=cfg.attn_out_bias, **kw)

    def _project(self, hidden: torch.Tensor, conv_state: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """hidden (batch, seqlen, d_model) -> q, k, v, mlp (the last empty without MHA's mlp_dim); with attn_d_conv
        q, k, v go through the causal conv first, continuing conv_state, which is updated IN PLACE."""
        c = self.cfg
        if c.attn_separate_proj:
            return [self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden), hidden[..., :0]]
        q_dim, kv_dim = c.attn_num_heads * c.attn_head_dim, c.attn_num_heads_kv * c.attn_head_dim
        projected = self.in_proj(hidden)
        if c.attn_d_conv:
            qkv, mlp = torch.split(projected, [c.attn_qkv_dim, c.attn_mlp_dim], dim=-1)
            qkv, new_state = causal_conv1d_ref(qkv.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                               conv_state, None)
            conv_state.copy_(new_state)
            projected = torch.cat([qkv.transpose(1, 2), mlp], dim=-1)
        return list(torch.split(projected, [q_dim, kv_dim, kv_dim, c.attn_mlp_dim], dim=-1))

    def forward(self, hidden: torch.Tensor, key: torch.Tensor, value: torch.Tensor, length: torch.Tensor,
                conv_state: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hidden: (batch, seqlen, d_model), the tokens at positions length[b] .. length[b] + seqlen - 1 of each row;
        key, value: (batch, heads_kv, max_seq_len, head_dim) caches, written IN PLACE at those positions (the
        caller checks that they fit); length: (batch,) int64, not changed; conv_state: (batch, qkv_dim, attn_d_conv - 1)
        with attn_d_conv, written IN PLACE. -> (batch, seqlen, d_model)."""
        c = self.cfg
        batch, seqlen, _ = hidden.shape
        q_dim = c.attn_num_heads * c.attn_head_dim
        q, k, v, mlp = self._project(hidden, conv_state)
        q = q.reshape(batch, seqlen, c.attn_num_heads, c.attn_head_dim)
        k, v = (t.reshape(batch, seqlen, c.attn_num_heads_kv, c.attn_head_dim) for t in (k, v))
        positions = length[:, None] + torch.arange(seqlen, device=length.device)  # (batch, seqlen)
        q, k = (rotary_ref(t, positions, c.attn_rotary_dim, c.attn_rotary_base) for t in (q, k))
        index = positions[:, None, :, None].expand(batch, c.attn_num_heads_kv, seqlen, c.attn_head_dim)
        key.scatter_(2, index, k.transpose(1, 2).to(key.dtype))
        value.scatter_(2, index, v.transpose(1, 2).to(value.dtype))
        context = attention_ref(q, key, value, positions, c.softmax_scale).reshape(batch, seqlen, q_dim)
        if c.attn_mlp_dim:
            up, gate = mlp.chunk(2, dim=-1)
            context = torch.cat([context, up * F.silu(gate)], dim=-1)
        return (self.o_proj if c.attn_separate_proj else self.out_proj)(context)
