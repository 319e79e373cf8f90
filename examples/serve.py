"""Embed the runtime in an application: load an engine once, serve several prompts, stream tokens.

    python examples/serve.py out/mamba-tiny-pydoc --backend auto
"""
from __future__ import annotations

import argparse
import sys
import time

from mamba_deploy import Engine, MambaDeployError

REQUESTS = [
    ("The list of ", dict(temperature=0.0)),
    ("A class definition", dict(temperature=0.7, top_p=0.9, seed=1)),
    ("Exceptions", dict(temperature=0.8, top_k=40, repetition_penalty=1.1, seed=2)),
]


def serve(engine: Engine, max_new_tokens: int) -> None:
    for prompt, sampling in REQUESTS:
        start, pieces = time.perf_counter(), 0
        print(f"--- {prompt!r} {sampling}\n{prompt}", end="", flush=True)
        for piece in engine.generate(prompt, max_new_tokens=max_new_tokens, stream=True, **sampling):
            print(piece, end="", flush=True)
            pieces += 1
        print(f"\n--- {pieces} pieces in {time.perf_counter() - start:.2f} s\n")
    # A batch of prompts of different lengths: each row gets the tokens it would get alone.
    batch = engine.generate(["The list of ", "Exceptions are"], max_new_tokens=12, temperature=0.0)
    for prompt, text in zip(["The list of ", "Exceptions are"], batch):
        print(f"[batch] {prompt!r} -> {text!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    try:
        engine = Engine.load(args.export_dir, backend=args.backend)  # load once
        print(f"engine: {engine.backend.name} on {engine.backend.device}")
        serve(engine, args.max_new_tokens)
    except MambaDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
