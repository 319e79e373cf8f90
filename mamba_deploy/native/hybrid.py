"""The native engine's layers besides Mamba, for hybrids: attention (mamba-ssm's MHA: grouped-query heads, rotary,
an optional causal conv on q k v and an in-projection gated MLP; NemotronH's attention: separate q/k/v/o, no
rotary) over the per-slot KV caches of the engine's state pool, and NemotronH's relu^2 MLP blocks.

Decode runs on the engine's static buffers and is captured in its graphs: the projections through the engine's
`proj` (GEMV or cuBLAS, with the q k v conv as the GEMV's epilogue), then attention_decode (attention.cu), which
rotates q and k at each slot's position, writes k and v into the slot's cache and attends over it. The slots'
lengths advance once per step, after the last layer (advance_length). Prefill is eager: the new keys and values
are scattered into the cache and the queries attend over it with scaled_dot_product_attention and a causal mask
of each row's positions, built once per chunk for all its attention layers (chunk_positions).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import MambaDeployError
from ..models.state import InferenceState
from ..ops import cuda as K, rotary_ref
from . import gemv as G
from .weights import Layer

Proj = Callable[..., None]  # NativeEngine._proj(x, w, bias, out, conv=None)


def check_supported(cfg: ModelConfig) -> None:
    """MambaDeployError naming the field when the decode attention kernel cannot run this model's attention."""
    if not cfg.attn_layer_idx:
        return
    group = cfg.attn_num_heads // cfg.attn_num_heads_kv
    if cfg.attn_head_dim > 256 or group > 8 or group * cfg.attn_head_dim > 1024:
        raise MambaDeployError(f"attention of {cfg.attn_num_heads} heads over {cfg.attn_num_heads_kv} kv heads of "
                               f"{cfg.attn_head_dim} is not supported by the native backend (head_dim <= 256, "
                               "heads / kv heads <= 8, their product with head_dim <= 1024); use onnxruntime or torch")


class HybridBuffers:
    """Static decode buffers of the attention and MLP layers, `max_batch` rows each."""

    def __init__(self, cfg: ModelConfig, max_batch: int, dtype: torch.dtype, device: torch.device):
        f = dict(dtype=dtype, device=device)
        q_dim = cfg.attn_num_heads * cfg.attn_head_dim
        self.qkv = torch.zeros(max_batch, cfg.attn_qkv_dim + cfg.attn_mlp_dim, **f) if cfg.attn_layer_idx else None
        self.context = torch.zeros(max_batch, q_dim + cfg.attn_mlp_dim // 2, **f) if cfg.attn_layer_idx else None
        self.up = torch.zeros(max_batch, cfg.mlp_width, **f) if cfg.mlp_layer_idx else None
        self.one = torch.ones(max_batch, dtype=torch.int64, device=device)


def attention_step(cfg: ModelConfig, bufs: HybridBuffers, proj: Proj, b: int, L: Layer, normed: torch.Tensor,
                   pool: InferenceState, rows: torch.Tensor, out: torch.Tensor) -> None:
    """Decode rows [:b]: normed (b, d_model) -> out (b, d_model); row r uses slot rows[r] of `pool` (key, value,
    attn_conv written in place; length read)."""
    c = cfg
    q_dim, kv_dim = c.attn_num_heads * c.attn_head_dim, c.attn_num_heads_kv * c.attn_head_dim
    qkv, context = bufs.qkv[:b], bufs.context[:b]
    conv = None if not c.attn_d_conv else dict(lo=0, weight=L.conv_w, bias=L.conv_b, state=pool.attn_conv[L.index],
                                                state_rows=rows, silu=False)
    proj(normed, L.in_w, L.in_b, qkv, conv)
    G.attention_decode(qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:c.attn_qkv_dim],
                       pool.key[L.index], pool.value[L.index], pool.length, L.inv_freq, c.attn_rotary_dim,
                       c.softmax_scale, out=context[:, :q_dim], state_rows=rows)
    if c.attn_mlp_dim:
        half = c.attn_mlp_dim // 2
        up, gate = qkv[:, c.attn_qkv_dim:c.attn_qkv_dim + half], qkv[:, c.attn_qkv_dim + half:]
        torch.mul(up, F.silu(gate), out=context[:, q_dim:])
    proj(context, L.out_w, L.out_b, out)


def mlp_step(bufs: HybridBuffers, proj: Proj, b: int, L: Layer, normed: torch.Tensor, out: torch.Tensor) -> None:
    """NemotronH's MLP block for decode rows [:b]: out <- down(relu(up(normed))^2)."""
    up = bufs.up[:b]
    proj(normed, L.in_w, L.in_b, up)
    torch.relu_(up).square_()
    proj(up, L.out_w, L.out_b, out)


