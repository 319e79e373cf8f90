"""Where Engine.generate's time goes on the native backend: Python (cProfile, by cumulative time) and the GPU
(torch.profiler, by kernel), for one generate call of `batch` random prompts on random weights. --timeline
instead splits one call's wall clock into the GPU time of its prefill calls, of its decode + sampling steps
and what is left (host work the GPU waits for, first-token sampling, the ramp), with CUDA events.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \
        python3 benchmarks/profile_generate.py --random-init mamba-1.4b --batch 64 --gen-len 50 [--timeline]
"""
import argparse
import cProfile
import collections
import io
import pstats
import time

import torch

from mamba_deploy.bench import engine_api
from mamba_deploy.native import random_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--gen-len", type=int, default=50)
    ap.add_argument("--timeline", action="store_true", help="GPU time of prefill / decode calls against the wall")
    a = ap.parse_args()
    api = engine_api(random_engine(a.random_init, max_batch=a.batch))
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, api.config.vocab_size, (a.batch, a.prompt_len), generator=gen).tolist()
    kwargs = dict(max_new_tokens=a.gen_len, temperature=0.7, top_p=0.9, seed=7)
    api.generate(prompts, **kwargs)  # warm-up: graphs, allocator
    torch.cuda.synchronize()
    if a.timeline:
        return timeline(api, prompts, kwargs)
    profiler = cProfile.Profile()
    profiler.enable()
    api.generate(prompts, **kwargs)
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    print(text.getvalue()[-6000:])
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        api.generate(prompts, **kwargs)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


def timeline(api, prompts, kwargs) -> None:
    """One generate call: per backend method, its calls' GPU time (events around each call on the stream)."""
    backend, spans, ordered, host = api.backend, collections.defaultdict(list), [], []

    def timed(name, fn):
        def run(*args, **kw):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            entered = time.perf_counter()
            start.record()
            out = fn(*args, **kw)
            end.record()
            host.append((entered, time.perf_counter()))
            spans[name].append((start, end))
            ordered.append((start, end))
            return out
        return run

    for name in ("prefill_slots", "decode_sample_slots"):
        setattr(backend, name, timed(name, getattr(backend, name)))
    torch.cuda.synchronize()
    wall = time.perf_counter()
    api.generate(prompts, **kwargs)
    torch.cuda.synchronize()
    done = time.perf_counter()
    wall_ms = (done - wall) * 1e3
    print(f"generate of {len(prompts)} prompts x {kwargs['max_new_tokens']} tokens: {wall_ms:.1f} ms wall")
    busy = 0.0
    for name, calls in spans.items():
        times = [s.elapsed_time(e) for s, e in calls]
        busy += sum(times)
        print(f"  {name}: {len(times)} calls, {sum(times):.1f} ms GPU (mean {sum(times) / len(times):.3f}, "
              f"max {max(times):.3f})")
    gaps = [end.elapsed_time(start) for (_, end), (start, _) in zip(ordered, ordered[1:])]
    print(f"  first call start -> last call end: {ordered[0][0].elapsed_time(ordered[-1][1]):.1f} ms; "
          f"GPU gaps between calls {sum(gaps):.1f} ms (largest {max(gaps, default=0):.2f}); outside the calls "
          f"{wall_ms - busy:.1f} ms of the wall")
    print(f"  host: generate() -> first call {(host[0][0] - wall) * 1e3:.1f} ms; last call returned -> generate() "
          f"returned {(done - host[-1][1]) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
