"""Mamba2's chunk scan (the recurrence of ssm_scan.cu and the SSD form of ssd_chunk.cu) against the float32
reference, over dtypes, odd lengths, head and state sizes, groups, views and the state carried between calls."""
import pytest
import torch
from cuda_checks import DTYPES, SEQS, check, mamba2_inputs, nan_like

from mamba_deploy.ops import chunk_scan_ref

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", SEQS)
@pytest.mark.parametrize("batch,headdim,ngroups,dstate", [(1, 64, 1, 128), (7, 32, 2, 16), (1, 128, 2, 128),
                                                          (7, 64, 1, 64)])
def test_chunk_scan(cuda, dtype, seqlen, batch, headdim, ngroups, dstate):
    kw = mamba2_inputs(batch, seqlen, 4, headdim, ngroups, dstate, dtype)
    y_ref, s_ref = chunk_scan_ref(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()})
    y, st = cuda.chunk_scan(**kw, out=nan_like(kw["x"].shape, dtype),
                            state_out=nan_like(kw["initial_state"].shape, torch.float32))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


def test_chunk_scan_state_carry_and_views(cuda):
    batch, seqlen, nheads, headdim, dstate = 2, 300, 4, 64, 128
    kw = mamba2_inputs(batch, seqlen, nheads, headdim, 1, dstate, torch.float32)
    # x, B, C as slices of one packed (batch, seqlen, ...) buffer, like an in_proj output split
    packed = torch.cat([kw["x"].flatten(2), kw["B"].flatten(2), kw["C"].flatten(2)], -1)
    d = nheads * headdim
    kw["x"] = packed[..., :d].unflatten(-1, (nheads, headdim))
    kw["B"] = packed[..., d:d + dstate].unflatten(-1, (1, dstate))
    kw["C"] = packed[..., d + dstate:].unflatten(-1, (1, dstate))
    y_all, s_all = cuda.chunk_scan(**kw)
    seq_keys = ("x", "dt", "B", "C", "z")
    y1, s1 = cuda.chunk_scan(**{k: (v[:, :123] if k in seq_keys else v) for k, v in kw.items()})
    rest = {k: (v[:, 123:] if k in seq_keys else v) for k, v in kw.items()}
    rest["initial_state"] = s1
    y2, s2 = cuda.chunk_scan(**rest)
    y_ref, s_ref = chunk_scan_ref(**kw)
    check("y one call", y_all, y_ref, torch.float32)
    check("y", torch.cat([y1, y2], 1), y_all, torch.float32)
    check("state", s2, s_all, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_chunk_scan_tensor_core_form_carries_state(cuda, dtype, state_dtype):
    """16-bit inputs of >= 256 steps take the SSD form (ssd_chunk.cu): packed views of one buffer, a sequence
    cut in two calls (the state carried between them, at 64-step chunk boundaries and not), against one call
    and the float32 reference; the state in place."""
    batch, nheads, headdim, ngroups, dstate = 2, 8, 64, 2, 128
    kw = mamba2_inputs(batch, 1000, nheads, headdim, ngroups, dstate, dtype)
    packed = torch.cat([kw["x"].flatten(2), kw["B"].flatten(2), kw["C"].flatten(2)], -1)
    d, gn = nheads * headdim, ngroups * dstate
    kw["x"] = packed[..., :d].unflatten(-1, (nheads, headdim))
    kw["B"] = packed[..., d:d + gn].unflatten(-1, (ngroups, dstate))
    kw["C"] = packed[..., d + gn:].unflatten(-1, (ngroups, dstate))
    if state_dtype == "model":
        kw["initial_state"] = kw["initial_state"].to(dtype)
    y_ref, s_ref = chunk_scan_ref(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()})
    y_all, s_all = cuda.chunk_scan(**kw)
    check("y one call", y_all, y_ref, dtype)
    check("state one call", s_all, s_ref, dtype)
    seq_keys = ("x", "dt", "B", "C", "z")
    for cut in (320, 300):
        state = kw["initial_state"].clone()
        ys = []
        for part in (slice(0, cut), slice(cut, None)):
            args = {k: (v[:, part] if k in seq_keys else v) for k, v in kw.items()}
            args["initial_state"] = state
            ys.append(cuda.chunk_scan(**args, state_out=state)[0])
        check(f"y cut at {cut}", torch.cat(ys, 1), y_ref, dtype)
        check(f"state cut at {cut}", state, s_ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqlen,nheads,headdim,ngroups,dstate", [
    (256, 8, 16, 8, 256),  # one chunk; the largest state (walked in 2 parts of 128 columns); 8 groups, one head each
    (257, 4, 128, 1, 16),  # a 1-step last chunk; one column tile: 3 of the 4 warps idle in the products
    (4097, 2, 32, 2, 48),  # 65 chunks; dstate 48: one part of 48 columns, the fourth warp's tile past it
    (300, 4, 64, 1, 112),  # dstate 112: a second part of 48 columns (the state in and out at column 64)
])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_chunk_scan_tensor_core_form_shapes(cuda, dtype, seqlen, nheads, headdim, ngroups, dstate, strided,
                                            state_dtype):
    """The SSD form (>= 256 steps, 16-bit inputs) over head and state sizes; `strided`: x and B with every other
    element of their last dimension (no 16-byte vectors: the element-wise loads of the chunk walk). A 16-bit state
    ("model") keeps the states entering the chunks in its dtype (ssd_chunk.cu): its rows past headdim and columns
    past dstate are zeros copied, not split."""
    kw = mamba2_inputs(2, seqlen, nheads, headdim, ngroups, dstate, dtype)
    sdt = torch.float32 if state_dtype == "float32" else dtype
    kw["initial_state"] = kw["initial_state"].to(sdt)
    if strided:
        for key in ("x", "B"):
            wide = torch.zeros(*kw[key].shape[:-1], 2 * kw[key].shape[-1], dtype=dtype, device="cuda")
            wide[..., ::2] = kw[key]
            kw[key] = wide[..., ::2]
            assert kw[key].stride(-1) == 2
    y_ref, s_ref = chunk_scan_ref(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()})
    y, st = cuda.chunk_scan(**kw, out=nan_like(kw["x"].shape, dtype),
                            state_out=nan_like(kw["initial_state"].shape, sdt))
    check("y", y, y_ref, dtype)
    check("state", st, s_ref, dtype)