def advance_length(pool: InferenceState, bufs: HybridBuffers, rows: torch.Tensor) -> None:
    """length[rows] += 1 after a decode step of rows (distinct slots)."""
    pool.length.index_add_(0, rows, bufs.one[:rows.shape[0]])


def chunk_positions(state: InferenceState, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What every attention layer of one prefill chunk of n tokens shares: positions (b, n), length[r] + t, and
    the causal mask (b, 1, n, end) of the cache entries each token sees, end being the longest row's visible
    length (one host sync per chunk)."""
    positions = state.length[:, None] + torch.arange(n, device=state.length.device)
    end = int(positions.max()) + 1
    return positions, (torch.arange(end, device=positions.device) <= positions[:, :, None])[:, None]


def attention_prefill(cfg: ModelConfig, L: Layer, normed: torch.Tensor, state: InferenceState,
                      positions: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """normed (b, n, d_model) at `positions` (b, n) = length[r] .. length[r] + n - 1 of each row, `seen` their mask
    (chunk_positions) -> (b, n, d_model); the row's key, value (and attn_conv) are written in place, length is not
    advanced."""
    c = cfg
    b, n, _ = normed.shape
    H, Hkv, D = c.attn_num_heads, c.attn_num_heads_kv, c.attn_head_dim
    projected = F.linear(normed, L.in_w, L.in_b)  # (b, n, qkv + mlp)
    qkv = projected[..., :c.attn_qkv_dim]
    if c.attn_d_conv:
        conv_state = state.attn_conv[L.index]
        qkv = K.causal_conv1d(qkv.transpose(1, 2), L.conv_w, L.conv_b, conv_state, None,
                              state_out=conv_state)[0].transpose(1, 2)
    q, k, v = torch.split(qkv, [H * D, Hkv * D, Hkv * D], dim=-1)
    q = rotary_ref(q.reshape(b, n, H, D), positions, c.attn_rotary_dim, c.attn_rotary_base)
    k = rotary_ref(k.reshape(b, n, Hkv, D), positions, c.attn_rotary_dim, c.attn_rotary_base)
    key, value = state.key[L.index], state.value[L.index]
    index = positions[:, None, :, None].expand(b, Hkv, n, D)
    key.scatter_(2, index, k.transpose(1, 2))
    value.scatter_(2, index, v.reshape(b, n, Hkv, D).transpose(1, 2))
    context = _cached_attention(q, key, value, seen, c.softmax_scale).reshape(b, n, H * D)
    if c.attn_mlp_dim:
        up, gate = projected[..., c.attn_qkv_dim:].chunk(2, dim=-1)
        context = torch.cat([context, up * F.silu(gate)], dim=-1)
    return F.linear(context, L.out_w, L.out_b)


def _cached_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seen: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """attention_ref through scaled_dot_product_attention over the cache entries any row can see.
    q (b, n, H, D); key, value (b, Hkv, max_len, D); seen (b, 1, n, end) -> (b, n, H, D)."""
    b, n, H, D = q.shape
    Hkv, end = key.shape[1], seen.shape[-1]
    keys, values = (t[:, :, None, :end].expand(b, Hkv, H // Hkv, end, D).reshape(b, H, end, D) for t in (key, value))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=seen, scale=scale)
    return out.transpose(1, 2)


def mlp_prefill(L: Layer, normed: torch.Tensor) -> torch.Tensor:
    """NemotronH's MLP block over a sequence: (b, n, d_model) -> (b, n, d_model)."""
    return F.linear(torch.square(F.relu(F.linear(normed, L.in_w, L.in_b))), L.out_w, L.out_b)


def kv_bytes(pool: InferenceState, rows: int, seen: int) -> int:
    """Bytes of K and V a decode step of `rows` rows reads when each has `seen` cached positions."""
    if not pool.key:
        return 0
    per_position = pool.key[0].shape[1] * pool.key[0].shape[3] * pool.key[0].element_size()
    return 2 * len(pool.key) * rows * seen * per_position


def optional_max_seq_len(cfg: ModelConfig, max_seq_len: Optional[int]) -> Optional[int]:
    """The KV cache length of the engine's pool: max_seq_len (default models.lm.DEFAULT_MAX_SEQ_LEN) for a
    model with attention layers, None otherwise."""
    from ..models.lm import DEFAULT_MAX_SEQ_LEN

    if not cfg.attn_layer_idx:
        return None
    return DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
