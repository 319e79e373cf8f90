"""cuBLAS's forms of the decode projections at batch 17-64, alone: us a layer and TB/s of weights, 48 layers of
distinct weights in one CUDA graph (so the weights come from HBM, not L2), the kernels cuBLAS chose beside them.
out_proj (d_inner -> d_model) as torch.mm (fp16 out: cuBLAS's own split-K GEMM + reduce where it splits), with the
row norm after it as the engine runs it, and as torch.bmm over S k slices into float32 partial sums (what
decode.out_proj runs, the next norm adding them); in_proj the same without the norm.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. python3 benchmarks/cublas_forms.py 64 32
"""
import argparse

import torch

from mamba_deploy.native import gemv as G

LAYERS, REPLAYS = 48, 20
dev = torch.device("cuda")


def graph_us(fn) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    best = 1e9
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(REPLAYS):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1000 / REPLAYS / LAYERS)
    return best


def kernels(fn) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " + ".join(e.key[:60] for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


def probe(name: str, batch: int, n: int, k: int, norm: bool) -> None:
    ws = [torch.randn(n, k, device=dev, dtype=torch.half) * 0.02 for _ in range(LAYERS)]
    x = torch.randn(batch, k, device=dev, dtype=torch.half)
    out = torch.empty(batch, n, device=dev, dtype=torch.half)
    res = torch.randn(batch, n, device=dev, dtype=torch.float32)
    normed = torch.empty(batch, n, device=dev, dtype=torch.half)
    nw = torch.ones(n, device=dev, dtype=torch.half)
    mb = n * k * 2 / 1e6
    rows = []

    def mm():
        for w in ws:
            torch.mm(x, w.t(), out=out)
            if norm:
                G.row_norm(out, res, nw, 1e-5, out=normed, residual_out=res)
    label = "mm fp16" + (" + row_norm" if norm else "")
    rows.append((label, graph_us(mm), kernels(lambda: torch.mm(x, ws[0].t(), out=out))))
    if norm:
        rows.append(("row_norm alone", graph_us(lambda: [G.row_norm(out, res, nw, 1e-5, out=normed, residual_out=res)
                                                         for _ in ws]), ""))
    for S in (1, 2, 4, 8):
        if k % S:
            continue
        parts = torch.empty(S, batch, n, device=dev, dtype=torch.float32)
        xs = x.view(batch, S, k // S).transpose(0, 1)
        wviews = [w.view(n, S, k // S).permute(1, 2, 0) for w in ws]

        def bmm(wv=wviews, xs=xs, parts=parts):
            for w in wv:
                torch.bmm(xs, w, out_dtype=torch.float32, out=parts)
        rows.append((f"bmm S={S} -> fp32 parts", graph_us(bmm),
                     kernels(lambda: torch.bmm(xs, wviews[0], out_dtype=torch.float32, out=parts))))
    for label, us, ks in rows:
        print(f"| {name} b{batch} {n}x{k} | {label} | {us:.2f} | {mb / us:.2f} | {ks} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("batches", type=int, nargs="*", default=[64, 32])
    batches = ap.parse_args().batches
    print(torch.cuda.get_device_name(), torch.__version__)
    buf = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    us = graph_us(lambda: [dst.copy_(buf) for _ in range(1)]) * LAYERS
    print(f"copy 1 GiB: {us:.0f} us, {2 * (1 << 30) / us * 1e-6:.2f} TB/s (read + write)")
    print("| projection | form | us a layer | TB/s | kernels |\n| --- | --- | ---: | ---: | --- |")
    for batch in batches:
        for name, d_model, d_inner in (("mamba-1.4b", 2048, 4096), ("mamba-2.8b", 2560, 5120)):
            probe(name + " out_proj", batch, d_model, d_inner, norm=True)
            probe(name + " in_proj", batch, 2 * d_inner, d_model, norm=False)


if __name__ == "__main__":
    main()
