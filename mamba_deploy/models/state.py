"""Explicit recurrent state of a Mamba LM: one conv state and one SSM state per Mamba layer, and for a hybrid's
attention layers a key and a value cache of fixed maximum length plus each sequence's length."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from ..config import ModelConfig

# kind -> the graph I/O name after the past_ / present_ prefix (docs/architecture.md "Graph I/O")
_IO_NAMES = {"conv": "conv_state.{i}", "ssm": "ssm_state.{i}", "attn_conv": "conv_state.{i}", "key": "key.{i}",
             "value": "value.{i}", "length": "length"}
_LAYER_ALIGN = 256  # bytes: where each layer's tensor of a layer_block starts (kernels load 16-byte vectors)


def state_layout(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(kind, layer, index into the state's list of that kind) of every state tensor, in graph I/O order: per
    layer conv, ssm (Mamba) or [attn_conv,] key, value (attention) (nothing for an MLP layer), then one `length`
    (-1, 0) when the model has attention."""
    out, mamba, attn = [], 0, 0
    for layer in range(cfg.n_layer):
        if layer in cfg.mlp_layer_idx:
            continue  # NemotronH's MLP layers hold no state
        if layer in cfg.attn_layer_idx:
            out += ([("attn_conv", layer, attn)] if cfg.attn_d_conv else []) + [("key", layer, attn),
                                                                               ("value", layer, attn)]
            attn += 1
        else:
            out += [("conv", layer, mamba), ("ssm", layer, mamba)]
            mamba += 1
    return out + ([("length", -1, 0)] if cfg.attn_layer_idx else [])


def layer_block(count: int, shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device | str) -> list[torch.Tensor]:
    """`count` zeroed tensors of `shape`, views of ONE allocation at a fixed spacing, each starting 256-byte
    aligned: the same rows of every layer are then one strided view (layers_view), which StatePool.reset_many
    zeroes instead of one slice per layer (a foreach zero over 96 slices took 1.9 ms of host time on the H200's
    host for 64 slots of mamba-1.4b)."""
    numel = math.prod(shape)
    itemsize = dtype.itemsize
    spacing = -(-numel * itemsize // _LAYER_ALIGN) * _LAYER_ALIGN // itemsize
    flat = torch.zeros(count * spacing, dtype=dtype, device=device)
    # detached: each is its own autograd leaf, as a separate allocation was (a differentiable forward writes
    # the KV caches in place; through a view, autograd would make the shared base require grad)
    return [flat[i * spacing:i * spacing + numel].view(shape).detach() for i in range(count)]


def layers_view(tensors: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """(len(tensors), *shape) view of `tensors` when they are equal contiguous views of one storage at a fixed
    spacing (as layer_block makes them), else None."""
    if not tensors:
        return None
    first = tensors[0]
    spacing = tensors[1].storage_offset() - first.storage_offset() if len(tensors) > 1 else first.numel()
    storage = first.untyped_storage().data_ptr()
    if spacing < first.numel() or not all(
            t.is_contiguous() and t.shape == first.shape and t.dtype == first.dtype and t.device == first.device
            and t.untyped_storage().data_ptr() == storage and t.storage_offset() == first.storage_offset() + i * spacing
            for i, t in enumerate(tensors)):
        return None
    return first.as_strided((len(tensors), *first.shape), (spacing, *first.stride()), first.storage_offset())


def io_name(kind: str, layer: int) -> str:
    """The graph I/O name of a state tensor without its past_ / present_ prefix (e.g. `key.3`, `length`)."""
    return _IO_NAMES[kind].format(i=layer)


@dataclasses.dataclass
class InferenceState:
    """conv[j], ssm[j] for the j-th Mamba layer (ModelConfig.mamba_layers[j]): (batch, conv_dim, d_conv - 1) in
    the model dtype; (batch, d_inner, d_state) for Mamba1, (batch, nheads, headdim, d_state) for Mamba2.
    key[j], value[j] for the j-th attention layer (attn_layer_idx[j]): (batch, num_heads_kv, max_seq_len, head_dim)
    in the model dtype, rotary already applied to the keys; attn_conv[j]: (batch, attn_qkv_dim, attn_d_conv - 1) in
    the model dtype when MHA has a conv (attn_d_conv > 0); length: (batch,) int64 tokens seen (hybrids only)."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]
    key: list[torch.Tensor] = dataclasses.field(default_factory=list)
    value: list[torch.Tensor] = dataclasses.field(default_factory=list)
    length: Optional[torch.Tensor] = None
    attn_conv: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch_size: int, dtype: torch.dtype, state_dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", max_seq_len: Optional[int] = None) -> "InferenceState":
        """max_seq_len: the KV cache length of a hybrid (required then, ignored otherwise)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_mamba, n_attn = len(cfg.mamba_layers), len(cfg.attn_layer_idx)
        state = cls(conv=layer_block(n_mamba, cfg.conv_state_shape(batch_size), dtype, device),
                    ssm=layer_block(n_mamba, cfg.ssm_state_shape(batch_size), state_dtype, device))
        if n_attn:
            if max_seq_len is None or max_seq_len < 1:
                raise ValueError(f"a hybrid model's state needs max_seq_len >= 1, got {max_seq_len}")
            shape = cfg.kv_cache_shape(batch_size, max_seq_len)
            state.key = layer_block(n_attn, shape, dtype, device)
            state.value = layer_block(n_attn, shape, dtype, device)
            state.length = torch.zeros(batch_size, dtype=torch.int64, device=device)
            if cfg.attn_d_conv:
                state.attn_conv = layer_block(n_attn, cfg.attn_conv_state_shape(batch_size), dtype, device)
        return state

    @property
    def batch_size(self) -> int:
        return self.conv[0].shape[0]

    @property
    def max_seq_len(self) -> Optional[int]:
        """The KV caches' length (None without attention layers)."""
        return self.key[0].shape[2] if self.key else None

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor: conv, ssm, key, value, attn_conv, then length."""
        return self.conv + self.ssm + self.key + self.value + self.attn_conv + \
            ([self.length] if self.length is not None else [])

    def with_tensors(self, tensors: list[torch.Tensor]) -> "InferenceState":
        """A state of the same structure holding `tensors` (in the order of tensors())."""
        sizes = [len(self.conv), len(self.ssm), len(self.key), len(self.value), len(self.attn_conv)]
        parts, start = [], 0
        for size in sizes:
            parts.append(list(tensors[start:start + size]))
            start += size
        return InferenceState(*parts[:4], length=tensors[start] if self.length is not None else None,
                              attn_conv=parts[4])

    def named(self, cfg: ModelConfig) -> list[tuple[str, int, torch.Tensor]]:
        """(kind, layer, tensor) in graph I/O order (state_layout)."""
        lists = {"conv": self.conv, "ssm": self.ssm, "key": self.key, "value": self.value, "attn_conv": self.attn_conv,
                 "length": [self.length]}
        return [(kind, layer, lists[kind][j]) for kind, layer, j in state_layout(cfg)]

    def zero_(self) -> "InferenceState":
        for t in self.tensors():
            t.zero_()
        return self

    def clone(self) -> "InferenceState":
        return self.with_tensors([t.clone() for t in self.tensors()])

    def select(self, rows: slice | list[int]) -> "InferenceState":
        """Rows of the batch as a new (copied) state."""
        return self.with_tensors([t[rows].clone() for t in self.tensors()])
