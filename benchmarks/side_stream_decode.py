"""A decode graph's step time before and after kernels have run on another CUDA stream in the process: the
effect behind prefill_split.AUTO_MAX_DECODE_BATCH (docs/performance.md, session 35). Each line: three windows of
200 greedy steps of the batch-B graph (ms a step), captured afresh unless it says otherwise.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/side_stream_decode.py --random-init mamba-1.4b --batch 64
"""
import argparse

import torch

from mamba_deploy.bench import DECODE_WARMUP, _events_ms, _prompt
from mamba_deploy.native import random_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    eng = random_engine(a.random_init, max_batch=a.batch, chunk_len=2048, max_seq_len=2048, prefill_split=1)
    vocab = eng.config.vocab_size
    prompt = _prompt(1, 2048, vocab, eng.device, seed=2)
    eng.prefill(prompt, eng.new_state(1))  # a whole (unsplit) prefill graph first, as the engine's default runs
    state = eng.new_state(a.batch)
    first = eng.prefill(_prompt(a.batch, 100, vocab, eng.device), state)[:, -1, :vocab].argmax(-1)

    def timed(label: str, recapture: bool = True) -> None:
        if recapture:
            eng.graphs.clear()
        run = eng.greedy_replay(state, first)
        run(DECODE_WARMUP)
        windows = [_events_ms(lambda: run(200), 1) / 200 for _ in range(3)]
        print(f"{label}: " + " ".join(f"{w:.3f}" for w in windows), flush=True)

    timed("only the default stream and the engine's capture stream so far")
    kept = eng.graphs[a.batch]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ones(1 << 20, device=eng.device).mul_(2)
    torch.cuda.current_stream().wait_stream(side)
    timed("after one eager kernel on a new stream")
    eng.graphs[a.batch] = kept
    timed("the first graph again", recapture=False)
    del state  # the pool's first slot for a batch-1 split prefill (prefill graphs run on the pool)
    eng.prefill_split = 2
    eng.prefill(prompt, eng.new_state(1))
    state = eng.new_state(a.batch)
    eng.prefill(_prompt(a.batch, 100, vocab, eng.device), state)
    eng.graphs[a.batch] = kept
    timed("the first graph, after a split prefill (its graph's side stream) and a batch prefill", recapture=False)
    timed("captured after that")


if __name__ == "__main__":
    main()
