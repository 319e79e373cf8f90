"""`bench` on the CPU backends (onnxruntime, torch): prefill and decode tokens/s at a given thread count.

    mamba-deploy bench out/mamba-tiny-pydoc --backend onnxruntime --threads 2
    mamba-deploy bench --random-init mamba-130m --backend onnxruntime --threads 2 --quantize int8

Times are host wall clock (perf_counter), median of `repeats` runs after one warm-up run. Prefill: batch 1,
`prefill_len` random ids (never zeros) from a zero state. Decode: after a `prompt_len` prefill, `gen_len`
greedy steps (the argmax that feeds the next step included), per batch size. Bytes per step = the weights a
step reads (every initializer of decode.onnx except the embedding table when the LM head has its own
quantized copy: a step gathers one row of it) + the state read and written. `--random-init` exports a
random checkpoint of a published shape (random_init.PRESETS) into a temp folder first, with `dtype` and
`quantize` as export options.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

CPU_BACKENDS = ("onnxruntime", "torch")


def _median_s(fn: Callable[[], None], repeats: int) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=gen)


def cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores' from /proc/cpuinfo (the platform's name elsewhere)."""
    import platform

    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    return f"{models[0] if models else platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def step_bytes(info) -> int:
    """Bytes of weights one decode step reads (see the module docstring)."""
    from .export.weights import external_tensors

    tensors = external_tensors(info.folder, info.load_graph("decode"))
    own_head = any(t.name.startswith("lm_head.weight") for t in tensors)
    return sum(t.length for t in tensors if not (own_head and t.name == "backbone.embedding.weight"))


def load_cpu_backend(backend: str, info, threads: Optional[int]):
    """The `backend` of `info` on `threads` threads (torch: torch.set_num_threads, process-wide)."""
    from .runtime.backend import load_backend

    if backend == "torch":
        if threads:
            torch.set_num_threads(threads)
        return load_backend("torch", info)
    return load_backend(backend, info, threads=threads)


def bench_backend(be, batches: Sequence[int], prompt_len: int, gen_len: int, prefill_len: int,
                  repeats: int) -> tuple[float, list[dict]]:
    """(prefill seconds, rows {batch, decode_ms, tok_s, state_bytes}) of one loaded backend."""
    cfg = be.config
    ids = _ids(1, prefill_len, cfg.vocab_size, seed=2)
    prefill_s = _median_s(lambda: be.prefill(ids, be.new_state(1)), repeats)
    rows = []
    for batch in batches:
        state = be.new_state(batch)
        logits = be.prefill(_ids(batch, prompt_len, cfg.vocab_size, seed=1), state)
        first = logits[:, -1, :cfg.vocab_size].argmax(-1, keepdim=True)

        def run(state=state, first=first):
            nxt = first
            for _ in range(gen_len):
                nxt = be.decode(nxt, state)[:, -1, :cfg.vocab_size].argmax(-1, keepdim=True)
        seconds = _median_s(run, repeats) / gen_len
        state_bytes = sum(t.numel() * t.element_size() for t in state.conv + state.ssm)
        rows.append(dict(batch=batch, decode_ms=seconds * 1e3, tok_s=batch / seconds, state_bytes=state_bytes))
    return prefill_s, rows


def bench_cpu(path=None, backend: str = "onnxruntime", batches: Sequence[int] = (1,), prompt_len: int = 32,
              gen_len: int = 32, prefill_len: int = 512, random_init: Optional[str] = None, dtype: str = "float32",
              quantize: Optional[str] = None, threads: Optional[int] = None, repeats: int = 3,
              print_fn: Callable[[str], None] = print) -> list[dict]:
    """Benchmark an export folder (or `random_init`, exported to a temp folder) on a CPU backend; returns rows
    {model, backend, threads, batch, decode_ms, tok_s, gbps, prefill_ms, prefill_tok_s, prefill_len, weight_gb}
    and prints a table."""
    from .export import ExportOptions, export_model
    from .export.artifact import load_export
    from .random_init import make_random_checkpoint

    if backend not in CPU_BACKENDS:
        raise ValueError(f"bench_cpu measures {' or '.join(CPU_BACKENDS)}, got {backend!r}")
    if (path is None) == (random_init is None):
        raise ValueError("give either a folder or random_init")
    with tempfile.TemporaryDirectory(prefix="mamba-deploy-bench.") as tmp:
        if random_init is not None:
            ckpt = make_random_checkpoint(random_init, Path(tmp) / "ckpt", dtype=torch.float32)
            path = export_model(ckpt, Path(tmp) / "export", ExportOptions(dtype=dtype, quantize=quantize),
                                progress=False)
        info = load_export(path)
        be = load_cpu_backend(backend, info, threads)
        prefill_s, rows = bench_backend(be, batches, prompt_len, gen_len, prefill_len, repeats)
        wbytes = step_bytes(info)
    name = random_init or str(path)
    used_threads = threads or (torch.get_num_threads() if backend == "torch" else min(8, os.cpu_count() or 1))
    for r in rows:
        r.update(model=name, backend=backend, threads=used_threads, dtype=info.meta["dtype"],
                 quantize=info.meta.get("quantize"), gbps=(wbytes + 2 * r.pop("state_bytes")) / r["decode_ms"] / 1e6,
                 prefill_ms=prefill_s * 1e3, prefill_tok_s=prefill_len / prefill_s, prefill_len=prefill_len,
                 weight_gb=wbytes / 1e9)
    print_fn(format_cpu_table(rows, cpu_name()))
    return rows


def format_cpu_table(rows: list[dict], device: str) -> str:
    r0 = rows[0]
    weights = r0["dtype"] + (f" ({r0['quantize']} projections)" if r0.get("quantize") else "")
    lines = [f"{r0['model']} on {device}, {r0['backend']} with {r0['threads']} threads, {weights} weights, "
             f"weights read per step {r0['weight_gb']:.3f} GB, prefill {r0['prefill_len']} tokens: "
             f"{r0['prefill_ms']:.1f} ms ({r0['prefill_tok_s']:,.1f} tokens/s)",
             "| batch | decode ms/token | tokens/s | GB/s achieved | prefill tokens/s |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['batch']} | {r['decode_ms']:.2f} | {r['tok_s']:,.1f} | {r['gbps']:.1f} | {r['prefill_tok_s']:,.1f} |"
              for r in rows]
    return "\n".join(lines)
