"""The outputs of one kernel library against another's, bit for bit, for a kernel change meant to keep every float
operation: run `save` once per library (MAMBA_DEPLOY_KERNEL_LIB, on the GPU), then `compare` (anywhere).

    MAMBA_DEPLOY_KERNEL_LIB=old.so python3 scripts/kernel_bits.py save /tmp/old.pt [--only ssd mamba1]
    MAMBA_DEPLOY_KERNEL_LIB=new.so python3 scripts/kernel_bits.py save /tmp/new.pt [--only ssd mamba1]
    python3 scripts/kernel_bits.py compare /tmp/old.pt /tmp/new.pt

Families (each case's seed is its index, so both saves see the same inputs):
  ssd     Mamba2's chunk scan: the SSD form and the recurrence (under 32 steps), the folded norm on and off, both
          state dtypes, odd lengths, headdim 32-128, dstate 16-256
  mamba1  Mamba1's selective scan: every form (split at 2 / 4 / 8 lanes, the walk), 16-bit and float32 x, dstate
          5 / 6 / 16, dt wide (softplus past 20), rows one element off alignment (single loads)
  conv    the prefill causal conv: rows strided (in_proj's output) and contiguous, a float32 / model-dtype / no
          initial state, 1-2,048 steps, silu on and off
  norm    row_norm: gated (strided z, 4 groups), residual add (float32 or model-dtype residual), the first layer
  gemv    the staged GEMV at batch 1-2 (the persistent decode's products repeat its sums): rows whole in shared
          memory or a refilled ring, k past one vector a thread or short of it, three dtypes, the conv epilogue
compare prints a line a case and a count, and exits 1 when a case differs (or a family or case is missing from
one file), 2 on a usage error (one line on stderr).
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys

import torch

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

SSD = [  # batch, seqlen, nheads, headdim, ngroups, dstate, dtype, state dtype ("model": x's), folded gated norm
    (1, 2048, 64, 64, 1, 128, F16, F32, False), (2, 1000, 8, 64, 2, 128, BF16, F32, False),
    (2, 1000, 8, 64, 2, 128, F16, "model", False), (1, 300, 4, 64, 1, 128, F16, F32, True),
    (3, 129, 4, 32, 2, 16, F16, F32, False), (2, 257, 4, 48, 1, 64, BF16, F32, False),
    (1, 500, 4, 128, 2, 128, F16, F32, True), (1, 500, 4, 128, 1, 112, BF16, F32, False),
    (2, 400, 4, 64, 1, 256, F16, F32, False), (1, 4097, 8, 64, 1, 128, BF16, F32, False),
    (2, 31, 4, 64, 1, 128, F16, F32, False),
]
MAMBA1 = [  # batch, seqlen, channels, dstate, dtype, state dtype, gate, dt scale, row offset
    (1, 2048, 4096, 16, F16, F32, True, 0.1, 0), (1, 2048, 4096, 16, F16, F32, True, 8.0, 0),
    (2, 777, 5120, 16, BF16, F32, True, 0.1, 0), (4, 1000, 4096, 16, F16, F16, True, 0.1, 0),
    (8, 203, 4096, 16, F32, F32, False, 0.1, 0), (3, 203, 4096, 6, BF16, F32, True, 4.0, 0),
    (2, 203, 4096, 16, F16, F32, True, 0.1, 1), (1, 203, 37, 5, F16, F32, True, 0.1, 0),
]
CONV = [(b, t, d, strided, state, silu, dt) for dt in (F16, BF16)  # batch, steps, channels, x strided, state, silu
        for (b, t, d, strided, state, silu) in [
            (1, 2048, 4352, True, None, True), (1, 2048, 4352, False, "f32", True),
            (1, 2048, 4352, True, "model", True),
            (4, 100, 4352, True, "f32", True), (2, 37, 8192, False, "model", False), (3, 5, 4096, True, "f32", True),
            (1, 1, 2560, False, "model", True), (8, 259, 4352, True, "model", True)]]
NORM = [(r, h, g, mode, dt, s) for dt in (F16, BF16)  # rows, hidden, group, mode, dtype, z strided
        for (r, h, g, mode, s) in [
            (2048, 4096, 4096, "gate", True), (333, 4096, 1024, "gate", True), (5, 5120, 5120, "gate", False),
            (2048, 2048, 2048, "res32", False), (2048, 2048, 2048, "first", False), (7, 2560, 2560, "res32", False),
            (64, 2048, 2048, "res16", False), (1, 768, 768, "res32", False)]]

GEMV = [(b, n, k, dt, conv) for dt in (F16, BF16, F32)  # batch, n, k, dtype, conv epilogue over rows 100-699
        for (b, n, k, conv) in [(1, 2048, 4096, False), (2, 2048, 4096, False), (1, 8192, 2048, True),
                                (2, 1001, 264, False), (1, 300, 4096, False), (2, 900, 512, True)]]


def rnd(*shape, dtype=F32, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def ssd_outputs(case) -> list:
    """x, z: (b, L, H, P); dt: (b, L, H); B, C: (b, L, G, N); initial_state: (b, H, P, N)."""
    from mamba_deploy.ops import cuda
    b, L, H, P, G, N, dtype, state_dtype, fold = case
    state = rnd(b, H, P, N, scale=0.5)
    kw = dict(x=rnd(b, L, H, P, dtype=dtype), z=rnd(b, L, H, P, dtype=dtype), dt=rnd(b, L, H, dtype=dtype, scale=0.5),
              dt_bias=rnd(H), A=-torch.empty(H, device="cuda").uniform_(1, 16), B=rnd(b, L, G, N, dtype=dtype),
              C=rnd(b, L, G, N, dtype=dtype), D=rnd(H), dt_limit=(0.0, 0.08),
              initial_state=state.to(dtype) if state_dtype == "model" else state)
    norm = {}
    if fold:
        norm = dict(norm_weight=(torch.randn(H * P, device="cuda") + 1).to(dtype),
                    norm_sumsq=torch.zeros(b, L, H, device="cuda"))
    y, state = cuda.chunk_scan(**kw, **norm)
    return [y, state] + ([norm["norm_sumsq"]] if fold else [])


def channel_last(t, offset: int):
    """(b, dim, L) values as a channel-last view whose rows start `offset` elements into a wider buffer."""
    buf = torch.empty(t.shape[0], t.shape[2], t.shape[1] + offset, dtype=t.dtype, device="cuda")[..., offset:]
    buf.copy_(t.transpose(1, 2))
    return buf.transpose(1, 2)


def mamba1_outputs(case) -> list:
    from mamba_deploy.ops import cuda
    b, L, dim, N, dtype, state_dtype, gate, dt_scale, off = case
    target = torch.empty(dim, device="cuda").uniform_(math.log(1e-3), math.log(1e-1)).exp()

    def rows(n, scale=1.0):
        return channel_last(rnd(b, n, L, dtype=dtype, scale=scale), off)

    kw = dict(u=rows(dim), delta=rows(dim, dt_scale), A=-torch.empty(dim, N, device="cuda").uniform_(0.5, 16),
              B=rows(N), C=rows(N), D=torch.randn(dim, device="cuda") if gate else None,
              z=rows(dim) if gate else None, delta_bias=target + torch.log(-torch.expm1(-target)),
              ssm_state=rnd(b, dim, N, dtype=state_dtype, scale=0.5))
    return list(cuda.selective_scan(**kw))


def conv_outputs(case) -> list:
    from mamba_deploy.ops import cuda
    b, t, d, strided, state, silu, dtype = case
    w, bias = rnd(d, 4, dtype=dtype, scale=0.3), rnd(d, dtype=dtype)
    x = rnd(b, t, 2 * d + 64, dtype=dtype, scale=2)[..., 40:40 + d] if strided else rnd(b, t, d, dtype=dtype, scale=2)
    conv_state = None if state is None else rnd(b, d, 3, dtype=F32 if state == "f32" else dtype)
    return list(cuda.causal_conv1d(x.transpose(1, 2), w, bias, conv_state, "silu" if silu else None))


def norm_outputs(case) -> list:
    from mamba_deploy.native import gemv
    r, h, g, mode, dtype, strided = case
    x, w = rnd(r, h, dtype=dtype, scale=3), (1 + 0.1 * torch.randn(h, device="cuda")).to(dtype)
    out = torch.empty(r, h, dtype=dtype, device="cuda")
    if mode == "gate":
        z = rnd(r, 2 * h + 64, dtype=dtype, scale=2)[:, :h] if strided else rnd(r, h, dtype=dtype)
        gemv.row_norm(x, z, w, 1e-5, out=out, gate=True, group_size=g)
        return [out]
    res = rnd(r, h, dtype=F32 if mode in ("res32", "first") else dtype)
    gemv.row_norm(x, None if mode == "first" else res, w, 1e-5, out=out, residual_out=res)
    return [out, res]


def gemv_outputs(case) -> list:
    from mamba_deploy.native import gemv
    b, n, k, dtype, conv = case
    x, w, bias = rnd(b, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    out = torch.empty(b, n, dtype=dtype, device="cuda")
    epilogue = dict(lo=100, weight=rnd(600, 4, dtype=dtype), bias=rnd(600, dtype=dtype),
                    state=rnd(b, 600, 3, dtype=dtype)) if conv else None
    gemv.gemv(x, w, bias, out=out, conv=epilogue, algo="staged")
    return [out] + ([epilogue["state"]] if conv else [])


FAMILIES = {"ssd": (SSD, ssd_outputs), "mamba1": (MAMBA1, mamba1_outputs), "conv": (CONV, conv_outputs),
            "norm": (NORM, norm_outputs), "gemv": (GEMV, gemv_outputs)}


def save(path: str, only: list[str]) -> None:
    """{family: [[tensor, ...] a case]} of this process's kernel library, on the CPU."""
    saved = {}
    for name in only:
        cases, outputs = FAMILIES[name]
        saved[name] = []
        for i, case in enumerate(cases):
            torch.manual_seed(i)
            saved[name].append([t.cpu() for t in outputs(case)])
    torch.save(saved, path + ".tmp")  # a file that exists is whole
    os.replace(path + ".tmp", path)


