"""The polynomial log1p of common.cuh's MD_SOFTPLUS_POLY softplus (an experiment built with that flag): its
coefficients, read from the source and evaluated in float32 with fused multiply-adds as the kernel does, against
float64 log1p on [0, 1], and the softplus made of it against float64 softplus."""
import pathlib
import re

import numpy as np

COMMON = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "kernels" / "common.cuh"


def coefficients() -> list[np.float32]:
    """r's coefficients, highest degree first, between the SOFTPLUS_POLY markers."""
    block = re.search(r"SOFTPLUS_POLY: .*?SOFTPLUS_POLY end", COMMON.read_text(), re.S).group(0)
    return [np.float32(float(v)) for v in re.findall(r"(-?\d\.\d+e[-+]\d+)f", block)]


def fma32(a, b, c):
    """a * b + c rounded once to float32 (float64 holds a float32 product exactly)."""
    return (a.astype(np.float64) * b.astype(np.float64) + np.float64(c)).astype(np.float32)


def log1p_unit(u: np.ndarray) -> np.ndarray:
    coef = coefficients()
    r = np.full_like(u, coef[0])
    for c in coef[1:]:
        r = fma32(r, u, c)
    return (u * fma32(r, u, np.float32(1.0))).astype(np.float32)


def test_log1p_unit_relative_error():
    coef = coefficients()
    assert len(coef) == 8, coef
    u = np.concatenate([np.linspace(0, 1, 400001, dtype=np.float32),
                        np.float32(2.0) ** -np.arange(1, 127, dtype=np.float32)])
    want = np.log1p(u.astype(np.float64))
    got = log1p_unit(u).astype(np.float64)
    rel = np.abs(got - want) / np.where(want > 0, want, 1)
    assert rel.max() <= 1.8e-7, f"max relative error {rel.max():.3g} at u = {u[rel.argmax()]}"
    tiny = np.float32(2.0) ** -np.arange(30, 127, dtype=np.float32)
    assert np.array_equal(log1p_unit(tiny), tiny)  # log1p(u) = u to float32 precision there


def test_softplus_from_it():
    v = np.linspace(-30, 40, 700001, dtype=np.float32)
    u = np.exp(-np.abs(v).astype(np.float64)).astype(np.float32)  # the kernel's exp2 is 2 ulp, not counted here
    got = (np.maximum(v, 0) + log1p_unit(u)).astype(np.float64)
    want = np.logaddexp(0.0, v.astype(np.float64))
    rel = np.abs(got - want) / want
    assert rel.max() <= 3e-7, f"max relative error {rel.max():.3g} at v = {v[rel.argmax()]}"
    assert np.array_equal(got[v > 17], v[v > 17].astype(np.float64))
