"""`bench`: decode ms/token and tokens/s per batch size, prefill ms, peak memory, achieved GB/s.

    python -m mamba_deploy.bench --random-init mamba-1.4b            # random weights built on the GPU
    python -m mamba_deploy.bench out/mamba-1.4b --batches 1 16 64     # an export or checkpoint folder

Decode is timed as CUDA-graph replays (the step includes the greedy argmax that feeds the next step)
between CUDA events, after warm-up, median of `repeats` runs of `gen_len` steps, on real prompts
(random ids, never zeros) and the state they leave. Bytes per step = weights read once + the state
read and written; the floor is weight bytes / COPY_BW (device-to-device copy bandwidth measured on the
H200: about 4.3 TB/s). When mamba_ssm is importable, MambaLMHeadModel.generate(cg=True) runs on the same
weights in the same process and the ratio is printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable, Optional, Sequence

import torch

from .roofline import COPY_BW


def _events_ms(fn: Callable[[], None], repeats: int) -> float:
    """Median over `repeats` of fn()'s device time in ms (CUDA events)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


DECODE_REPEATS = 5  # timed runs of bench_decode, each gen_len steps, after DECODE_WARMUP steps
DECODE_WARMUP = 10


def graph_us(fn, replays: int = 50) -> float:
    """Mean microseconds per replay of `fn` captured once (after a warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def _prompt(batch: int, length: int, vocab: int, device, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=gen).to(device)


def bench_decode(eng, batch: int, prompt_len: int, gen_len: int, repeats: int = DECODE_REPEATS) -> float:
    """ms per decode step (one token per row) of the engine's CUDA graph for `batch`."""
    state = eng.new_state(batch)
    logits = eng.prefill(_prompt(batch, prompt_len, eng.config.vocab_size, eng.device), state)
    run = eng.greedy_replay(state, logits[:, -1, :eng.config.vocab_size].argmax(-1))
    run(DECODE_WARMUP)
    ms = _events_ms(lambda: run(gen_len), repeats) / gen_len
    del state
    return ms


def bench_sampled_step(eng, batch: int, prompt_len: int, gen_len: int, repeats: int = 3,
                       temperature: float = 0.7, top_p: float = 0.9) -> float:
    """ms per decode step with sampling in the graph (NativeEngine.decode_sample: what the scheduler replays),
    each step's tokens feeding the next on the device; no scheduler, no host copies."""
    from .runtime.sampler import SamplerState
    from .runtime.sampling import SamplingParams

    state = eng.new_state(batch)
    eng.prefill(_prompt(batch, prompt_len, eng.config.vocab_size, eng.device), state)
    sampler = SamplerState(batch, eng.config.vocab_size_padded, eng.device)
    for slot in range(batch):
        sampler.assign(slot, SamplingParams(temperature, top_p=top_p), seed=slot, prompt_ids=())
    slots = torch.arange(batch, device=eng.device)

    def run(steps: int) -> None:
        for _ in range(steps):
            eng.decode_sample(slots, sampler, eng.config.vocab_size)
    run(3)  # capture
    ms = _events_ms(lambda: run(gen_len), repeats) / gen_len
    del state
    return ms


def bench_prefill(eng, length: int, repeats: int = 5, batch: int = 1) -> float:
    """ms to prefill `length` tokens of `batch` rows from a zero state."""
    ids = _prompt(batch, length, eng.config.vocab_size, eng.device, seed=2)
    state = eng.new_state(batch)
    eng.prefill(ids, state)  # warm-up (cuBLAS heuristics, allocator)

    def run():
        state.zero_()
        eng.prefill(ids, state)
    return _events_ms(run, repeats)


