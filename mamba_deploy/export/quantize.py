"""Weight-only block quantization of the projection weights for ONNX Runtime's `MatMulNBits` (com.microsoft).

A float weight W (N, K) (a Gemm's (out, in)) becomes, per row and per block of BLOCK_SIZE inputs (K padded
with zeros to whole blocks), symmetric integers q in [-2^(b-1), 2^(b-1) - 1] stored with the offset 2^(b-1)
(MatMulNBits' default zero point) and one float32 scale = max|w| / (2^(b-1) - 1):

    W.qweight  uint8 (N, blocks, BLOCK_SIZE * b / 8)
    W.scales   float32 (N * blocks,)

Only int8 (b = 8) is offered. int4 (MatMulNBits bits=4, two weights a byte) was measured and dropped: decode
1.3x faster than int8 on mamba-130m shapes, but a 0.38-0.52 relative logit error and 89% top-1 agreement on
the demo models (int8: 0.043-0.046, 94-100%), see docs/performance.md "CPU".

`dequantize` is the reference (the torch and native backends load quantized exports through it). Which
weights: every in_proj, x_proj, dt_proj and out_proj, and the LM head (a tied head gets a quantized copy,
`lm_head.weight`, beside the float embedding table, which decode only gathers one row of).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..errors import ParameterError

QUANT_BITS = {"int8": 8}
BLOCK_SIZE = 32
QWEIGHT, SCALES = ".qweight", ".scales"
_PROJECTIONS = (".in_proj.weight", ".x_proj.weight", ".dt_proj.weight", ".out_proj.weight")
HEAD = "lm_head.weight"


def check_quantize(quantize: Optional[str]) -> Optional[int]:
    """Bits of a `quantize` option (None: no quantization); ParameterError for anything else."""
    if quantize is None:
        return None
    if quantize not in QUANT_BITS:
        raise ParameterError("quantize", f"must be one of {', '.join(QUANT_BITS)}, got {quantize!r}")
    return QUANT_BITS[quantize]


def is_quantized_weight(name: str) -> bool:
    """Whether the export of a quantized model holds `name` (a checkpoint/export weight name) quantized."""
    return name.endswith(_PROJECTIONS) or name == HEAD


def quantized_shapes(n: int, k: int, bits: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of (qweight, scales) of an (n, k) weight."""
    blocks = math.ceil(k / BLOCK_SIZE)
    return (n, blocks, BLOCK_SIZE * bits // 8), (n * blocks,)


def quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) float -> (qweight uint8, scales float32) as the module docstring lays out."""
    n, k = weight.shape
    blocks = math.ceil(k / BLOCK_SIZE)
    w = torch.nn.functional.pad(weight.float(), (0, blocks * BLOCK_SIZE - k)).reshape(n, blocks, BLOCK_SIZE)
    top = 2 ** (bits - 1) - 1
    scales = w.abs().amax(-1) / top
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = (torch.clamp(torch.round(w / scales.unsqueeze(-1)), -top - 1, top) + top + 1).to(torch.uint8)
    return q.contiguous(), scales.reshape(-1).contiguous()


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """The reference of MatMulNBits' weight: (qweight, scales) -> float32 (N, k)."""
    n, blocks = qweight.shape[:2]
    w = (qweight.to(torch.int32) - 2 ** (bits - 1)).float() * scales.reshape(n, blocks, 1)
    return w.reshape(n, blocks * BLOCK_SIZE)[:, :k]


def quantized_entries(name: str, weight: torch.Tensor, bits: int) -> list[tuple[str, torch.Tensor]]:
    """The initializers that stand for `name` (N, K) in a quantized export."""
    q, s = quantize(weight, bits)
    return [(name + QWEIGHT, q), (name + SCALES, s)]


def dequantized(tensors: Iterator[tuple[str, torch.Tensor]], bits: int, in_features: dict[str, int]
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs with each (W.qweight, W.scales) pair replaced by (W, dequantized W);
    in_features: W -> K. Other pairs pass through."""
    pending: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if name.endswith(QWEIGHT) or name.endswith(SCALES):
            base = name.removesuffix(QWEIGHT).removesuffix(SCALES)
            if base in pending:
                parts = {name: tensor, **{base + (SCALES if name.endswith(QWEIGHT) else QWEIGHT): pending.pop(base)}}
                yield base, dequantize(parts[base + QWEIGHT], parts[base + SCALES], bits, in_features[base])
            else:
                pending[base] = tensor
        else:
            yield name, tensor
