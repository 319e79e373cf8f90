"""Decode ms per greedy graph step over combinations of the native engine's placement options, in one process on
the same weights, the graphs recaptured for each combination, the engine's defaults first; two rounds.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/decode_options.py --random-init mamba-1.4b --batches 8 16 32 \\
        --set staged_max_batch=8,16 --set dt_gemm_min_batch=8,64 --set staged_gemv=out_proj,in_proj+out_proj

--set OPTION=V1,V2,...: the values to try for one option (every combination of all --set options runs). Integer
options: staged_max_batch, tc_max_batch, x_proj_tc_max_batch, out_proj_tc_max_batch, dt_gemm_min_batch,
gemv_max_batch (each capped as NativeEngine caps it), wgmma_min_batch, out_proj_slices (0: off, up to
decode.OUT_PROJ_SLICES), fold_gated_norm and step_dt_tc (0 or 1).
Projection sets, names joined by '+', 'none' for the empty set: staged_gemv (of in_proj, x_proj, out_proj),
norm_in_gemv (of in_proj, out_proj, head). They decide which kernel form each projection takes per batch
(native/decode.py).
--env NAME=V1,V2,...: an environment switch of a kernel library read at each launch (a scratch build's
experiment), in the combinations like an option ('-' leaves it unset); the graphs are captured again under each.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

from mamba_deploy.bench import bench_decode
from mamba_deploy.native import decode as D, gemv as G, random_engine

LIMITS = {"staged_max_batch": G.STAGED_MAX_BATCH, "tc_max_batch": G.TC_MAX_BATCH,
          "x_proj_tc_max_batch": G.TC_MAX_BATCH, "out_proj_tc_max_batch": G.TC_MAX_BATCH, "dt_gemm_min_batch": None,
          "gemv_max_batch": G.MAX_BATCH, "fold_gated_norm": 1, "step_dt_tc": 1, "wgmma_min_batch": None,
          "out_proj_slices": D.OUT_PROJ_SLICES}
SETS = {"staged_gemv": D.STAGED_PROJECTIONS, "norm_in_gemv": D.NORMED_PROJECTIONS}


def parse_value(option: str, text: str):
    """One value of `option` as the engine holds it; raises ValueError with a one-line reason."""
    if option in SETS:
        names = frozenset() if text == "none" else frozenset(text.split("+"))
        if not names <= SETS[option]:
            raise ValueError(f"{option}: {text!r} names projections outside {sorted(SETS[option])}")
        return names
    if option not in LIMITS:
        raise ValueError(f"unknown option {option!r}; options: {', '.join([*LIMITS, *SETS])}")
    if not text.isdigit():
        raise ValueError(f"{option}: {text!r} is not a non-negative integer")
    value, limit = int(text), LIMITS[option]
    return value if limit is None else min(value, limit)


def parse_sets(specs: list[str]) -> dict[str, list]:
    """['option=v1,v2', ...] -> {option: [values]}."""
    out = {}
    for spec in specs:
        option, sep, values = spec.partition("=")
        if not sep or not values:
            raise ValueError(f"--set {spec!r}: expected OPTION=V1,V2,...")
        out[option] = [parse_value(option, v) for v in values.split(",")]
    return out


def parse_envs(specs: list[str]) -> dict[str, list[str]]:
    """['NAME=v1,v2', ...] -> {NAME: [values]} ('-': unset)."""
    out = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--env {spec!r}: expected NAME=V1,V2,...")
        out[name] = values.split(",")
    return out


def set_env(name: str, value: str) -> None:
    if value == "-":
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def shown(value) -> str:
    return "+".join(sorted(value)) or "none" if isinstance(value, frozenset) else str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="OPTION=V1,V2")
    ap.add_argument("--env", dest="envs", action="append", default=[], metavar="NAME=V1,V2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "model"],
                    help="the SSM state's (model: the weights' float16)")
    a = ap.parse_args()
    try:
        sets, envs = parse_sets(a.sets), parse_envs(a.envs)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    state_dtype = torch.float16 if a.state_dtype == "model" else torch.float32
    eng = random_engine(a.random_init, state_dtype=state_dtype, max_batch=max(a.batches))
    defaults = {**{option: getattr(eng, option) for option in sets},
                **{name: os.environ.get(name, "-") for name in envs}}
    combos = [dict(zip([*sets, *envs], combo)) for combo in itertools.product(*sets.values(), *envs.values())]
    variants = [defaults] + [v for v in combos if v != defaults]
    print(f"{a.random_init} on {torch.cuda.get_device_name()}, {a.state_dtype} state: ms per greedy graph step "
          f"(rounds: {a.rounds}); the first row is the engine's defaults")
    print("| " + " | ".join([*sets, *envs, *(f"b{b}" for b in a.batches)]) + " |")
    print("| " + " | ".join(["---"] * (len(sets) + len(envs) + len(a.batches))) + " |")
    for variant in variants:
        for option, value in variant.items():
            if option in envs:
                set_env(option, value)
            else:
                setattr(eng, option, value)
        eng.drop_graphs()
        times = [[bench_decode(eng, b, 32, 100, repeats=3) for _ in range(a.rounds)] for b in a.batches]
        cells = [" / ".join(f"{t:.3f}" for t in ts) for ts in times]
        print("| " + " | ".join([*(shown(v) for v in variant.values()), *cells]) + " |", flush=True)


if __name__ == "__main__":
    main()
