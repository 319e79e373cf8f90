"""References of a hybrid's attention layer (mamba-ssm's MHA): rotary embedding and causal attention over a
fixed-length KV cache. Standard ONNX ops in the graphs (export/graphs.py), not registry ops; math in float32."""
from __future__ import annotations

import torch


def rotary_inv_freq(dim: int, base: float) -> torch.Tensor:
    """(dim / 2,) float32 frequencies, computed as flash-attn's RotaryEmbedding does."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def rotary_ref(x: torch.Tensor, positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """Non-interleaved (GPT-NeoX) rotary embedding on the first `dim` channels of each head.

    x: (batch, seqlen, heads, head_dim); positions: (batch, seqlen) int64 -> same shape and dtype as x."""
    if dim == 0:
        return x
    angles = positions.to(torch.float32)[..., None] * rotary_inv_freq(dim, base).to(x.device)  # (b, l, dim/2)
    cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]
    x32 = x.float()
    x1, x2 = x32[..., :dim // 2], x32[..., dim // 2:dim]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x32[..., dim:]], dim=-1).to(x.dtype)


def attention_ref(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Causal grouped-query attention of new queries over a KV cache that already holds them.

    q: (batch, seqlen, heads, head_dim); key, value: (batch, heads_kv, max_seq_len, head_dim) with heads a multiple
    of heads_kv (query head h reads kv head h // (heads / heads_kv)); positions: (batch, seqlen) int64, each
    query's position; query t of row b sees cache entries 0 .. positions[b, t]. -> (batch, seqlen, heads, head_dim)
    in q's dtype."""
    batch, seqlen, heads, head_dim = q.shape
    heads_kv, max_len = key.shape[1], key.shape[2]
    qf = q.float().transpose(1, 2).reshape(batch, heads_kv, heads // heads_kv, seqlen, head_dim)
    scores = (qf @ key.float()[:, :, None].transpose(-1, -2)) * scale  # (b, hkv, g, l, max_len)
    seen = torch.arange(max_len, device=q.device) <= positions[:, :, None]  # (b, l, max_len)
    scores = scores.masked_fill(~seen[:, None, None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ value.float()[:, :, None]  # (b, hkv, g, l, head_dim)
    return out.reshape(batch, heads, seqlen, head_dim).transpose(1, 2).to(q.dtype)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """What mamba-ssm's MHA computes over a whole sequence (no cache): repeat_interleave the kv heads, then
    causal scaled_dot_product_attention; the plain check of attention_ref. q: (b, l, h, d); k, v: (b, l, hkv, d)."""
    repeat = q.shape[2] // k.shape[2]
    k, v = (torch.repeat_interleave(t, repeat, dim=2).transpose(1, 2).float() for t in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2).float(), k, v, is_causal=True, scale=scale)
    return out.transpose(1, 2).to(q.dtype)
