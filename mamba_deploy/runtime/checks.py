"""Argument checks shared by the Engine and the Scheduler: each bad value is a one-line ParameterError."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch

from ..errors import ParameterError, is_integer
from ..models.state import InferenceState
from .backend import Backend

SEED_LIMIT = 2**64


def check_seed(seed: Any) -> None:
    """ParameterError unless `seed` is None or an integer in [0, 2**64)."""
    if seed is not None and not (is_integer(seed) and 0 <= seed < SEED_LIMIT):
        raise ParameterError("seed", f"must be an integer in [0, 2**64) or None, got {seed!r}")


def check_prompt_ids(ids: Sequence[Any], limit: int, where: str = "") -> list[int]:
    """A non-empty list of token ids in [0, limit) as ints; `where` (e.g. " (prompt 2)") ends the message."""
    if len(ids) == 0:
        raise ParameterError("prompt", f"needs at least one token{where}")
    if all(type(t) is int for t in ids) and 0 <= min(ids) and max(ids) < limit:
        return list(ids)  # plain ints (the common case) without the numbers.Integral check per token
    bad = next((t for t in ids if not (is_integer(t) and 0 <= t < limit)), None)
    if bad is not None:
        raise ParameterError("prompt", f"token ids must be integers in [0, {limit}), got {bad!r}{where}")
    return [int(t) for t in ids]


def check_output(output: Any, tokenizer, default: bool) -> bool:
    """Whether to produce text: output "text" | "ids", or None for `default`; text needs a tokenizer."""
    if output not in (None, "text", "ids"):
        raise ParameterError("output", f"must be 'text', 'ids' or None, got {output!r}")
    if output == "text" and tokenizer is None:
        raise ParameterError("output", "'text' needs a tokenizer and this export has none")
    return default if output is None else output == "text"


def check_count(name: str, value: Any) -> None:
    """ParameterError unless `value` is an integer >= 0."""
    if not (is_integer(value) and value >= 0):
        raise ParameterError(name, f"must be an integer >= 0, got {value!r}")


def check_length(prompt_len: int, max_new_tokens: int, max_seq_len: Optional[int]) -> None:
    """ParameterError when a hybrid's KV cache (max_seq_len, None: no limit) cannot hold prompt + output."""
    if max_seq_len is not None and prompt_len + max_new_tokens > max_seq_len:
        raise ParameterError("max_new_tokens", f"({max_new_tokens}) + the prompt ({prompt_len} tokens) exceed the "
                                               f"export's max_seq_len {max_seq_len} (re-export with a larger "
                                               "--max-seq-len)")


def split_stops(stop: Any) -> tuple[list[int], list[str]]:
    """`stop` (a string, a token id, or a list of them) -> (token ids, strings)."""
    if stop is None:
        stops = []
    else:
        stops = [stop] if isinstance(stop, str) or not isinstance(stop, Iterable) else list(stop)
    wrong = next((s for s in stops if not (isinstance(s, str) or is_integer(s))), None)
    if wrong is not None:
        raise ParameterError("stop", f"must be strings or token ids, got {wrong!r}")
    return [int(s) for s in stops if not isinstance(s, str)], [s for s in stops if isinstance(s, str)]


def check_state(state: Any, backend: Backend) -> None:
    """ParameterError unless `state` has this backend's layers, shapes, dtypes and device.

    A state from another engine (other model, batch, dtype or device) would otherwise fail deep in a
    backend with a raw error, or be silently converted."""
    if not isinstance(state, InferenceState):
        raise ParameterError("state", f"must be an InferenceState from engine.new_state(), got {type(state).__name__}")
    cfg = backend.config
    n_mamba, n_attn = len(cfg.mamba_layers), len(cfg.attn_layer_idx)
    n_conv = n_attn if cfg.attn_d_conv else 0
    if (len(state.conv), len(state.ssm), len(state.key), len(state.value), len(state.attn_conv)) != \
            (n_mamba, n_mamba, n_attn, n_attn, n_conv) or (state.length is None) != (n_attn == 0):
        raise ParameterError("state", f"has {len(state.conv)} Mamba and {len(state.key)} attention layers, this "
                                      f"engine's model has {n_mamba} and {n_attn} (a state from another engine? use "
                                      "engine.new_state())")
    first = state.conv[0]
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 0
    kv = cfg.kv_cache_shape(batch, backend.max_seq_len or 0)
    for kind, tensors, shape, dtype in (("conv", state.conv, cfg.conv_state_shape(batch), backend.dtype),
                                        ("ssm", state.ssm, cfg.ssm_state_shape(batch), backend.state_dtype),
                                        ("key", state.key, kv, backend.dtype), ("value", state.value, kv, backend.dtype),
                                        ("attn_conv", state.attn_conv, cfg.attn_conv_state_shape(batch), backend.dtype),
                                        ("length", [state.length] if n_attn else [], (batch,), torch.int64)):
        shape, device = torch.Size(shape), backend.device
        if not all(isinstance(t, torch.Tensor) and t.shape == shape and t.dtype == dtype and t.device == device
                   for t in tensors):  # the fast path: this runs before every prefill and decode
            for layer, tensor in enumerate(tensors):
                _check_state_tensor(f"state.{kind}[{layer}]", tensor, shape, dtype, device)


def _check_state_tensor(name: str, tensor: Any, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ParameterError(name, f"has shape {got}, this engine needs {tuple(shape)} "
                                   "(a state from another engine? use engine.new_state(batch))")
    if tensor.dtype != dtype:
        raise ParameterError(name, f"is {tensor.dtype}, this engine needs {dtype}")
    if not _same_device(tensor.device, device):
        raise ParameterError(name, f"is on {tensor.device}, this engine runs on {device}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)
