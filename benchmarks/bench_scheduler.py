"""Throughput of the continuous-batching Scheduler: onnxruntime with the demo model (CPU), or the native
engine on random weights of a published shape (GPU, --random-init).

    PYTHONPATH=. python benchmarks/bench_scheduler.py [--export OUT] [--requests 16] [--new-tokens 64]
    PYTHONPATH=. python benchmarks/bench_scheduler.py --random-init mamba-1.4b --requests 64 --new-tokens 128 \
        --stagger-ms 1 5 --repeats 3        # GPU: random prompts of 32-160 ids

Exports examples/models/mamba-tiny-pydoc to a temp folder (unless --export names one), then runs the
same requests (prompts of different lengths, seeded sampling, no stop ids, so every request makes
exactly --new-tokens tokens) four ways on one Scheduler: one after another, all submitted at once,
and arriving every --stagger-ms milliseconds (two spacings). Prints one table: wall time, tokens/s,
time relative to the sequential run (the target for 16 concurrent requests is <= 0.35) and the mean
request latency (submit -> last token); each the median of --repeats rounds over all scenarios.

--omp-wait-policy PASSIVE sets OMP_WAIT_POLICY before torch is imported: torch's OpenMP workers then
sleep instead of spinning after its parallel copies, which on a small loaded machine otherwise steal
the core ONNX Runtime computes on (see the table's header line for what was in effect).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The list of ", "Exceptions are", "A class definition", "def f(x):\n    return",
           "Dictionaries are mutable; they can be created by the", "The import statement", "Strings", "while True:"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, default=None, help="an export of the demo model (default: export now)")
    p.add_argument("--dtype", default=None, help="export dtype when exporting here (default: the checkpoint's)")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--stagger-ms", type=float, nargs=2, default=[5.0, 20.0])
    p.add_argument("--repeats", type=int, default=5, help="rounds of all scenarios; the table shows medians")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: the backend's)")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], default=None)
    p.add_argument("--random-init", metavar="NAME", default=None,
                   help="the native engine on random weights of this preset (a GPU) instead of the demo model")
    return p.parse_args()


def run_requests(sched, prompts: list[list[int]], new_tokens: int, arrival_s: float | None,
                 sequential: bool = False) -> tuple[float, list[float], int]:
    """-> (wall seconds, per-request latency seconds, tokens generated). Each request is submitted and
    waited for by its own thread (all at once, or every `arrival_s`), or one after another."""
    from mamba_deploy.runtime import SamplingParams

    params = SamplingParams(temperature=0.8, top_p=0.95)
    latencies, tokens = [0.0] * len(prompts), [0] * len(prompts)

    def request(k: int) -> None:
        t0 = time.perf_counter()
        handle = sched.submit(prompts[k], params, seed=k, max_new_tokens=new_tokens, output="ids")
        handle.result()
        latencies[k], tokens[k] = time.perf_counter() - t0, handle.completion_tokens

    start = time.perf_counter()
    if sequential:
        for k in range(len(prompts)):
            request(k)
    else:
        threads = []
        for k in range(len(prompts)):
            if arrival_s:
                time.sleep(max(0.0, start + k * arrival_s - time.perf_counter()))
            threads.append(threading.Thread(target=request, args=(k,)))
            threads[-1].start()
        for t in threads:
            t.join()
    return time.perf_counter() - start, latencies, sum(tokens)


def main() -> int:
    args = parse_args()
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # before torch's OpenMP runtime is loaded
    import torch

    from mamba_deploy.export import ExportOptions, export_model
    from mamba_deploy.runtime import Engine
    from mamba_deploy.runtime.scheduler import Scheduler

    with tempfile.TemporaryDirectory() as tmp:
        if args.random_init:
            from mamba_deploy.bench import engine_api
            from mamba_deploy.native import random_engine

            engine, folder = engine_api(random_engine(args.random_init, max_batch=args.requests)), args.random_init
            gen = torch.Generator().manual_seed(0)
            prompts = [torch.randint(1, engine.config.vocab_size, (32 + 32 * (k % 5),), generator=gen).tolist()
                       for k in range(args.requests)]
        else:
            folder = args.export
            if folder is None:
                folder = export_model(ROOT / "examples/models/mamba-tiny-pydoc", Path(tmp) / "demo",
                                      ExportOptions(dtype=args.dtype), progress=False)
            engine = Engine.load(folder, backend="onnxruntime", **({"threads": args.threads} if args.threads else {}))
            prompts = [engine.tokenizer.encode(PROMPTS[k % len(PROMPTS)]).ids for k in range(args.requests)]
        with Scheduler(engine.backend, engine.tokenizer, max_batch=args.requests) as sched:
            run_requests(sched, prompts[:2], 8, None)  # warm-up (ONNX Runtime's first runs per shape)
            scenarios = [("sequential", None, True), (f"{args.requests} concurrent", None, False)] + \
                [(f"arrive every {ms:g} ms", ms / 1000, False) for ms in args.stagger_ms]
            runs: list[list] = [[] for _ in scenarios]
            for _ in range(args.repeats):  # rounds over all scenarios, so that load drift hits each alike
                for (_, arrival, sequential), kept in zip(scenarios, runs):
                    kept.append(run_requests(sched, prompts, args.new_tokens, arrival, sequential))
            rows = [(name, sorted(kept)[len(kept) // 2]) for (name, _, _), kept in zip(scenarios, runs)]  # median
            seq = rows[0][1]
            ratios = sorted(c[0] / q[0] for q, c in zip(runs[0], runs[1]))
        print(f"# {engine.backend.name}, {Path(folder).name} ({engine.backend.dtype}), {args.requests} requests x "
              f"{args.new_tokens} tokens, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens; "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        print(f"| {'scenario':<22} | {'wall s':>7} | {'tok/s':>7} | {'x sequential':>12} | {'mean latency s':>14} |")
        print(f"|{'-' * 24}|{'-' * 9}|{'-' * 9}|{'-' * 14}|{'-' * 16}|")
        for name, (wall, latencies, tokens) in rows:
            print(f"| {name:<22} | {wall:7.2f} | {tokens / wall:7.0f} | {wall / seq[0]:12.2f} | "
                  f"{statistics.mean(latencies):14.3f} |")
        print(f"# concurrent / sequential time per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
