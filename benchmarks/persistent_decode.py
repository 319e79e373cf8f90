"""Batch-1 decode: the persistent decode (NativeEngine(persistent_decode=True): every layer in one cooperative launch)
against the engine's launch-per-kernel step, in one process on the same weights, and where the persistent kernel's
time goes (its %globaltimer stamps: gemv.h, md_mamba1_decode_params.trace, md_mamba2_decode_params.trace).

    python3 benchmarks/persistent_decode.py mamba-1.4b mamba-2.8b mamba2-1.3b mamba2-2.7b --rounds 2

Per model: ms per greedy graph step (bench_decode: prompt 32, 100 steps) per round, each variant with its batch-1
graph captured afresh, GB/s of the weights and state a step reads and writes; then one eagerly launched traced
step: per phase the median over layers of the slowest block's span (us), the barrier waits, and the producer's
total wait for free ring slots (a slot waits on the consumers: the stream is ahead).
"""
from __future__ import annotations

import argparse

import torch

from mamba_deploy.bench import bench_decode
from mamba_deploy.native import decode, random_engine

PHASES = {"mamba1": ["barrier 4 + norm", "in_proj", "barrier 1", "x_proj", "barrier 2", "step", "barrier 3",
                     "out_proj"],
          "mamba2": ["norm", "in_proj", "barrier 1", "step", "barrier 2", "gated norm", "out_proj", "barrier 3"]}


def timed(eng, persistent, rounds: int) -> list[float]:
    """ms a step per round, with eng.persistent set to `persistent` (None: the per-kernel step)."""
    eng.persistent = persistent
    eng.drop_graphs()  # the batch-1 graph is captured again with this variant
    return [bench_decode(eng, 1, 32, 100) for _ in range(rounds)]


def traced_spans(eng) -> tuple[list[float], float, float]:
    """One eager step with stamps: per phase the median over layers of the latest block's end minus the latest
    end of the phase before (us); the kernel's span (us); the producer's mean wait for free slots (us)."""
    stamps = eng.persistent.trace()
    state = eng.new_state(1)
    eng.prefill(torch.ones(1, 4, dtype=torch.int64, device=eng.device), state)
    eng.slot_ids[:1].copy_(torch.arange(1, device=eng.device))
    decode.step(eng, 1)
    torch.cuda.synchronize()
    eng.persistent.trace(False)
    n = eng.config.n_layer
    ends = stamps[:, :8 * n].view(-1, n, 8).max(0).values.double()  # (layer, phase): the last block's end
    start = stamps[:, 8 * n].min().double()
    before = torch.cat([torch.stack([start, *ends[:-1, 7]]).unsqueeze(1), ends[:, :7]], 1)
    spans = ((ends - before) / 1e3).median(0).values.tolist()
    producer_wait = stamps[:, 8 * n + 1].double().mean().item() / 1e3
    return spans, (ends[-1, 7] - start).item() / 1e3, producer_wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="Mamba1 / Mamba2 presets of random_init.PRESETS")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    print(f"{torch.cuda.get_device_name()}, {a.dtype} weights, float32 state, batch 1")
    for name in a.models:
        eng = random_engine(name, dtype, max_batch=1, persistent_decode=True)
        persistent = eng.persistent
        moved = eng.weight_bytes() + 2 * eng.state_bytes(1)
        base, mega = timed(eng, None, a.rounds), timed(eng, persistent, a.rounds)
        eng.persistent = persistent
        print(f"\n{name}: {moved / 1e9:.3f} GB a step")
        print("| variant | ms a step (rounds) | GB/s |\n| --- | --- | ---: |")
        for label, ms in (("per-kernel step", base), ("persistent decode", mega)):
            print(f"| {label} | {' / '.join(f'{m:.3f}' for m in ms)} | {moved / min(ms) / 1e6:,.0f} |")
        spans, total, waited = traced_spans(eng)
        print(f"traced eager step: kernel {total:.1f} us ({moved / total / 1e3:,.0f} GB/s), producer waited "
              f"{waited:.1f} us for free slots; per layer (median us of the slowest block):")
        print(" | ".join(f"{p} {us:.2f}" for p, us in zip(PHASES[eng.config.arch], spans)))
        if persistent.failed():
            raise SystemExit(f"{name}: a grid barrier of the persistent decode gave up waiting (outputs garbage)")
        del eng, persistent
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