def describe(case) -> str:
    return " ".join(str(v).removeprefix("torch.") for v in case)


def compare(a: dict, b: dict, print_fn=print) -> int:
    """Prints a line a case and a count; the number of cases that differ or are missing from one side."""
    bad = total = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print_fn(f"{name}: only in {'the first' if name in a else 'the second'} file")
            bad += 1
            continue
        cases = FAMILIES[name][0] if name in FAMILIES else [()] * max(len(a[name]), len(b[name]))
        if len(a[name]) != len(b[name]):
            print_fn(f"{name}: {len(a[name])} cases against {len(b[name])}")
            bad += abs(len(a[name]) - len(b[name]))
        for case, xs, ys in zip(cases, a[name], b[name]):
            total += 1
            same = len(xs) == len(ys) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(xs, ys))
            worst = "" if same else " max|d| " + ", ".join(
                f"{(x.float() - y.float()).abs().max().item():.3g}" if x.shape == y.shape else "shape"
                for x, y in zip(xs, ys))
            bad += not same
            print_fn(f"{name:6s} {'same  ' if same else 'DIFFER'} {describe(case)}{worst}")
    print_fn(f"{bad} of {total} cases differ or are missing")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="this library's outputs (needs a GPU)")
    s.add_argument("path")
    s.add_argument("--only", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    c = sub.add_parser("compare", help="two saved files")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.command == "save":
        if not torch.cuda.is_available():
            print("kernel_bits: save needs a CUDA GPU", file=sys.stderr)
            return 2
        save(args.path, args.only)
        return 0
    try:
        a, b = (torch.load(p, weights_only=True) for p in (args.a, args.b))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__  # EOFError of an empty file: no message
        print(f"kernel_bits: cannot read a saved file: {detail}", file=sys.stderr)
        return 2
    if not all(isinstance(d, dict) for d in (a, b)):
        print("kernel_bits: not a file of `kernel_bits.py save`", file=sys.stderr)
        return 2
    return 1 if compare(a, b) else 0


if __name__ == "__main__":
    sys.exit(main())