def engine_api(eng):
    """The public Engine (what users call: Engine.generate) over an already-built native engine."""
    from pathlib import Path

    from .export.artifact import ExportInfo, dtype_name
    from .runtime import Engine
    from .runtime.backends.native import NativeBackend

    meta = {"format_version": 1, "dtype": dtype_name(eng.dtype), "state_dtype": dtype_name(eng.state_dtype),
            "logits": "last", **({"max_seq_len": eng.max_seq_len} if eng.max_seq_len else {})}
    info = ExportInfo(Path("<random weights: no export folder>"), eng.config, meta)
    return Engine(NativeBackend(info, engine=eng), tokenizer=None)


def bench_generate(api, batch: int, prompt_len: int, gen_len: int, repeats: int = 3,
                   temperature: float = 0.7, top_p: float = 0.9) -> float:
    """Generated tokens/s of Engine.generate end to end (prefill of `batch` random prompts included), median of
    `repeats` calls, host wall clock after a synchronize: what an application gets."""
    import time

    prompts = _prompt(batch, prompt_len, api.config.vocab_size, "cpu").tolist()
    kwargs = dict(max_new_tokens=gen_len, temperature=temperature, top_p=top_p, seed=7)
    # warm-up on every row (as a server warms up its batch sizes): the batch's graphs are captured and the allocator
    # holds its blocks before the timed calls, so the median is of three steady calls (a one-row warm-up left the
    # batch's capture inside the first timed call)
    api.generate(prompts, **{**kwargs, "max_new_tokens": 4})
    times = []
    sync = torch.cuda.synchronize if api.backend.device.type == "cuda" else (lambda: None)
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = api.generate(prompts, **kwargs)
        sync()
        times.append(time.perf_counter() - start)
        if sum(len(row) for row in out) != batch * gen_len:
            raise RuntimeError("generate stopped early: the bench counts batch * gen_len tokens")
    return batch * gen_len / statistics.median(times)


