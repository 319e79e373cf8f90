"""Prefill time and extra GPU memory (peak minus what was allocated before) of the native engine, batch 1,
on random weights of a published shape; chunks of up to 2,048 tokens replay the prefill graph, unless --eager.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/prefill_memory.py --random-init mamba2-1.3b --lengths 2048 32768
"""
import argparse

import torch

from mamba_deploy.native import prefill_split as S, random_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba2-1.3b")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 32768])
    ap.add_argument("--prefill-split", type=int, default=None,
                    help="the engine's option (1: off; default: the engine's, 2 for Mamba1 at batch 1)")
    ap.add_argument("--chunk-len", type=int, default=2048,
                    help="the engine's option (chunks above prefill_graph_tokens, 2,048, run eagerly)")
    ap.add_argument("--eager", action="store_true",
                    help="prefill a state apart from the engine's pool: every chunk eager, no prefill graph")
    a = ap.parse_args()
    eng = random_engine(a.random_init, max_batch=1, prefill_split=a.prefill_split, chunk_len=a.chunk_len)
    # one state for every run: a second one, made while the first is alive, is not the engine's pool and its
    # prefill runs eagerly (every other length took that path by accident before, session 33); --eager asks for it
    pool_state = eng.new_state(1)
    state = eng.new_state(1) if a.eager else pool_state
    for length in a.lengths:
        ids = torch.randint(1, 1000, (1, length))
        eng.prefill(ids[:, :eng.chunk_len], state)  # warm-up: cuBLAS heuristics, allocator, a chunk's prefill graph
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        state.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        eng.prefill(ids, state)
        end.record()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before) / 2 ** 30
        reserved = torch.cuda.max_memory_reserved() / 2 ** 30  # the graphs' pools and per-stream caches included
        graphed, split = S.prompt_plan(eng, length, 1, eng.is_pool_view(state))  # a full chunk's path and parts
        path = "chunks" if graphed else "eager chunks"
        print(f"{a.random_init} prefill {length} ({path} of {a.chunk_len}, split {split}): "
              f"{start.elapsed_time(end):.1f} ms "
              f"(one run), extra memory {extra:.3f} GiB, {reserved:.3f} GiB reserved by the process")


if __name__ == "__main__":
    main()
