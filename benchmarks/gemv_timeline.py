"""Where a tensor-core GEMV call's time goes, block by block: the phases of gemm_tc.cu's kernel from a diagnostic
build that stamps them (trace.cuh), for the decode projections of benchmarks/gemv_tc.py.

    cmake -S . -B build-trace -DCMAKE_CUDA_ARCHITECTURES=90 -G Ninja -DMAMBA_DEPLOY_KERNEL_TRACE=ON
    cmake --build build-trace --target mamba_deploy_kernels
    PYTHONPATH=. MAMBA_DEPLOY_KERNEL_LIB=build-trace/libmamba_deploy_kernels.so \\
        python3 benchmarks/gemv_timeline.py --shapes in_proj out_proj --batches 8 16 64

Each case runs `--calls` calls back to back in a CUDA graph (over copies of the weights, as a decode step reads
them from memory) and reads the stamps of the last of them. Per call: its time by events; the gap from the end of
the call before to this one's first block (negative: programmatic launch had it resident and waiting); how far
apart its blocks started; then each phase's min / median / max over its blocks, in us: the main loop (the
weights streamed and multiplied), the partial sums into shared memory, the cluster's first barrier, the reduction
over the cluster and the stores, the last barrier. Stamps are %globaltimer (one clock for the whole GPU). The
trace build's own stores cost a little; time the normal build with gemv_tc.py.
"""
import argparse
import ctypes
import sys

import torch

from gemv_tc import SHAPES, weight_copies  # this script's folder is on the path when it runs
from mamba_deploy.bench import _events_ms
from mamba_deploy.native import gemv as G
from mamba_deploy.ops import _lib

CALLS, BLOCKS, ROW = 4, 4096, 8  # trace.cuh's kTraceCalls, kTraceBlocks, kTraceRow
EXIT = 5  # trace.cuh's kTraceExit
PHASES = ("main loop", "partials", "first barrier", "reduce + store", "last barrier")  # between trace.cuh's points


def trace_reader():
    """The library's md_tc_trace_read, or exit with why not."""
    if not torch.cuda.is_available():
        sys.exit("gemv_timeline: needs a CUDA GPU")
    lib = _lib.load()
    if not hasattr(lib, "md_tc_trace_read"):
        sys.exit(f"gemv_timeline: {_lib.library_path()} has no timestamps: build it with "
                 f"-DMAMBA_DEPLOY_KERNEL_TRACE=ON")
    return lib.md_tc_trace_read  # typed by _lib (DIAGNOSTIC_SIGNATURES)


def last_calls(read) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (blocks, ROW: the stamps in ns, then the multiprocessor) of the last call and of the one before."""
    rows = torch.zeros(CALLS, BLOCKS, ROW, dtype=torch.int64)
    calls = ctypes.c_uint32(0)
    torch.cuda.synchronize()
    if read(rows.data_ptr(), ctypes.byref(calls)) != 0:
        sys.exit("gemv_timeline: md_tc_trace_read failed")

    def call(back: int) -> torch.Tensor:
        r = rows[(calls.value - 1 - back) % CALLS]
        return r[(r[:, 0] - r[0, 0]).abs() < 1_000_000]  # block 0's call: rows left by earlier cases are older
    return call(0), call(1)


def spread(values_ns: torch.Tensor) -> str:
    us = values_ns.double() / 1e3
    return f"{us.min().item():.2f} / {us.median().item():.2f} / {us.max().item():.2f}"


def case(read, n: int, k: int, batch: int, algo: str, calls: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Events time a call (us), and the rows of a replay's last call and of the one before it."""
    copies = min(weight_copies(n, k), calls)
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * k ** -0.5 for _ in range(copies)]
    x = torch.randn(batch, k, device="cuda", dtype=torch.float16)
    out = torch.empty(batch, n, device="cuda", dtype=torch.float16)

    def run(upto: int) -> None:
        for i in range(upto):
            G.gemv(x, ws[i % len(ws)], out=out, algo=algo)

    run(1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(calls)
    us = _events_ms(graph.replay, 5) * 1e3 / calls
    graph.replay()
    return (us, *last_calls(read))


def row(model: str, name: str, batch: int, algo: str, us: float, rows: torch.Tensor, prev: torch.Tensor) -> str:
    first = rows[:, 0].min().item()
    gap = (first - prev[:, EXIT].max().item()) / 1e3
    phases = [spread(rows[:, i + 1] - rows[:, i]) for i in range(len(PHASES))]
    starts, span = (rows[:, 0].max().item() - first) / 1e3, (rows[:, EXIT].max().item() - first) / 1e3
    return (f"| {model} | {name} | {batch} | {algo} | {us:.2f} | {gap:+.2f} | {starts:.2f} | " + " | ".join(phases)
            + f" | {span:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=["in_proj", "out_proj"], help="matrices of gemv_tc.py's SHAPES")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 64])
    ap.add_argument("--algos", nargs="+", default=["tensor_cores"], choices=["tensor_cores", "mma_sync", "wgmma"])
    ap.add_argument("--calls", type=int, default=6, help="calls a graph replay (the last one is shown)")
    ap.add_argument("--programmatic-launch", action="store_true", help="as the engine launches (its blocks wait)")
    a = ap.parse_args()
    read = trace_reader()
    _lib.set_programmatic_launch(a.programmatic_launch)
    torch.manual_seed(0)
    print("| model | matrix | batch | form | us a call | gap us | starts within us | "
          + " | ".join(f"{p} us" for p in PHASES) + " | span us |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | " + " | ".join("---" for _ in PHASES) + " | ---: |")
    for model, name, n, k in SHAPES:
        if name not in a.shapes or n <= G.SKINNY_MAX_N:  # the skinny form (gemv_skinny.cu) has no stamps
            continue
        for batch in a.batches:
            for algo in a.algos:
                if algo == "wgmma" and batch > G.MAX_BATCH:
                    continue
                print(row(model, name, batch, algo, *case(read, n, k, batch, algo, max(2, a.calls))), flush=True)


if __name__ == "__main__":
    main()
