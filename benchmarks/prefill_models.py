"""Prefill time (batch 1 unless --batch) of several presets in one process (random weights, the engine's default
prefill graphs): `bench`'s prefill measurement without its decode runs, for A/B of a kernel library across models.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/prefill_models.py --tokens 2048 mamba2-1.3b mamba2-2.7b mamba-1.4b mamba-2.8b

Each model: `--rounds` medians of `--repeats` prefills from a zero state (ms), and TFLOP/s of the layers'
projections (2 FLOP a weight a token; the LM head runs on the last token only, the scans' own work is not counted).
`--ab-env NAME=VALUE` (an environment switch read at each launch or prefill) or `--ab-option NAME=VALUE` (an
engine attribute read at each prefill, e.g. prefill_split=2 or fold_gated_norm=1; repeatable): each round runs
the default, then each variant, the prefill graphs recaptured for each: a row per variant, same engine and weights.
"""
from __future__ import annotations

import argparse
import contextlib
import os

import torch

from mamba_deploy.bench import bench_prefill
from mamba_deploy.export.artifact import DTYPES
from mamba_deploy.native import random_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="random_init presets")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float16", choices=list(DTYPES), help="the weights' (e.g. float32 with "
                    "--ab-option tf32=1)")
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "model"],
                    help="the SSM state's (model: the weights' dtype)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--eager", action="store_true", help="no prefill graphs (e.g. under ncu)")
    ap.add_argument("--ab-env", metavar="NAME=VALUE", help="A/B: each round without, then with this variable set")
    ap.add_argument("--ab-option", action="append", default=[], metavar="NAME=VALUE",
                    help="A/B: each round also with this engine attribute (an integer) set; repeatable")
    a = ap.parse_args()
    options = [option.split("=", 1) for option in a.ab_option]
    if any(len(o) != 2 or not o[1].isdigit() for o in options):
        raise SystemExit("error: --ab-option takes NAME=INTEGER")
    variants = [None] + ([tuple(a.ab_env.split("=", 1))] if a.ab_env else []) + \
        [("option", name, int(value)) for name, value in options]
    state_dtype = torch.float32 if a.state_dtype == "float32" else DTYPES[a.dtype]
    print(f"batch {a.batch}, {a.dtype} weights, {state_dtype} state")
    print("| model | variant | tokens | ms (each round's median) | weights GB | TFLOP/s (best round) |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for name in a.models:
        eng = random_engine(name, DTYPES[a.dtype], state_dtype, max_batch=a.batch,
                            **({"prefill_graph_tokens": 0} if a.eager else {}))
        ms: dict = {v: [] for v in variants}
        for _ in range(a.rounds):
            for v in variants:
                with variant_set(eng, v):
                    eng.prefill_graphs.graphs.clear()  # recaptured under this variant
                    ms[v].append(bench_prefill(eng, a.tokens, repeats=a.repeats, batch=a.batch))
        weight_bytes = eng.weight_bytes()
        layer_weights = weight_bytes // eng.head.element_size() - eng.head.numel()  # the head: last token only
        for v in variants:
            tflops = 2 * layer_weights * a.batch * a.tokens / (min(ms[v]) * 1e-3) / 1e12
            print(f"| {name} | {'='.join(map(str, v[-2:])) if v else 'default'} | {a.tokens} | "
                  f"{' / '.join(f'{m:.2f}' for m in ms[v])} | {weight_bytes / 1e9:.3f} | {tflops:.0f} |")
        del eng
        torch.cuda.empty_cache()


@contextlib.contextmanager
def variant_set(eng, variant):
    """A variant of main's A/B (None, (NAME, VALUE) of the environment, or ("option", NAME, VALUE): an engine
    attribute) in force inside the block, then undone."""
    if variant is None or variant[0] != "option":
        with env_set(variant):
            yield
        return
    _, name, value = variant
    if not hasattr(eng, name):
        raise SystemExit(f"error: the engine has no option {name!r}")
    before = getattr(eng, name)
    kind = int if before is None else type(before)  # None: an option the engine decides (prefill_split)
    setattr(eng, name, kind(value))
    try:
        yield
    finally:
        setattr(eng, name, before)


@contextlib.contextmanager
def env_set(variable):
    """`variable` (name, value) set in the environment inside the block (None: nothing), then restored."""
    if variable is None:
        yield
        return
    name, value = variable
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


if __name__ == "__main__":
    main()
