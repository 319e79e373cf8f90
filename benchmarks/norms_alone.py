"""Mamba2's per-layer bandwidth kernels alone at one layer's prefill shape (mamba2-1.3b sizes: d_model 2,048,
d_inner 4,096, conv_dim 4,352, fp16): the gated norm (y * silu(z) over 4,096 channels), the prefill conv and the
residual norm, each as 20 launches replayed from one CUDA graph over 4 buffer sets (past the L2), with z and
the conv input either contiguous or strided views of in_proj's output, as the engine calls them.

    python3 benchmarks/norms_alone.py --tokens 2048

GB/s: the bytes each kernel must move (inputs read, outputs written) over its time.
"""
from __future__ import annotations

import argparse

import torch

from mamba_deploy.bench import graph_us
from mamba_deploy.native import gemv as G
from mamba_deploy.ops import cuda as K

D_MODEL, D_INNER, CONV_DIM, IN_PROJ = 2048, 4096, 4352, 8512
SETS, LAUNCHES = 4, 20


def per_launch_us(launches, repeats: int) -> float:
    """us a launch of `launches` (LAUNCHES kernels) replayed from one CUDA graph."""
    return graph_us(launches, repeats) / LAUNCHES


def rand(*shape, dtype=torch.half):
    return torch.randn(*shape, device="cuda").to(dtype)


def gated_norm_us(n: int, layout: str, repeats: int) -> float:
    w = (1 + 0.1 * torch.randn(D_INNER, device="cuda")).half()
    sets = []
    for _ in range(SETS):
        z = rand(n, IN_PROJ)[:, :D_INNER] if layout == "strided" else rand(n, D_INNER)
        sets.append((rand(n, D_INNER), z, torch.empty(n, D_INNER, dtype=torch.half, device="cuda")))

    def launches():
        for i in range(LAUNCHES):
            y, z, out = sets[i % SETS]
            G.row_norm(y, z, w, 1e-5, out=out, gate=True, group_size=D_INNER)
    return per_launch_us(launches, repeats)


def conv_us(n: int, layout: str, repeats: int) -> float:
    w, bias = rand(CONV_DIM, 4) * 0.3, rand(CONV_DIM)
    sets = []
    for _ in range(SETS):
        x = rand(1, n, IN_PROJ)[..., D_INNER:D_INNER + CONV_DIM] if layout == "strided" else rand(1, n, CONV_DIM)
        state = torch.zeros(1, CONV_DIM, 3, dtype=torch.half, device="cuda")
        sets.append((x, torch.empty(1, n, CONV_DIM, dtype=torch.half, device="cuda"), state))

    def launches():
        for i in range(LAUNCHES):
            x, y, state = sets[i % SETS]
            K.causal_conv1d(x.transpose(1, 2), w, bias, state, "silu", out=y.transpose(1, 2), state_out=state)
    return per_launch_us(launches, repeats)


def residual_norm_us(n: int, repeats: int) -> float:
    w = (1 + 0.1 * torch.randn(D_MODEL, device="cuda")).half()
    sets = [(rand(n, D_MODEL), torch.randn(n, D_MODEL, device="cuda"),
             torch.empty(n, D_MODEL, dtype=torch.half, device="cuda")) for _ in range(SETS)]

    def launches():
        for i in range(LAUNCHES):
            hidden, residual, out = sets[i % SETS]
            G.row_norm(hidden, residual, w, 1e-5, out=out, residual_out=residual)
    return per_launch_us(launches, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048, help="rows: batch x prompt length")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    n = a.tokens
    print("| kernel | layout | us | GB/s |")
    print("| --- | --- | ---: | ---: |")
    for layout in ("contiguous", "strided"):
        us = gated_norm_us(n, layout, a.repeats)
        print(f"| gated norm {n} x {D_INNER} | {layout} | {us:.1f} | {3 * n * D_INNER * 2 / us / 1e3:,.0f} |")
    for layout in ("contiguous", "strided"):
        us = conv_us(n, layout, a.repeats)
        print(f"| conv {n} x {CONV_DIM} | {layout} | {us:.1f} | {2 * n * CONV_DIM * 2 / us / 1e3:,.0f} |")
    us = residual_norm_us(n, a.repeats)  # hidden fp16 and the float32 residual read, both written back
    print(f"| residual norm {n} x {D_MODEL} | contiguous | {us:.1f} | {n * D_MODEL * 12 / us / 1e3:,.0f} |")


if __name__ == "__main__":
    main()
