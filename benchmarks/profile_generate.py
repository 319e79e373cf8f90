"""Where Engine.generate's time goes on the native backend: Python (cProfile, by cumulative time) and the GPU
(torch.profiler, by kernel), for one generate call of `batch` random prompts on random weights. --timeline
instead splits one call's wall clock into the GPU time of its prefill calls, of its decode + sampling steps
and what is left (host work the GPU waits for, first-token sampling, the ramp), with CUDA events. --host
lists the host calls of the scheduler, its sampler and pool and the backend at the start and the end of one call
(start offset from generate(), duration, thread), and the wall time of a few calls after a batch-1 warm-up.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \
        python3 benchmarks/profile_generate.py --random-init mamba-1.4b --batch 64 --gen-len 50 [--timeline | --host]
"""
import argparse
import cProfile
import collections
import io
import pstats
import threading
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
    ap.add_argument("--host", action="store_true", help="host calls at the start and end of one generate call")
    a = ap.parse_args()
    api = engine_api(random_engine(a.random_init, max_batch=a.batch))
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, api.config.vocab_size, (a.batch, a.prompt_len), generator=gen).tolist()
    kwargs = dict(max_new_tokens=a.gen_len, temperature=0.7, top_p=0.9, seed=7)
    if a.host:  # before the warm-up below: it warms up as bench_generate does, on one row
        return host_calls(api, prompts, kwargs)
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


HOST_CALLS = {"scheduler": ("submit_many", "_start_loop", "_admit", "_prefill",
                            "_prefill_group", "_device_slots", "_send_home", "_deliver_launch"),
              "backend": ("prefill_slots", "decode_sample_slots"), "sampler": ("assign_many", "sample"),
              "pool": ("reset_many",)}


def host_calls(api, prompts, kwargs, head: int = 14, tail: int = 10) -> None:
    """Wall ms of generate calls after a one-row warm-up, then one call's first `head` and last `tail` host calls
    (HOST_CALLS, wrapped with perf_counter): when each started after generate() was called, how long it took."""
    api.generate(prompts[:1], **{**kwargs, "max_new_tokens": 4})
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        api.generate(prompts, **kwargs)
        torch.cuda.synchronize()
        print(f"generate: {(time.perf_counter() - start) * 1e3:.1f} ms")
    calls = []

    def wrap(owner, name):
        fn = getattr(owner, name)

        def run(*args, **kw):
            entered = time.perf_counter()
            out = fn(*args, **kw)
            calls.append((entered, time.perf_counter(), name, threading.current_thread().name))
            return out
        setattr(owner, name, run)

    sched = api.scheduler
    owners = {"scheduler": sched, "backend": api.backend, "sampler": sched.sampler, "pool": sched.pool}
    for kind, names in HOST_CALLS.items():
        for name in names:
            wrap(owners[kind], name)
    torch.cuda.synchronize()
    start = time.perf_counter()
    api.generate(prompts, **kwargs)
    returned = time.perf_counter()
    calls.sort()
    print(f"one call, {returned - start:.4f} s; start ms, duration ms, thread, call:")
    for entered, left, name, thread in calls[:head] + calls[-tail:]:
        print(f"  {(entered - start) * 1e3:8.2f} +{(left - entered) * 1e3:7.3f}  {thread[:12]:12s} {name}")
    print(f"  {(returned - start) * 1e3:8.2f}  generate() returned")


if __name__ == "__main__":
    main()
