"""The decode projections at batch 1..64: gemv's CUDA-core form, its tensor-core form and cuBLAS (torch.mm), on
the shapes of mamba-1.4b and mamba2-1.3b: microseconds per call and achieved GB/s. "tensor cores" is what the
engine runs (wgmma from batch 17 on an sm_90a build; for n <= 256 the skinny form, whose cluster sizes
`--clusters` also times), "mma.sync" the tensor-core form without wgmma, "wgmma" (batch <= 16) its wgmma form,
"staged" (batch 1) the form whose weights are copied into shared memory before it waits for the kernel before it.

    PYTHONPATH=. MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so python3 benchmarks/gemv_tc.py \\
        --batches 1 2 4 8 16 32 64

Each time is a CUDA graph of `--calls` launches over copies of the weights that together exceed the L2 (so
every call reads its weights from memory, as in a decode step), median of `--repeats` replays, divided by
the calls. GB/s counts the weights, x and out once.
"""
import argparse
from functools import partial

import torch

from mamba_deploy.bench import _events_ms
from mamba_deploy.native import gemv as G

# (model, name, n, k)
SHAPES = [("mamba-1.4b", "in_proj", 8192, 2048), ("mamba-1.4b", "x_proj", 160, 4096),
          ("mamba-1.4b", "dt_proj", 4096, 128), ("mamba-1.4b", "out_proj", 2048, 4096),
          ("mamba-1.4b", "lm_head", 50280, 2048), ("mamba2-1.3b", "in_proj", 8512, 2048),
          ("mamba-2.8b", "in_proj", 10240, 2560), ("mamba-2.8b", "x_proj", 192, 5120),
          ("mamba-2.8b", "dt_proj", 5120, 160), ("mamba-2.8b", "out_proj", 2560, 5120),
          ("mamba2-2.7b", "in_proj", 10576, 2560)]


def weight_copies(n: int, k: int) -> int:
    """How many copies of an (n, k) fp16 matrix to cycle through: > 400 MB in all, several times the L2."""
    return max(2, -(-400 * 2 ** 20 // (n * k * 2)))


def time_us(fn, calls: int, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    return _events_ms(graph.replay, repeats) * 1e3 / calls


def bench_shape(n: int, k: int, batch: int, a) -> dict[str, float]:
    dtype = torch.float16
    copies = weight_copies(n, k)
    ws = [torch.randn(n, k, device="cuda", dtype=dtype) * k ** -0.5 for _ in range(copies)]
    x = torch.randn(batch, k, device="cuda", dtype=dtype)
    out = torch.empty(batch, n, device="cuda", dtype=dtype)
    it = {"i": 0}

    def next_w() -> torch.Tensor:
        it["i"] = (it["i"] + 1) % copies
        return ws[it["i"]]

    forms = {"cublas": lambda: torch.mm(x, next_w().t(), out=out),
             "tensor_cores": lambda: G.gemv(x, next_w(), out=out, algo="tensor_cores"),
             "mma_sync": lambda: G.gemv(x, next_w(), out=out, algo="mma_sync")}
    if batch <= G.MAX_BATCH:
        forms["cuda_cores"] = lambda: G.gemv(x, next_w(), out=out, algo="cuda_cores")
        forms["wgmma"] = lambda: G.gemv(x, next_w(), out=out, algo="wgmma")  # above 16: tensor_cores itself
    if G.staged_ok(x, ws[0]):  # back to back: each call's copies wait for the one before to leave its SM
        forms["staged"] = lambda: G.gemv(x, next_w(), out=out, algo="staged")
    if n <= G.SKINNY_MAX_N:  # the skinny form's cluster sizes
        for split in a.clusters:
            forms[f"cluster {split}"] = partial(lambda s: G.gemv(x, next_w(), out=out, algo="tensor_cores", split_k=s),
                                                split)
    return {name: time_us(fn, a.calls, a.repeats) for name, fn in forms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--calls", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--clusters", type=int, nargs="*", default=[4, 8, 16],
                    help="the skinny form's blocks per k cluster to time beside its default (n <= 256)")
    ap.add_argument("--shapes", nargs="*", help="only these matrices (e.g. x_proj)")
    a = ap.parse_args()
    torch.manual_seed(0)
    print("| model | matrix | n x k | batch | cuBLAS us | CUDA cores us | mma.sync us | wgmma us | tensor cores us "
          "| tensor cores GB/s | vs cuBLAS |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, name, n, k in SHAPES:
        if a.shapes and name not in a.shapes:
            continue
        for batch in a.batches:
            r = bench_shape(n, k, batch, a)
            moved = 2 * (n * k + batch * (n + k))
            cc, wg = (f"{r[form]:.1f}" if form in r else "-" for form in ("cuda_cores", "wgmma"))
            tc = r["tensor_cores"]
            print(f"| {model} | {name} | {n} x {k} | {batch} | {r['cublas']:.1f} | {cc} | {r['mma_sync']:.1f} | "
                  f"{wg} | {tc:.1f} | "
                  f"{moved / tc / 1e3:.0f} | {r['cublas'] / tc:.2f}x |", flush=True)
            if "staged" in r:  # alone (no kernel before it to overlap): what its shared-memory pipeline costs
                print(f"|  | {name}, staged form: {r['staged']:.1f} us, {moved / r['staged'] / 1e3:.0f} GB/s "
                      f"| | | | | | | | | |")
            clusters = [f"{key} {us:.1f} us" for key, us in r.items() if key.startswith("cluster")]
            if clusters:
                print(f"|  | {name}, skinny form's clusters: {', '.join(clusters)} | | | | | | | | | |")


if __name__ == "__main__":
    main()
