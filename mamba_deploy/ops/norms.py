"""Norms the engines fuse: residual-add + RMSNorm/LayerNorm, Mamba2's gated grouped RMSNorm, and
Falcon-Mamba's weightless RMSNorm (on dt, B and C after x_proj).

These are standard ONNX ops in the exported graphs (not registry ops); the CUDA kernel library
implements them for the native engine, so their references live here beside the custom ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def add_norm_ref(
    x: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    is_rms: bool = True,
    residual_in_fp32: bool = True,
    out_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual <- x + residual; out <- norm(residual) * weight (+ bias).

    x, residual: (..., hidden). Returns (out in out_dtype or x.dtype, new residual in float32 when
    residual_in_fp32 else x.dtype). Math in float32.
    """
    res = x.float() if residual is None else x.float() + residual.float()
    if is_rms:
        out = res * torch.rsqrt(res.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
        if bias is not None:
            out = out + bias.float()
    else:
        out = F.layer_norm(res, (res.shape[-1],), weight.float(), None if bias is None else bias.float(), eps)
    res_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return out.to(out_dtype or x.dtype), res.to(res_dtype)


def gated_rms_norm_ref(
    x: torch.Tensor, z: Optional[torch.Tensor], weight: torch.Tensor, eps: float = 1e-5, group_size: Optional[int] = None
) -> torch.Tensor:
    """Mamba2's RMSNormGated (norm_before_gate=False): rmsnorm(x * silu(z)) per group * weight.

    x, z: (..., d); weight: (d,); group_size divides d (default: d). Returns x.dtype.
    """
    d = x.shape[-1]
    group_size = group_size or d
    h = x.float()
    if z is not None:
        h = h * F.silu(z.float())
    hg = h.reshape(*h.shape[:-1], d // group_size, group_size)
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    return (hg.reshape(h.shape) * weight.float()).to(x.dtype)


def rms_norm_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weightless RMSNorm over the last dim (Falcon-Mamba's dt/B/C norms): x * rsqrt(mean(x^2) + eps).

    x: (..., d). Math in float32, returns x.dtype. The native engine runs it as the gated norm's kernel with
    z None and a unit weight (the same float32 math and one rounding).
    """
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
