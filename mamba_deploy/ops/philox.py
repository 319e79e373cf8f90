"""Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
counter-based uniforms for sampling, in numpy. The reference of the CUDA kernel `md_philox_uniform_fwd`
(plugins/kernels/sampling.cu, bound as `ops.cuda.philox_uniform_cuda`), and the sampler's CPU path.

One uniform per (seed, step): key = the 64-bit seed as two 32-bit words (low, high); counter = (step low,
step high, 0, 0); the first output word w becomes u = ((w >> 9) + 0.5) * 2**-23, a float32 in (0, 1)
computed exactly in float32 on the host and on the device (23 random bits: with 24, the largest
value + 0.5 would need 25 bits and round to 1.0).
"""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
ROUNDS = 10
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32(counter: tuple[np.ndarray, ...], key: tuple[np.ndarray, np.ndarray],
               rounds: int = ROUNDS) -> tuple[np.ndarray, ...]:
    """Philox4x32-`rounds` of four uint32 counter words and two key words (uint64 arrays holding 32-bit
    values, broadcast together) -> the four output words (uint64 arrays holding 32-bit values)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + np.uint64(W0)) & _MASK, (k1 + np.uint64(W1)) & _MASK
        p0, p1 = np.uint64(M0) * c0, np.uint64(M1) * c2  # exact: 32 x 32 bits fit in uint64
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


def uniform_from_word(word: np.ndarray) -> np.ndarray:
    """32-bit words (uint64 array) -> float32 uniforms ((word >> 9) + 0.5) * 2**-23 in (0, 1), exact."""
    high = (np.asarray(word, dtype=np.uint64) >> np.uint64(9)).astype(np.float32)
    return (high + np.float32(0.5)) * np.float32(2.0 ** -23)


def _bits64(values) -> np.ndarray:
    """An integer array as uint64 (int64 values are read as their two's-complement bits)."""
    values = np.asarray(values)
    if values.dtype == np.int64:
        return values.view(np.uint64)
    if values.dtype != np.uint64:
        raise TypeError(f"expected uint64 or int64 values, got {values.dtype}")
    return values


def philox_uniform(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """seeds, steps: (n,) uint64 (int64 arrays are read as their two's-complement bits) -> (n,) float32."""
    seeds, steps = _bits64(seeds), _bits64(steps)
    zero = np.zeros_like(steps)
    word = philox4x32((steps & _MASK, steps >> np.uint64(32), zero, zero), (seeds & _MASK, seeds >> np.uint64(32)))[0]
    return uniform_from_word(word)