def profile_kernels(fn: Callable[[], None], runs: int = 5, top: int = 8) -> list[tuple[str, float, int]]:
    """Device time per kernel name of fn() (us per run, calls per run), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key[:70], e.device_time_total / runs, e.count // runs) for e in prof.key_averages()
            if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])[:top]


def sweep_gemv(shapes=((8192, 2048), (2048, 4096), (160, 4096), (8512, 2048), (50280, 2048)),
               batches=(1, 4, 16), dtype=torch.float16, print_fn=print) -> None:
    """GEMV (n, k) alone per batch and split_k: us and GB/s (weight bytes / time), beside cuBLAS, as CUDA-graph
    replays of 20 launches over 4 weight copies (so L2 does not hold the weights)."""
    from .native.gemv import gemv

    print_fn("| n x k | batch | split | gemv us | GB/s | cuBLAS us |")
    print_fn("| --- | --- | --- | --- | --- | --- |")
    for n, k in shapes:
        ws = [torch.randn(n, k, device="cuda").to(dtype) for _ in range(4)]
        for b in batches:
            x, out = torch.randn(b, k, device="cuda").to(dtype), torch.empty(b, n, device="cuda", dtype=dtype)
            results = {}
            for split in (0, 1, 2, 4, 8, "cublas"):
                def launch(split=split):
                    for i in range(20):
                        w = ws[i % 4]
                        if split == "cublas":
                            torch.mm(x, w.t(), out=out)
                        else:
                            gemv(x, w, out=out, split_k=split)
                launch()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    launch()
                results[split] = _events_ms(g.replay, 10) * 1000 / 20
            for split in (0, 1, 2, 4, 8):
                us = results[split]
                print_fn(f"| {n} x {k} | {b} | {split or 'auto'} | {us:.1f} | {n * k * 2 / us / 1e3:,.0f} | "
                         f"{results['cublas']:.1f} |")


def bench_mamba_ssm(eng, batch: int, prompt_len: int, gen_len: int) -> Optional[float]:
    """ms/token of mamba_ssm's MambaLMHeadModel.generate(cg=True) on the engine's weights; None if not installed
    or the model is Falcon-Mamba (mamba-ssm has no such model) or a hybrid (not mapped here)."""
    if eng.config.mixer_rms_eps is not None or eng.config.other_layers:
        return None
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except ImportError:
        return None
    from .config import to_mamba_ssm_config

    cfg = {k: v for k, v in to_mamba_ssm_config(eng.config).items() if k in MambaConfig.__dataclass_fields__}
    model = MambaLMHeadModel(MambaConfig(**cfg), device=eng.device, dtype=eng.dtype).eval()
    own = {"backbone.embedding.weight": eng.emb, "backbone.norm_f.weight": eng.norm_f[0]}
    for i, L in enumerate(eng.layers):
        p, m = f"backbone.layers.{i}.", f"backbone.layers.{i}.mixer."
        own.update({p + "norm.weight": L.norm_w, m + "in_proj.weight": L.in_w, m + "out_proj.weight": L.out_w,
                    m + "conv1d.weight": L.conv_w.unsqueeze(1), m + "conv1d.bias": L.conv_b,
                    m + "A_log": torch.log(-L.A), m + "D": L.D})
        if L.gnorm_w is not None:
            own.update({m + "dt_bias": L.dt_b, m + "norm.weight": L.gnorm_w})
        else:
            own.update({m + "x_proj.weight": L.x_w, m + "dt_proj.weight": L.dt_w, m + "dt_proj.bias": L.dt_b})
        if L.fc1_w is not None:
            own.update({p + "norm2.weight": L.norm2_w, p + "mlp.fc1.weight": L.fc1_w, p + "mlp.fc2.weight": L.fc2_w})
    sd = model.state_dict()
    for k, v in own.items():
        sd[k].copy_(v.reshape(sd[k].shape))
    ids = _prompt(batch, prompt_len, eng.config.vocab_size, eng.device)

    def gen(n):
        return lambda: model.generate(ids, max_length=prompt_len + n, cg=True, temperature=1.0, top_k=1)
    gen(gen_len)()  # warm-up + graph capture
    full, one = _events_ms(gen(gen_len), 3), _events_ms(gen(1), 3)
    return (full - one) / (gen_len - 1)


def bench(path=None, backend: str = "native", batches: Sequence[int] = (1, 16, 64), prompt_len: int = 100,
          gen_len: int = 200, prefill_len: int = 2048, random_init: Optional[str] = None, dtype: str = "float16",
          state_dtype: str = "float32", profile: bool = False, print_fn: Callable[[str], None] = print,
          generate: bool = False, engine_options: Optional[dict] = None) -> list[dict]:
    """Benchmark one model (a folder, or `random_init`: a preset name) on the native engine; returns rows
    {batch, decode_ms, tok_s, gbps, floor_ms, prefill_ms, peak_gb, mamba_ssm_ms} and prints a table.
    generate: also Engine.generate end to end (T=0.7, top-p 0.9) per batch: rows get generate_tok_s.
    engine_options: NativeEngine options to set (ENGINE_SWITCHES' names, e.g. {"prefill_split": 2}); the others
    keep the engine's defaults."""
    from .export.artifact import DTYPES
    from .native import load_engine, prefill_split, random_engine
    from .native.hybrid import kv_bytes

    if backend != "native":
        raise ValueError(f"bench measures the native backend (got {backend!r}); other backends: mamba-deploy verify")
    if (path is None) == (random_init is None):
        raise ValueError("give either a folder or random_init")
    torch.cuda.reset_peak_memory_stats()
    # a hybrid's KV caches hold the prefill bench's prompt and every timed decode step (bench_decode)
    kw = dict(max_batch=max(batches), chunk_len=max(2048, min(prefill_len, 8192)), **(engine_options or {}),
              max_seq_len=max(prefill_len, prompt_len + DECODE_WARMUP + (DECODE_REPEATS + 1) * gen_len))
    sdt = DTYPES[dtype] if state_dtype == "model" else DTYPES[state_dtype]
    eng = (random_engine(random_init, DTYPES[dtype], sdt, **kw) if random_init
           else load_engine(path, DTYPES[dtype], sdt, **kw))
    wbytes = eng.weight_bytes()
    name = random_init or str(path)
    prefill_ms = bench_prefill(eng, prefill_len)
    prefill_parts = prefill_split.prompt_plan(eng, prefill_len)[1]  # bench_prefill's state is the pool
    rows = []
    for b in batches:
        ms = bench_decode(eng, b, prompt_len, gen_len)
        ssm_ms = bench_mamba_ssm(eng, b, prompt_len, gen_len)
        seen = prompt_len + DECODE_WARMUP + DECODE_REPEATS * gen_len // 2  # a hybrid's mean cached positions timed
        moved = wbytes + 2 * eng.state_bytes(b) + kv_bytes(eng.static, b, seen)
        rows.append(dict(model=name, batch=b, decode_ms=ms, tok_s=b * 1000.0 / ms, gbps=moved / ms / 1e6,
                         floor_ms=moved / COPY_BW * 1e3, prefill_ms=prefill_ms, prefill_len=prefill_len,
                         prefill_parts=prefill_parts,
                         weight_gb=wbytes / 1e9, mamba_ssm_ms=ssm_ms))
    profile_lines = _profile_lines(eng, batches, prefill_len) if profile else []  # before generate: see there
    if generate:
        api = engine_api(eng)
        for r in rows:
            r["sampled_tok_s"] = r["batch"] * 1000.0 / bench_sampled_step(eng, r["batch"], prompt_len, gen_len)
            r["generate_tok_s"] = bench_generate(api, r["batch"], prompt_len, gen_len)
    if eng.persistent is not None and eng.persistent.failed():
        raise RuntimeError("a grid barrier of the persistent decode gave up waiting: its batch-1 figures are void")
    peak = torch.cuda.max_memory_allocated() / 2**30
    for r in rows:
        r["peak_gib"] = peak
    print_fn(format_table(rows, torch.cuda.get_device_name(), dtype, state_dtype))
    for line in profile_lines:
        print_fn(line)
    return rows


def _profile_lines(eng, batches: Sequence[int], prefill_len: int) -> list[str]:
    """Kernels of one decode step per batch and of one prefill, as lines. Runs before Engine.generate: its
    Engine keeps a state of the pool alive, and greedy_replay needs the pool's first slots."""
    lines = []
    for b in batches:
        state = eng.new_state(b)
        run = eng.greedy_replay(state, torch.ones(b, dtype=torch.int64, device=eng.device))
        lines.append(f"\nkernels of one decode step, batch {b} (us/step, calls/step):")
        lines += [f"  {us:9.1f}  {n:4d}  {k}" for k, us, n in profile_kernels(lambda: run(1), top=14)]
        del state
    ids, state = _prompt(1, prefill_len, eng.config.vocab_size, eng.device), eng.new_state(1)
    lines.append(f"\nkernels of one prefill of {prefill_len} tokens (us, calls):")
    lines += [f"  {us:9.1f}  {n:4d}  {k}"  # a hybrid's KV fills: state.zero_() each run
              for k, us, n in profile_kernels(lambda: eng.prefill(ids, state.zero_()), runs=2)]
    return lines


def format_table(rows: list[dict], device: str, dtype: str, state_dtype: str) -> str:
    r0 = rows[0]
    split = "" if r0.get("prefill_parts", 1) == 1 else f" (split in {r0['prefill_parts']} parts)"
    lines = [f"{r0['model']} on {device}, {dtype} weights, {state_dtype} state, weights {r0['weight_gb']:.3f} GB, "
             f"prefill {r0['prefill_len']} tokens{split}: {r0['prefill_ms']:.2f} ms, peak memory "
             f"{r0['peak_gib']:.2f} GiB",
             "| batch | decode ms/token | tokens/s | GB/s achieved | floor ms (bytes / 4.3 TB/s) | mamba_ssm ms | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ssm = r["mamba_ssm_ms"]
        ssm_s, ratio = ("not run (mamba_ssm not installed)", "-") if ssm is None else (f"{ssm:.3f}", f"{ssm / r['decode_ms']:.2f}x")
        lines.append(f"| {r['batch']} | {r['decode_ms']:.3f} | {r['tok_s']:,.0f} | {r['gbps']:,.0f} | "
                     f"{r['floor_ms']:.3f} | {ssm_s} | {ratio} |")
    if "generate_tok_s" in r0:
        lines += ["", "Engine.generate end to end (random prompts of the decode rows' length, T=0.7, top-p 0.9):",
                  "| batch | generate tokens/s | graph step + sampling tokens/s | bare graph step tokens/s | "
                  "generate / graph |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['batch']} | {r['generate_tok_s']:,.0f} | {r['sampled_tok_s']:,.0f} | {r['tok_s']:,.0f} | "
                  f"{r['generate_tok_s'] / r['tok_s']:.0%} |"
                  for r in rows]
    return "\n".join(lines)


# the engine's options `python3 -m mamba_deploy.bench` sets: flag, argparse keywords (NativeEngine's name is the
# flag's); one left out (None, or False for a switch) keeps the engine's default
ENGINE_SWITCHES = (
    ("--prefill-graph-tokens", dict(type=int, help="prefill chunks of at most this many tokens as CUDA-graph "
                                                   "replays (0: eager; default: the engine's)")),
    ("--tc-max-batch", dict(type=int, help="decode projections on our tensor-core kernels up to this batch "
                                           "(default: the engine's)")),
    ("--wgmma-min-batch", dict(type=int, help="those tensor-core projections in their wgmma form from this batch on "
                                              "(default: the engine's, 17)")),
    ("--persistent-decode", dict(action="store_true", help="batch-1 decode steps as one launch for all layers (the "
                                                           "engine's option)")),
    ("--prefill-split", dict(type=int, help="prefill chunks as a wavefront of up to this many parts on as many "
                                            "streams (the engine's option; default: the engine's)")),
    ("--fold-gated-norm", dict(action="store_true", help="Mamba2: the gated norm folded into the chunk scan and the "
                                                         "decode step (the engine's option)")),
    ("--tf32", dict(action="store_true", help="--dtype float32: the cuBLAS products in TF32 (the engine's option)")),
    ("--step-dt-tc", dict(action="store_true", help="Mamba1, 16-bit: dt_proj on tensor cores inside the decode "
                                                    "step (the engine's option)")),
)


def _engine_options(args: argparse.Namespace) -> dict:
    """The ENGINE_SWITCHES given on the command line, by NativeEngine's names."""
    given = {name: getattr(args, name) for name in (flag[2:].replace("-", "_") for flag, _ in ENGINE_SWITCHES)}
    return {name: value for name, value in given.items() if value is not None and value is not False}  # 0 is given


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .errors import MambaDeployError
    from .export.artifact import DTYPES
    from .native.loading import require_native

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--random-init", metavar="NAME", help="preset of random_init.PRESETS, built on the GPU")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--gen-len", type=int, default=200)
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=list(DTYPES))
    ap.add_argument("--state-dtype", default="float32", choices=[*DTYPES, "model"])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--generate", action="store_true", help="also time Engine.generate end to end")
    ap.add_argument("--gemv-sweep", action="store_true", help="time the GEMV kernel alone and exit")
    for flag, kwargs in ENGINE_SWITCHES:
        ap.add_argument(flag, **kwargs)
    a = ap.parse_args(argv)
    try:  # a user's mistake (no GPU, a bad folder or option) is one line and exit 1, as in `mamba-deploy bench`
        require_native()
        if a.gemv_sweep:
            sweep_gemv()
            return
        bench(a.path, "native", a.batches, a.prompt_len, a.gen_len, a.prefill_len, a.random_init, a.dtype,
              a.state_dtype, a.profile, generate=a.generate, engine_options=_engine_options(a))
    except (MambaDeployError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
