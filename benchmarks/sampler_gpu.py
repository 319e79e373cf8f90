"""Microseconds per sampling step (T=0.7, top-p 0.9 unless given), captured in a CUDA graph: the torch form
(`SamplerState.sample_torch`: a stable sort, then passes over int64 and float64 copies of the rows) against
the kernel (`SamplerState.sample` on CUDA: a cluster of blocks per row), beside the stable sort alone; bytes
counted as the float16 logits read once.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. python3 benchmarks/sampler_gpu.py
"""
import argparse

import torch

from mamba_deploy.bench import graph_us
from mamba_deploy.runtime import sampler
from mamba_deploy.runtime.sampling import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7, help="0: greedy (the kernel's first pass alone)")
    a = ap.parse_args()
    sampler.KERNEL_MIN_ROWS = 1  # time the kernel at every batch size
    params = SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k)
    print("| batch | sort alone us | torch sampler us | kernel us | speed-up | kernel GB/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in a.batches:
        state = sampler.SamplerState(n, a.vocab, "cuda")
        for slot in range(n):
            state.assign(slot, params, slot + 1, [])
        logits = torch.randn(n, a.vocab, device="cuda", dtype=torch.float16)
        slots = torch.arange(n, device="cuda")
        sort_us = graph_us(lambda: torch.sort(logits.float(), dim=-1, descending=True, stable=True))
        torch_us = graph_us(lambda: state.sample_torch(logits, slots, a.vocab))
        kernel_us = graph_us(lambda: state.sample(logits, slots, a.vocab))
        gbs = n * a.vocab * 2 / (kernel_us * 1e-6) / 1e9
        print(f"| {n} | {sort_us:.1f} | {torch_us:.1f} | {kernel_us:.1f} | {torch_us / kernel_us:.2f}x | {gbs:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
