"""The sampler's semantics written plainly, one row at a time: the CPU reference of `SamplerState.sample`.

Loops over Python lists; float32 steps as numpy float32 scalars in the sampler's order, weights and their
sums as Python integers, the two products in float64 (Python floats). One difference from the sampler
remains: exp here is float64 `math.exp` rounded to float32, torch's float32 exp may differ by one ulp
(about 1% of values on CPU). That moves a weight by one unit in its 24th bit, so a token can differ only
when u * total falls within that much of a cumulative boundary (or p of min_p's threshold): about 1e-9
per draw, and none in the seeded tests (tests/runtime/test_sampler.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .sampler import weight_bits
from .sampling import SamplingParams


def _penalised(logits_row: Sequence[float], params: SamplingParams, seen_row: Sequence[bool],
               vocab_limit: int) -> list[np.float32]:
    """Step 1: float32 logits, padded columns -inf, repetition penalty on seen tokens."""
    penalty = np.float32(params.repetition_penalty)
    out = []
    for column, value in enumerate(logits_row):
        x = np.float32(-np.inf) if column >= vocab_limit else np.float32(value)
        if seen_row[column]:
            x = x / penalty if x > 0 else x * penalty
        out.append(x)
    return out


def sample_reference(logits_row: np.ndarray, params: SamplingParams, u: float, seen_row: Sequence[bool],
                     vocab_limit: int) -> int:
    """logits_row (V,) float32 values; u: the row's uniform (float32 value); seen_row (V,) bool -> token id."""
    x = _penalised(logits_row, params, seen_row, vocab_limit)
    if params.temperature == 0:
        return max(range(len(x)), key=lambda j: (x[j], -j))  # the first of equal maxima
    temperature = np.float32(params.temperature)
    x = [v / temperature + np.float32(0.0) for v in x]
    order = sorted(range(len(x)), key=lambda j: (-x[j], j))
    top = x[order[0]]
    probs = [np.float32(math.exp(float(x[j] - top))) for j in order]
    scale = 2 ** weight_bits(len(x))
    k = params.top_k if 0 < params.top_k < len(x) else len(x)
    weights = [int(float(p) * scale) if i < k else 0 for i, p in enumerate(probs)]
    top_p, min_p = float(np.float32(params.top_p)), np.float32(params.min_p)
    total, before, kept = sum(weights), 0, []
    for w, p in zip(weights, probs):
        in_nucleus = top_p >= 1 or before < top_p * total
        kept.append(w if in_nucleus and p >= min_p else 0)
        before += w
    threshold = float(np.float32(u)) * sum(kept)
    cumulative = 0
    for position, w in enumerate(kept):
        cumulative += w
        if cumulative > threshold:
            return order[position]
    return order[-1]  # not reached: u < 1, so threshold < the total
