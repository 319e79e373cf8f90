"""One Mamba2 layer's prefill chunk scan in the native engine's layouts (x, B, C views of the conv output, dt and z
views of the in_proj output): time per call replayed from a CUDA graph, achieved GB/s and TFLOP/s, and the time
of each kernel (torch.profiler).

    PYTHONPATH=. MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so python3 benchmarks/chunk_scan.py \\
        --seqlen 2048                       # mamba2-1.3b's layer: 64 heads of 64, one group, dstate 128
        --batch 8 --seqlen 2048 --nheads 80  # mamba2-2.7b's

Bytes: x, z, y, B, C, dt once each, the state in and out, and the state entering each 64-step chunk written once
and read once (the SSD form's scratch: float32, or the state's dtype with `--state-dtype model`; libraries before
379b592 kept it in float32 for either state, so their 16-bit-state figure here is low). FLOPs: the SSD products
counted once (hi + lo pairs not counted twice): per head C B^T and its masked product with X over the causal half
of each chunk, the chunk states X^T B and their contribution C S^T.
"""
import argparse

import torch

from mamba_deploy.bench import profile_kernels
from mamba_deploy.ops import cuda as K

CHUNK = 64  # ssd_chunk.cu's kQ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--nheads", type=int, default=64)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--ngroups", type=int, default=1)
    ap.add_argument("--dstate", type=int, default=128)
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--state-dtype", choices=["float32", "model"], default="float32",
                    help="the SSM state's (model: --dtype's)")
    a = ap.parse_args()
    Bt, L, H, P, G, N = a.batch, a.seqlen, a.nheads, a.headdim, a.ngroups, a.dstate
    dt16 = getattr(torch, a.dtype)
    torch.manual_seed(0)
    d = H * P
    xbc = torch.randn(Bt, L, d + 2 * G * N, device="cuda", dtype=dt16)
    zxdt = torch.randn(Bt, L, 2 * d + H, device="cuda", dtype=dt16) * 0.5
    x = xbc[..., :d].unflatten(-1, (H, P))
    B, C = (xbc[..., d + i * G * N:d + (i + 1) * G * N].unflatten(-1, (G, N)) for i in range(2))
    z, dt = zxdt[..., :d].unflatten(-1, (H, P)), zxdt[..., 2 * d:]
    A = -torch.empty(H, device="cuda").uniform_(1, 16)
    D, dt_bias = torch.ones(H, device="cuda"), torch.full((H,), -3.0, device="cuda")
    sdt = torch.float32 if a.state_dtype == "float32" else dt16
    state = torch.zeros(Bt, H, P, N, device="cuda", dtype=sdt)
    y = torch.empty(Bt, L, H, P, device="cuda", dtype=dt16)

    def run() -> None:
        K.chunk_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, initial_state=state, out=y, state_out=state)

    for _ in range(3):
        run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(a.repeats):
            run()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) / a.repeats * 1e3
    nchunks = -(-L // CHUNK)
    s_bytes = state.element_size()
    moved = Bt * (2 * L * (3 * d + 2 * G * N + H) + 2 * s_bytes * H * P * N + 2 * s_bytes * nchunks * H * P * N)
    flops = 2 * Bt * H * (L * CHUNK // 2 * (N + P) + 2 * L * P * N)
    print(f"chunk_scan {a.dtype} state {sdt} batch={Bt} L={L} heads={H}x{P} groups={G} dstate={N}: "
          f"{us:.1f} us per call, {moved / 1e6:.1f} MB at {moved / us / 1e3:.0f} GB/s, "
          f"{flops / 1e9:.2f} GFLOP at {flops / us / 1e6:.1f} TFLOP/s")
    for name, kus, calls in profile_kernels(run, runs=5, top=6):
        print(f"{kus:9.1f} us {calls:3d}x  {name}")


if __name__ == "__main__":
    main()