@pytest.mark.parametrize("pool,fold", [(False, False), (True, False), (True, True)])
def test_chunk_scan_tensor_core_form_in_row_slices(cuda, pool, fold, monkeypatch):
    """A batch whose SSD scratch passes 512 MiB (9 rows of 2,048 steps x 64 heads x 64 x 128 float32 states) runs
    in slices of rows through a smaller scratch: each row's y and state equal those of the row alone, bit for bit
    (on a state pool too: the slices then index their rows through state_rows; with the folded gated norm, each
    slice's norm_sumsq rows too)."""
    from mamba_deploy.ops import _lib

    batch, seqlen, nheads, headdim, dstate = 9, 2048, 64, 64, 128
    kw = mamba2_inputs(batch, seqlen, nheads, headdim, 1, dstate, torch.float16)
    rows = torch.tensor([3, 11, 0, 7, 5, 9, 1, 12, 4], device="cuda") if pool else None
    states = torch.randn(13 if pool else batch, nheads, headdim, dstate, device="cuda") * 0.5
    kw["initial_state"] = states
    sizes = []
    real = _lib.scan_workspace_bytes
    monkeypatch.setattr(_lib, "scan_workspace_bytes", lambda p: sizes.append(real(p)) or sizes[-1])
    pooled = states.clone()
    weight = (torch.randn(nheads * headdim, device="cuda") + 1).half()

    def folded(sumsq):
        return dict(norm_weight=weight, norm_sumsq=sumsq) if fold else {}
    sumsq = torch.full((batch, seqlen, nheads), float("nan"), device="cuda")
    y, _ = cuda.chunk_scan(**{**kw, "initial_state": pooled}, state_out=pooled, state_rows=rows, **folded(sumsq))
    seq_keys = ("x", "dt", "B", "C", "z")
    for b in range(batch):
        r = int(rows[b]) if pool else b
        alone = {k: (v[b:b + 1] if k in seq_keys else v) for k, v in kw.items()}
        alone["initial_state"] = states[r:r + 1].clone()
        sumsq_b = torch.empty(1, seqlen, nheads, device="cuda")
        y_b, s_b = cuda.chunk_scan(**alone, **folded(sumsq_b))
        assert 0 < sizes[0] <= 512 << 20 < batch * sizes[-1], f"not in slices: scratch {sizes[0]}, a row {sizes[-1]}"
        assert torch.equal(y[b:b + 1], y_b), f"row {b}: y differs from the row alone"
        assert not fold or torch.equal(sumsq[b:b + 1], sumsq_b), f"row {b}: norm_sumsq differs from the row alone"
        assert torch.equal(pooled[r:r + 1], s_b), f"row {b}: state differs from the row alone"
