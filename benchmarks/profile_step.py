"""Kernels of one native decode step with sampling in the graph (NativeEngine.decode_sample, what the
scheduler replays), and the Mamba1 step's two forms side by side (dt in the step kernel vs dt from a GEMM),
on random weights of a published shape.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/profile_step.py --random-init mamba-1.4b --batches 1 64 [--crossover 4 8 16 32 64]

--plain-launch: launch every kernel plainly, not programmatically. Under programmatic launch (the engine's
default) each kernel starts while the one before drains and its profiled time includes that wait, so the
per-kernel figures overlap and can sum to 2-3x the step (batch 8 and 16); plainly launched, each kernel's time
is its own and the figures sum to the plain step, which is slower than the default one by the overlap lost.
"""
import argparse

import torch

from mamba_deploy.bench import bench_decode, profile_kernels
from mamba_deploy.native import random_engine
from mamba_deploy.runtime.sampler import SamplerState
from mamba_deploy.runtime.sampling import SamplingParams


def profile_sampled_step(eng, batch: int) -> None:
    state = eng.new_state(batch)
    eng.prefill(torch.randint(1, 1000, (batch, 16)), state)
    sampler = SamplerState(batch, eng.config.vocab_size_padded, eng.device)
    for slot in range(batch):
        sampler.assign(slot, SamplingParams(0.7, top_p=0.9), seed=slot, prompt_ids=())
    slots = torch.arange(batch, device=eng.device)
    print(f"\nkernels of one sampled decode step, batch {batch} (us/step, calls/step):")
    for name, us, calls in profile_kernels(lambda: eng.decode_sample(slots, sampler, eng.config.vocab_size),
                                           runs=5, top=14):
        print(f"{us:9.1f} us {calls:4d}x  {name}")


def crossover(eng, batches) -> None:
    """ms per greedy graph step with the Mamba1 step computing dt itself vs dt from a cuBLAS GEMM."""
    print("| batch | dt in the step kernel ms | dt from a GEMM ms |\n| --- | --- | --- |")
    default = eng.dt_gemm_min_batch
    for b in batches:
        times = []
        for threshold in (10 ** 9, 1):
            eng.dt_gemm_min_batch, eng.graphs = threshold, {}
            times.append(bench_decode(eng, b, 32, 50, repeats=3))
        print(f"| {b} | {times[0]:.3f} | {times[1]:.3f} |")
    eng.dt_gemm_min_batch, eng.graphs = default, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--crossover", type=int, nargs="*", default=[])
    ap.add_argument("--plain-launch", action="store_true",
                    help="launch every kernel plainly: its profiled time is its own (the step is slower)")
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "model"],
                    help="the SSM state's dtype (model: the weights' 16-bit type)")
    a = ap.parse_args()
    eng = random_engine(a.random_init, max_batch=max(a.batches + a.crossover), programmatic_launch=not a.plain_launch,
                        state_dtype=torch.float32 if a.state_dtype == "float32" else torch.float16)
    print(f"{a.random_init}: kernels launched {'plainly' if a.plain_launch else 'programmatically'}")
    if a.crossover and eng.config.arch != "mamba2":
        crossover(eng, a.crossover)
    for b in a.batches:
        profile_sampled_step(eng, b)


if __name__ == "__main__":
    main()
