"""Depthwise causal conv1d over a sequence from a past state, and its single-token update.

Layout (as causal-conv1d and ONNX `CausalConvWithState`): channels before length.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F



def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    conv_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over `x` continuing from `conv_state`.

    x: (batch, dim, seqlen); weight: (dim, width); bias: (dim,) or None;
    conv_state: (batch, dim, width - 1), the last inputs before x (zeros if None).
    Returns y: (batch, dim, seqlen) in x.dtype, computed in float32, and the new state
    (batch, dim, width - 1): the last width - 1 inputs of cat(conv_state, x), in the state's dtype.
    """
    if activation not in (None, "silu", "swish", "none"):
        raise ValueError(f"activation must be silu or None, got {activation!r}")
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    if conv_state is None:
        conv_state = x.new_zeros(batch, dim, width - 1)
    full = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # (batch, dim, width - 1 + seqlen)
    y = F.conv1d(full.float(), weight.float().unsqueeze(1), bias.float() if bias is not None else None,
                 groups=dim)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    new_state = full[:, :, full.shape[-1] - (width - 1):].to(conv_state.dtype)
    return y.to(x.dtype), new_state


def causal_conv1d_update_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    conv_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of `causal_conv1d_ref`. x: (batch, dim) -> y: (batch, dim), new conv_state."""
    y, new_state = causal_conv1d_ref(x.unsqueeze(-1), weight, bias, conv_state, activation)
    return y.squeeze(-1), new_state


def causal_conv1d_sequential(x, weight, bias=None, conv_state=None, activation="silu"):
    """`causal_conv1d_ref` as a chain of single-token updates (for testing)."""
    state = conv_state if conv_state is not None else x.new_zeros(x.shape[0], x.shape[1], weight.shape[-1] - 1)
    ys = []
    for t in range(x.shape[-1]):
        y, state = causal_conv1d_update_ref(x[:, :, t], weight, bias, state, activation)
        ys.append(y)
    return torch.stack(ys, dim=-1), state
