"""One Mamba1 layer's prefill conv and selective scan (mamba-1.4b sizes: 4,096 channels, dstate 16, fp16, float32
state), each timed as 50 calls replayed from one CUDA graph (the kernels alone, no host), as the engine calls them
(x and z strided views of in_proj's output).

    python3 benchmarks/conv_scan.py 1x16 1x100 1x2048 64x100 8x2048

GB/s: the conv's x read + y written (its floor at the H200's 4.3 TB/s); the scan's x, dt, z read, y written
(B, C and the state are small beside them).
"""
from __future__ import annotations

import argparse

import torch

from mamba_deploy.ops import cuda as K

DIM, DSTATE = 4096, 16


def layer_ops(batch: int, seqlen: int):
    """(conv, scan): closures over random inputs of one layer."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, dtype=torch.half):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    d = DIM
    xz, w, bias = rand(batch, seqlen, 2 * d), rand(d, 4) * 0.3, rand(d)
    conv_state = torch.zeros(batch, d, 3, device="cuda")
    xc = torch.empty(batch, seqlen, d, dtype=torch.half, device="cuda")
    dt, B, C = rand(batch, seqlen, d) * 0.5, rand(batch, seqlen, DSTATE), rand(batch, seqlen, DSTATE)
    A = -torch.rand(d, DSTATE, device="cuda") * 4
    D, dt_bias = torch.rand(d, device="cuda"), torch.rand(d, device="cuda") - 2
    ssm_state = torch.zeros(batch, d, DSTATE, device="cuda")
    y = torch.empty_like(xc)

    def conv():
        K.causal_conv1d(xz[..., :d].transpose(1, 2), w, bias, conv_state, "silu", out=xc.transpose(1, 2),
                        state_out=conv_state)

    def scan():
        K.selective_scan(xc.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
                         xz[..., d:].transpose(1, 2), dt_bias, ssm_state, True, out=y.transpose(1, 2),
                         state_out=ssm_state)
    return conv, scan


def graph_us(fn, reps: int = 50) -> float:
    """Microseconds per call of fn, replayed from a graph of `reps` calls."""
    for _ in range(3):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=["1x16", "1x100", "1x2048", "64x100", "8x2048"], help="BATCHxLENGTH")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, dim {DIM}, dstate {DSTATE}, fp16, float32 state")
    print("| batch x tokens | conv us | conv GB/s | scan us | scan GB/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for shape in a.shapes:
        batch, seqlen = map(int, shape.split("x"))
        conv, scan = layer_ops(batch, seqlen)
        elems = batch * seqlen * DIM
        conv_us, scan_us = graph_us(conv), graph_us(scan)
        print(f"| {batch} x {seqlen} | {conv_us:.1f} | {2 * elems * 2 / conv_us / 1e3:,.0f} | {scan_us:.1f} | "
              f"{4 * elems * 2 / scan_us / 1e3:,.0f} |")


if __name__ == "__main__":
    main()
