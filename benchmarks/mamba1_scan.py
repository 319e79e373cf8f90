"""One Mamba1 layer's prefill selective scan in the native engine's layouts (channel-last views of the
(batch, seqlen, dim) projection outputs): time per call and achieved GB/s, replayed from a CUDA graph (the
kernels alone) and as eager calls (host included: small inputs are bound by the host there).

    PYTHONPATH=. MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so python3 benchmarks/mamba1_scan.py \\
        --seqlen 2048 --dim 4096            # mamba-1.4b's layer; --dim 5120 for mamba-2.8b
        --batch 64 --seqlen 100             # the batched prefill of 64 short prompts
"""
import argparse

import torch

from mamba_deploy.ops import cuda as K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--dt-rank", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    Bt, L, d, N, R = a.batch, a.seqlen, a.dim, a.dstate, a.dt_rank
    torch.manual_seed(0)
    f16 = dict(device="cuda", dtype=torch.float16)
    xz, xc = torch.randn(Bt, L, 2 * d, **f16), torch.randn(Bt, L, d, **f16)
    xdbl, dt = torch.randn(Bt, L, R + 2 * N, **f16), torch.randn(Bt, L, d, **f16) * 0.5
    A = -torch.rand(d, N, device="cuda").exp()
    D, dt_bias, state = torch.ones(d, device="cuda"), torch.zeros(d, device="cuda"), torch.zeros(Bt, d, N, device="cuda")
    y = torch.empty_like(xc)

    def run() -> None:
        K.selective_scan(xc.transpose(1, 2), dt.transpose(1, 2), A, xdbl[..., R:R + N].transpose(1, 2),
                         xdbl[..., R + N:].transpose(1, 2), D, xz[..., d:].transpose(1, 2), dt_bias, state, True,
                         out=y.transpose(1, 2), state_out=state)

    for _ in range(3):
        run()
    graph = torch.cuda.CUDAGraph()  # the calls replayed from a graph: the kernels' time without the host's
    with torch.cuda.graph(graph):
        for _ in range(a.repeats):
            run()
    moved = Bt * (2 * L * (4 * d + 2 * N) + 2 * 4 * d * N) + 4 * (3 * d + d * N)  # x dt z y, B C; state in + out; A D bias
    for how, calls in (("graph replay", graph.replay), ("eager calls", lambda: [run() for _ in range(a.repeats)])):
        calls()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls()
        end.record()
        torch.cuda.synchronize()
        us = start.elapsed_time(end) / a.repeats * 1e3
        print(f"selective_scan batch={Bt} L={L} dim={d} dstate={N}, {how}: {us:.1f} us per call, {moved / 1e6:.1f} MB, "
              f"{moved / us / 1e3:.0f} GB/s")


if __name__ == "__main__":
    main()
