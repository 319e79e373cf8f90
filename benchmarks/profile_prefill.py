"""Where a native prefill call's time goes: its wall clock, the span of the GPU work (CUDA events around the
call: idle gaps included, so it tracks the wall when the host is the bound) and the GPU's busy time (the sum of
its kernels), then the Python functions that take the host time (cProfile, by own time) and the top kernels,
for prompts of batch x length on random weights of a published shape (--prefill-split / --fold-gated-norm: the
engine's prefill options; with a split the busy time is the kernels' sum, more than the span where parts overlap).

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/profile_prefill.py --random-init mamba-1.4b --shapes 1x100 64x100 1x2048
"""
import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

from mamba_deploy.bench import profile_kernels
from mamba_deploy.native import random_engine


def split_ms(eng, ids, repeats: int) -> tuple[float, float]:
    """(median wall ms, median GPU span ms) of eng.prefill(ids) from a zero state."""
    state = eng.new_state(ids.shape[0])
    walls, gpus = [], []
    for _ in range(repeats + 1):
        state.zero_()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.perf_counter()
        start.record()
        eng.prefill(ids, state)
        end.record()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t) * 1e3)
        gpus.append(start.elapsed_time(end))
    return statistics.median(walls[1:]), statistics.median(gpus[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--shapes", nargs="+", default=["1x100", "64x100", "1x2048"], help="BATCHxLENGTH")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill-graph-tokens", type=int, default=0)
    ap.add_argument("--prefill-split", type=int, default=None,
                    help="the engine's option (1: off; default: the engine's, 2 for Mamba1 at batch 1)")
    ap.add_argument("--fold-gated-norm", action="store_true", help="the engine's option")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes]
    eng = random_engine(a.random_init, max_batch=max(b for b, _ in shapes),
                        prefill_graph_tokens=a.prefill_graph_tokens, prefill_split=a.prefill_split,
                        fold_gated_norm=a.fold_gated_norm)
    print("| batch x tokens | wall ms | GPU span ms | GPU busy ms (kernels) | kernels |")
    print("| --- | ---: | ---: | ---: | ---: |")
    prompts = {}
    for b, n in shapes:
        ids = prompts[b, n] = torch.randint(1, eng.config.vocab_size, (b, n), device=eng.device)
        wall, span = split_ms(eng, ids, a.repeats)
        state = eng.new_state(b)
        kernels = profile_kernels(lambda: eng.prefill(ids, state), runs=3, top=10_000)
        busy, launches = sum(us for _, us, _ in kernels) / 1e3, sum(calls for _, _, calls in kernels)
        print(f"| {b} x {n} | {wall:.2f} | {span:.2f} | {busy:.2f} | {launches} |")
    for (b, n), ids in prompts.items():
        state = eng.new_state(b)
        profiler = cProfile.Profile()
        profiler.enable()
        eng.prefill(ids, state)
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        print(f"\nhost, {b} x {n} (cProfile, own time):\n" + text.getvalue()[-2500:])
        print(f"kernels, {b} x {n} (us per call of prefill, calls):")
        for name, us, calls in profile_kernels(lambda: eng.prefill(ids, state), runs=3, top=10):
            print(f"{us:9.1f} us {calls:4d}x  {name}")


if __name__ == "__main__":
    main()
