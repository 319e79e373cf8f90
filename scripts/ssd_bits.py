"""Mamba2's chunk scan outputs of one kernel library against another's, bit for bit: run `save` once per library
(MAMBA_DEPLOY_KERNEL_LIB), then `compare`. For a kernel change meant to keep every float operation (the SSD form
and the recurrence, fold on and off, both state dtypes, odd lengths and sizes).

    MAMBA_DEPLOY_KERNEL_LIB=old.so python3 scripts/ssd_bits.py save /tmp/old.pt
    MAMBA_DEPLOY_KERNEL_LIB=new.so python3 scripts/ssd_bits.py save /tmp/new.pt
    python3 scripts/ssd_bits.py compare /tmp/old.pt /tmp/new.pt     # exit 1 if a case differs
"""
import sys

import torch

CASES = [  # batch, seqlen, nheads, headdim, ngroups, dstate, dtype, state dtype ("model": x's), folded gated norm
    (1, 2048, 64, 64, 1, 128, torch.float16, torch.float32, False),
    (2, 1000, 8, 64, 2, 128, torch.bfloat16, torch.float32, False),
    (2, 1000, 8, 64, 2, 128, torch.float16, "model", False),
    (1, 300, 4, 64, 1, 128, torch.float16, torch.float32, True),
    (3, 129, 4, 32, 2, 16, torch.float16, torch.float32, False),
    (2, 257, 4, 48, 1, 64, torch.bfloat16, torch.float32, False),
    (1, 500, 4, 128, 2, 128, torch.float16, torch.float32, True),
    (1, 500, 4, 128, 1, 112, torch.bfloat16, torch.float32, False),
    (2, 400, 4, 64, 1, 256, torch.float16, torch.float32, False),
    (1, 4097, 8, 64, 1, 128, torch.bfloat16, torch.float32, False),
    (2, 31, 4, 64, 1, 128, torch.float16, torch.float32, False),  # the recurrence (under 32 steps)
]


def inputs(b, L, H, P, G, N, dtype, state_dtype):
    """x, z: (b, L, H, P); dt: (b, L, H); B, C: (b, L, G, N); initial_state: (b, H, P, N)."""
    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, device="cuda") * scale).to(dt)
    state = rnd(b, H, P, N, dt=torch.float32, scale=0.5)
    return dict(x=rnd(b, L, H, P), z=rnd(b, L, H, P), dt=rnd(b, L, H, scale=0.5), dt_bias=rnd(H, dt=torch.float32),
                A=-torch.empty(H, device="cuda").uniform_(1, 16), B=rnd(b, L, G, N), C=rnd(b, L, G, N),
                D=rnd(H, dt=torch.float32), dt_limit=(0.0, 0.08),
                initial_state=state.to(dtype) if state_dtype == "model" else state)


def run():
    from mamba_deploy.ops import cuda
    out = []
    for i, (b, L, H, P, G, N, dtype, state_dtype, fold) in enumerate(CASES):
        torch.manual_seed(i)
        kw = inputs(b, L, H, P, G, N, dtype, state_dtype)
        norm = {}
        if fold:
            norm = dict(norm_weight=(torch.randn(H * P, device="cuda") + 1).to(dtype),
                        norm_sumsq=torch.zeros(b, L, H, device="cuda"))
        y, state = cuda.chunk_scan(**kw, **norm)
        out.append([y.cpu(), state.cpu()] + ([norm["norm_sumsq"].cpu()] if fold else []))
    return out


def compare(path_a, path_b) -> int:
    """Prints each case; the number of cases that differ."""
    differ = 0
    for case, a, b in zip(CASES, torch.load(path_a), torch.load(path_b)):
        same = all(torch.equal(x, y) for x, y in zip(a, b))
        worst = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
        differ += not same
        print(case[:6], str(case[6]).removeprefix("torch."), case[7] if case[7] == "model" else "float32",
              "fold" if case[8] else "", "same bits" if same else f"DIFFER (max abs {worst:.3g})")
    print(f"{len(CASES) - differ} of {len(CASES)} cases the same bits")
    return differ


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("save", "compare"):
        sys.exit(__doc__.split("\n\n")[1])
    if sys.argv[1] == "save":
        torch.save(run(), sys.argv[2])
    elif compare(sys.argv[2], sys.argv[3]):
        sys.exit(1)
