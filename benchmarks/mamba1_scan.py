"""Mamba1 layers' prefill selective scan in the native engine's layouts (channel-last views of the
(batch, seqlen, dim) projection outputs): a table of the form the launcher takes, time per call and achieved
GB/s, replayed from a CUDA graph (the kernels alone) and as eager calls (host included: small inputs are bound
by the host there).

    PYTHONPATH=. MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so python3 benchmarks/mamba1_scan.py \\
        --shapes 1x2048x4096 8x2048x4096 64x100x4096   # BATCHxSEQLENxDIM: mamba-1.4b's layer; dim 5120 for 2.8b
"""
import argparse

import torch

from mamba_deploy.ops import _lib
from mamba_deploy.ops import cuda as K


def form(batch: int, seqlen: int, dim: int, dstate: int) -> str:
    """Which kernel md_launch_ssm_scan_ws takes for this shape (given the workspace it asks for)."""
    cfg = _lib.SsmParams()
    cfg.batch, cfg.seqlen, cfg.nheads, cfg.headdim, cfg.dstate, cfg.ngroups = batch, seqlen, dim, 1, dstate, 1
    lanes = _lib.scan_split_lanes(cfg)
    if lanes:
        return f"split, {lanes} lanes"
    return "two passes" if _lib.scan_workspace_bytes(cfg) else "one thread a channel"


def time_us(calls, repeats: int) -> float:
    """Best of 3 timings of calls() (repeats calls each), us per call."""
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / repeats * 1e3)
    return best


def row(Bt: int, L: int, d: int, N: int, R: int, repeats: int) -> str:
    torch.manual_seed(0)
    f16 = dict(device="cuda", dtype=torch.float16)
    xz, xc = torch.randn(Bt, L, 2 * d, **f16), torch.randn(Bt, L, d, **f16)
    xdbl, dt = torch.randn(Bt, L, R + 2 * N, **f16), torch.randn(Bt, L, d, **f16) * 0.5
    A = -torch.rand(d, N, device="cuda").exp()
    D, dt_bias = torch.ones(d, device="cuda"), torch.zeros(d, device="cuda")
    state = torch.zeros(Bt, d, N, device="cuda")
    y = torch.empty_like(xc)

    def run() -> None:
        K.selective_scan(xc.transpose(1, 2), dt.transpose(1, 2), A, xdbl[..., R:R + N].transpose(1, 2),
                         xdbl[..., R + N:].transpose(1, 2), D, xz[..., d:].transpose(1, 2), dt_bias, state, True,
                         out=y.transpose(1, 2), state_out=state)

    for _ in range(3):
        run()
    graph = torch.cuda.CUDAGraph()  # the calls replayed from a graph: the kernels' time without the host's
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            run()
    graph.replay()
    replay = time_us(graph.replay, repeats)
    eager = time_us(lambda: [run() for _ in range(repeats)], repeats)
    # x dt z y, B C; state in + out; A D bias
    moved = Bt * (2 * L * (4 * d + 2 * N) + 2 * 4 * d * N) + 4 * (3 * d + d * N)
    return (f"| {Bt} x {L} x {d} | {form(Bt, L, d, N)} | {moved / 1e6:.1f} | {replay:.1f} "
            f"| {moved / replay / 1e3:,.0f} | {eager:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1x2048x4096"], help="BATCHxSEQLENxDIM")
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--dt-rank", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes]
        if any(len(s) != 3 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        raise SystemExit(f"mamba1_scan.py: --shapes takes BATCHxSEQLENxDIM, e.g. 1x2048x4096 (got {a.shapes})")
    print("| batch x steps x channels | form | MB moved | graph replay us | GB/s | eager us |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for Bt, L, d in shapes:
        print(row(Bt, L, d, a.dstate, a.dt_rank, max(2, min(a.repeats, 400000 // (Bt * L)))), flush=True)


if __name__ == "__main__":
    main()
