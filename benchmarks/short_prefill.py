"""Short-prompt prefill on the native engine, eager against prefill graphs (NativeEngine(prefill_graph_tokens)):
wall-clock ms per prefill call (host included: short prefills are bound by the host), the graph pieces, and
the weight bandwidth each form achieves (every piece reads all the weights once).

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/short_prefill.py --random-init mamba-1.4b --batches 1 4 16 --lengths 16 100 255
"""
import argparse
import statistics
import time

import torch

from mamba_deploy.native import random_engine
from mamba_deploy.native.prefill_graphs import pieces


def wall_ms(eng, prompt, first: int, repeats: int) -> float:
    """Median wall-clock ms of eng.prefill(prompt) into slots first.. (state zeroed before each; not timed)."""
    state = eng.slot_state(first, prompt.shape[0])
    times = []
    for _ in range(repeats + 1):  # the first run captures / warms up
        state.zero_()
        torch.cuda.synchronize()
        start = time.perf_counter()
        eng.prefill(prompt, state)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 100, 255])
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    top = max(a.lengths)
    eager = random_engine(a.random_init, max_batch=max(a.batches))
    graphed = random_engine(a.random_init, max_batch=max(a.batches), prefill_graph_tokens=top,
                            prefill_graph_batch=max(a.batches))
    wbytes = eager.weight_bytes()
    print(f"{a.random_init}, {torch.cuda.get_device_name()}, fp16, weights {wbytes / 1e9:.2f} GB")
    print("| batch | tokens | eager ms | graph ms | speedup | pieces | graph weight GB/s |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for b in a.batches:
        for n in a.lengths:
            prompt = torch.randint(1, eager.config.vocab_size, (b, n), device=eager.device)
            e, g = wall_ms(eager, prompt, 0, a.repeats), wall_ms(graphed, prompt, 0, a.repeats)
            cut = pieces(n)
            print(f"| {b} | {n} | {e:.2f} | {g:.2f} | {e / g:.2f}x | {'+'.join(map(str, cut))} | "
                  f"{len(cut) * wbytes / g / 1e6:,.0f} |")


if __name__ == "__main__":
    main()
