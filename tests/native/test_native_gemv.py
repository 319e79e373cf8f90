"""plugins/kernels/gemv.cu, mamba1_step.cu and mamba2_step.cu against torch: GEMV (batch 1..16, odd sizes, conv
epilogue), the fused Mamba1 step and the Mamba2 step. Outputs are poisoned with NaN before every launch."""
import pytest
import torch
import torch.nn.functional as F

from mamba_deploy.ops import causal_conv1d_update_ref, selective_state_update_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 13, 16])
@pytest.mark.parametrize("n,k", [(160, 4096), (1000, 2048), (37, 72), (129, 333), (7, 1), (8192, 512)])
def test_gemv_vs_matmul(rel_err, G, dtype, batch, n, k):
    x, w, b = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    ref = x.double() @ w.double().T + b.double()
    for split in (0, 1, 8):
        out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
        G.gemv(x, w, b, out=out, split_k=split)
        assert torch.isfinite(out.float()).all()
        assert rel_err(out, ref) <= TOL[dtype], f"split {split}"


def test_gemv_strided_rows(rel_err, G):
    """x and out as column slices of wider buffers (x_proj reads xz[:, :d_inner])."""
    xz, w = rnd(5, 3 * 256, dtype=torch.float16), rnd(48, 256, dtype=torch.float16)
    big = torch.full((5, 100), float("nan"), dtype=torch.float16, device="cuda")
    G.gemv(xz[:, 256:512], w, out=big[:, 40:88])
    assert rel_err(big[:, 40:88], xz[:, 256:512].double() @ w.double().T) <= 2e-3
    assert big[:, :40].isnan().all() and big[:, 88:].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 6, 16])
@pytest.mark.parametrize("width", [2, 4])
def test_gemv_conv_epilogue(rel_err, G, dtype, batch, width):
    n, k, lo, dim = 700, 128, 200, 300
    x, w = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5)
    cw, cb = rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    state = rnd(batch, dim, width - 1, dtype=dtype)
    proj = (x.float() @ w.float().T).to(dtype)
    y_ref, s_ref = causal_conv1d_update_ref(proj[:, lo:lo + dim].float(), cw.float(), cb.float(), state.float(), "silu")
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, out=out, conv=dict(lo=lo, weight=cw, bias=cb, state=state))
    assert rel_err(out[:, lo:lo + dim], y_ref) <= 3 * TOL[dtype]
    assert rel_err(state, s_ref) <= 3 * TOL[dtype]
    assert rel_err(out[:, :lo], proj[:, :lo]) <= TOL[dtype]
    assert rel_err(out[:, lo + dim:], proj[:, lo + dim:]) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("n,k", [(2048, 4096), (8192, 2048), (2560, 5120), (7, 8), (1001, 264), (300, 8192)])
def test_gemv_staged(rel_err, G, dtype, batch, n, k):
    """The staged form: a block's rows whole in shared memory (2048 x 4096), a ring of rows refilled as the
    warps finish them (8192 x 2048 and 300 x 8192: more rows than fit), partial blocks and row groups, k not a
    multiple of the block's 256 vectors; float32 x holds at most 4,096 of k."""
    x, w, b = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    if k * x.element_size() > 16 * 1024:
        with pytest.raises(RuntimeError, match="staged form"):
            G.gemv(x, w, b, out=out, algo="staged")
        return
    G.gemv(x, w, b, out=out, algo="staged")
    assert rel_err(out, x.double() @ w.double().T + b.double()) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [3, 8, 9, 16])
@pytest.mark.parametrize("n,k", [(2048, 4096), (3990, 1000), (7, 8), (1001, 264), (130, 6144)])
def test_gemv_staged_tensor_cores(rel_err, G, dtype, batch, n, k):
    """Batch 3-16 on tensor cores: a block's 16-row tiles whole in shared memory (one tile: 2048 x 4096; two,
    the last block partial: 3990 x 1000; one partial tile: 7 x 8), k not a multiple of a 32-step (264, 1000),
    12 KB rows (130 x 6144); one n8 tile of batch rows or two, rows of x strided."""
    xs, w, b = rnd(batch, k + 24, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    x = xs[:, 8:8 + k]
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, b, out=out, algo="staged")
    assert rel_err(out, x.double() @ w.double().T + b.double()) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 5])
def test_gemv_staged_conv_epilogue_and_strided_rows(rel_err, G, dtype, batch):
    """x a column slice of a wider buffer (in_proj's output row), the conv epilogue on rows of a slot pool."""
    n, k, lo, dim, width = 900, 512, 100, 600, 4
    xz, w = rnd(batch, 3 * k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5)
    x = xz[:, k:2 * k]
    cw, cb, pool = rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype), rnd(9, dim, width - 1, dtype=dtype)
    rows = torch.tensor([3, 0, 7, 5, 1][:batch], device="cuda")
    proj = (x.float() @ w.float().T).to(dtype)
    y_ref, s_ref = causal_conv1d_update_ref(proj[:, lo:lo + dim].float(), cw.float(), cb.float(),
                                            pool[rows].float(), "silu")
    before = pool.clone()
    untouched = [i for i in range(9) if i not in rows.tolist()]
    big = torch.full((batch, n + 40), float("nan"), dtype=dtype, device="cuda")
    out = big[:, 16:16 + n]
    G.gemv(x, w, out=out, conv=dict(lo=lo, weight=cw, bias=cb, state=pool, state_rows=rows), algo="staged")
    assert rel_err(out[:, lo:lo + dim], y_ref) <= 3 * TOL[dtype]
    assert rel_err(pool[rows], s_ref) <= 3 * TOL[dtype]
    assert torch.equal(pool[untouched], before[untouched])
    assert rel_err(out[:, :lo], proj[:, :lo]) <= TOL[dtype]
    assert rel_err(out[:, lo + dim:], proj[:, lo + dim:]) <= TOL[dtype]
    assert big[:, :16].isnan().all() and big[:, 16 + n:].isnan().all()


def test_gemv_staged_refuses_what_it_cannot_take(G):
    """Batch 17; float32 at batch 3; more rows a block than its two tiles at batch 3 (8192 x 2048: 63 rows over
    132 multiprocessors); the norm prologue: a clear error, nothing launched."""
    x, w = rnd(17, 256, dtype=torch.float16), rnd(64, 256, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="staged form"):
        G.gemv(x, w, algo="staged")
    with pytest.raises(RuntimeError, match="staged form"):
        G.gemv(x[:3].float(), w.float(), algo="staged")
    with pytest.raises(RuntimeError, match="staged form"):
        G.gemv(rnd(3, 2048, dtype=torch.float16), rnd(8192, 2048, dtype=torch.float16), algo="staged")
    res = torch.zeros(1, 256, dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="staged form"):
        G.gemv(x[:1], w, algo="staged", norm=dict(weight=torch.ones(256, dtype=torch.float16, device="cuda"),
                                                   eps=1e-5, residual_out=res))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch,dim,rank,dstate", [
    (1, 4096, 128, 16), (7, 300, 20, 16), (3, 128, 8, 5), (8, 4096, 128, 16), (9, 1000, 160, 16),
    (64, 4096, 128, 16), (64, 5120, 160, 16), (13, 264, 1024, 16), (5, 72, 3, 7)])  # 128 / 160: mamba-1.4b / 2.8b
@pytest.mark.parametrize("dt_given", [False, True], ids=["fused-dt", "dt-given"])
def test_mamba1_step(rel_err, G, dtype, state_dtype, batch, dim, rank, dstate, dt_given):
    sdt = torch.float32 if state_dtype == "float32" else dtype
    xz = rnd(batch, 2 * dim, dtype=dtype)
    x, z = xz[:, :dim], xz[:, dim:]
    xdbl = rnd(batch, rank + 2 * dstate, dtype=dtype)
    wdt = rnd(dim, rank, dtype=dtype, scale=rank ** -0.5)
    dt_bias, D = rnd(dim, scale=0.5) - 4.0, rnd(dim)
    A = -torch.exp(rnd(dim, dstate, scale=0.5))
    state = rnd(batch, dim, dstate).to(sdt)
    # dt as the kernel gets it: float32 math in the fused form, the caller's GEMM in the model dtype when given
    dt = F.linear(xdbl[:, :rank], wdt).float() if dt_given else F.linear(xdbl[:, :rank].float(), wdt.float())
    y_ref, s_ref = selective_state_update_ref(state.float(), x.float(), dt, A, xdbl[:, rank:rank + dstate].float(),
                                              xdbl[:, rank + dstate:].float(), D, z.float(), dt_bias, True)
    y = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    if dt_given:  # the large-batch form: dt from the caller's GEMM (in the model dtype, as prefill computes it)
        G.mamba1_step(x, z, xdbl, None, dt_bias, A, D, state, out=y, dt=F.linear(xdbl[:, :rank], wdt))
    else:
        G.mamba1_step(x, z, xdbl, G.pack_dt_proj(wdt), dt_bias, A, D, state, out=y)
    assert rel_err(y, y_ref) <= 3 * TOL[dtype]
    assert rel_err(state, s_ref) <= 3 * TOL[sdt]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("dt_given", [False, True], ids=["fused-dt", "dt-given"])
def test_mamba1_step_rows_do_not_depend_on_the_batch(G, dtype, state_dtype, dt_given):
    """A block handles up to 8 rows (dt_proj read once for them): each row of a batch of 35 (4 x 8 + 3) equals
    the same row stepped alone, bit for bit; with dt given, the streaming form likewise (a 16-bit state's thread
    takes 4 rows there above batch 32: 8 x 4 + 3)."""
    batch, dim, rank, dstate = 35, 300, 160, 16
    sdt = torch.float32 if state_dtype == "float32" else dtype
    xz, xdbl = rnd(batch, 2 * dim, dtype=dtype), rnd(batch, rank + 2 * dstate, dtype=dtype)
    w = rnd(dim, rank, dtype=dtype, scale=rank ** -0.5)
    wdt, dt = (None, F.linear(xdbl[:, :rank], w)) if dt_given else (G.pack_dt_proj(w), None)
    dt_bias, D, A = rnd(dim, scale=0.5) - 4.0, rnd(dim), -torch.exp(rnd(dim, dstate, scale=0.5))
    state = rnd(batch, dim, dstate).to(sdt)
    alone_state = state.clone()
    y = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    G.mamba1_step(xz[:, :dim], xz[:, dim:], xdbl, wdt, dt_bias, A, D, state, out=y, dt=dt)
    alone = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    for b in range(batch):
        G.mamba1_step(xz[b:b + 1, :dim], xz[b:b + 1, dim:], xdbl[b:b + 1], wdt, dt_bias, A, D, alone_state[b:b + 1],
                      out=alone[b:b + 1], dt=None if dt is None else dt[b:b + 1])
    assert torch.isfinite(alone.float()).all() and torch.equal(y, alone)
    assert torch.equal(state, alone_state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
# the kernel's forms: 4 rows a warp (batch >= 4, headdim % 4 == 0) or 1; 16 lanes a row (dstate 128, aligned, 4 or 8
# rows a warp) or 32; vector state accesses (dstate >= 128, aligned) or not; a last block half out of range (5 x 12)
@pytest.mark.parametrize("batch,nheads,headdim,dstate,ngroups", [
    (1, 64, 64, 128, 1), (5, 6, 16, 32, 3), (2, 4, 8, 256, 2), (6, 5, 12, 128, 1), (4, 3, 6, 128, 3),
    (4, 2, 8, 256, 1), (33, 4, 16, 128, 1)])
def test_mamba2_step(rel_err, G, dtype, state_dtype, batch, nheads, headdim, dstate, ngroups):
    sdt = torch.float32 if state_dtype == "float32" else dtype
    d, gn = nheads * headdim, ngroups * dstate
    buf = rnd(batch, d + 2 * gn + nheads + 8, dtype=dtype)  # x | B | C | dt, as slices of one in_proj row
    x, B, C, dt = buf[:, :d], buf[:, d:d + gn], buf[:, d + gn:d + 2 * gn], buf[:, d + 2 * gn:d + 2 * gn + nheads]
    A, D, dt_bias = -torch.exp(rnd(nheads, scale=0.5)), rnd(nheads), rnd(nheads, scale=0.5) - 3.0
    state = rnd(batch, nheads, headdim, dstate).to(sdt)
    y_ref, s_ref = selective_state_update_ref(state.float(), x.float().unflatten(1, (nheads, headdim)), dt.float(), A,
                                              B.float().unflatten(1, (ngroups, dstate)),
                                              C.float().unflatten(1, (ngroups, dstate)), D, None, dt_bias, True,
                                              (0.001, 0.1))
    y = torch.full((batch, d), float("nan"), dtype=dtype, device="cuda")
    G.mamba2_step(state, x, dt, A, B, C, D, dt_bias, (0.001, 0.1), out=y)
    assert rel_err(y, y_ref.flatten(1)) <= 3 * TOL[dtype]
    assert rel_err(state, s_ref) <= 3 * TOL[sdt]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch", [3, 5, 33])  # 1, 4 and (a 16-bit state above 16) 8 rows a warp
def test_mamba2_step_forms_agree_bitwise(G, dtype, state_dtype, batch):
    """B and C one element off 16-byte alignment take the element-wise form at 32 lanes a row: the same bits as the
    vector form (at batch 5 and 33 at 16 lanes a row, 8 states a lane)."""
    nheads, headdim, dstate = 8, 16, 128
    sdt = torch.float32 if state_dtype == "float32" else dtype
    d, gn = nheads * headdim, dstate
    x, dt = rnd(batch, d, dtype=dtype), rnd(batch, nheads, dtype=dtype)
    aligned_bc = rnd(batch, 2 * gn, dtype=dtype)
    shifted_bc = torch.empty(batch, 2 * gn + 8, dtype=dtype, device="cuda")[:, 1:1 + 2 * gn]
    shifted_bc.copy_(aligned_bc)
    A, D, dt_bias = -torch.exp(rnd(nheads, scale=0.5)), rnd(nheads), rnd(nheads, scale=0.5) - 3.0
    state0 = rnd(batch, nheads, headdim, dstate).to(sdt)
    outs = []
    for bc in (aligned_bc, shifted_bc):
        state, y = state0.clone(), torch.empty(batch, d, dtype=dtype, device="cuda")
        G.mamba2_step(state, x, dt, A, bc[:, :gn], bc[:, gn:], D, dt_bias, (0.001, 0.1), out=y)
        outs.append((y, state))
    assert bc.data_ptr() % 16 != 0
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mamba2_step_rows_a_warp_agree_bitwise(G, dtype):
    """40 rows of a 16-bit state in one call (8 rows a warp) give the bits of four calls of 10 (4 rows a warp)."""
    batch, nheads, headdim, dstate = 40, 4, 16, 128
    d, gn = nheads * headdim, dstate
    x, dt, bc = rnd(batch, d, dtype=dtype), rnd(batch, nheads, dtype=dtype), rnd(batch, 2 * gn, dtype=dtype)
    A, D, dt_bias = -torch.exp(rnd(nheads, scale=0.5)), rnd(nheads), rnd(nheads, scale=0.5) - 3.0
    state0 = rnd(batch, nheads, headdim, dstate).to(dtype)
    whole, whole_y = state0.clone(), torch.empty(batch, d, dtype=dtype, device="cuda")
    G.mamba2_step(whole, x, dt, A, bc[:, :gn], bc[:, gn:], D, dt_bias, (0.001, 0.1), out=whole_y)
    halves, halves_y = state0.clone(), torch.empty(batch, d, dtype=dtype, device="cuda")
    for rows in (slice(0, 10), slice(10, 20), slice(20, 30), slice(30, 40)):
        G.mamba2_step(halves[rows], x[rows], dt[rows], A, bc[rows, :gn], bc[rows, gn:], D, dt_bias, (0.001, 0.1),
                      out=halves_y[rows])
    assert torch.isfinite(whole_y.float()).all()
    assert torch.equal(whole_y, halves_y) and torch.equal(whole, halves)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden,groups", [(1, 2048, 1), (7, 768, 1), (3, 4096, 1), (2, 1024, 4)])
def test_row_norm(rel_err, G, dtype, rows, hidden, groups):
    from mamba_deploy.ops import add_norm_ref, gated_rms_norm_ref

    x, w = rnd(rows, hidden, dtype=dtype), (1 + rnd(hidden, scale=0.1)).to(dtype)
    res = rnd(rows, hidden)
    out = torch.full((rows, hidden), float("nan"), dtype=dtype, device="cuda")
    if groups == 1:
        o_ref, r_ref = add_norm_ref(x, res, w, None, 1e-5, True, True)
        G.row_norm(x, res, w, 1e-5, out=out, residual_out=res)  # in place, as the engine runs it
        assert rel_err(out, o_ref) <= TOL[dtype] and rel_err(res, r_ref) <= 1e-6
        first = torch.empty(rows, hidden, device="cuda")
        G.row_norm(x, None, w, 1e-5, out=out, residual_out=first)
        assert rel_err(out, add_norm_ref(x, None, w, None, 1e-5, True, True)[0]) <= TOL[dtype]
        assert torch.equal(first, x.float())
    z = rnd(rows, hidden, dtype=dtype)
    G.row_norm(x, z, w, 1e-5, out=out, gate=True, group_size=hidden // groups)
    assert rel_err(out, gated_rms_norm_ref(x, z, w, 1e-5, hidden // groups)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["gate", "residual32", "residual16", "first"])
def test_row_norm_prefill_kernel_agrees_bitwise(G, dtype, form):
    """From 256 rows a 16-bit row norm runs norms.cu's typed kernel; below, the general one. 300 rows in one call
    == the same rows in three calls of 100 (4,096 columns; z a strided view, as in_proj's output gives it)."""
    rows, hidden = 300, 4096
    x, w = rnd(rows, hidden, dtype=dtype, scale=3), (1 + rnd(hidden, scale=0.1)).to(dtype)
    other = {"gate": rnd(rows, 2 * hidden + 64, dtype=dtype)[:, :hidden], "residual32": rnd(rows, hidden),
             "residual16": rnd(rows, hidden, dtype=dtype), "first": None}[form]
    group = hidden // 4 if form == "gate" else hidden
    outs, residuals = [], []
    for parts in (1, 3):
        out = torch.full((rows, hidden), float("nan"), dtype=dtype, device="cuda")
        res_out = None if form == "gate" else torch.empty(rows, hidden, dtype=dtype if form == "residual16" else
                                                          torch.float32, device="cuda")
        for r in torch.arange(rows).chunk(parts):
            rs = slice(int(r[0]), int(r[-1]) + 1)
            G.row_norm(x[rs], None if other is None else other[rs], w, 1e-5, out=out[rs], gate=form == "gate",
                       group_size=group, residual_out=None if res_out is None else res_out[rs])
        outs.append(out)
        residuals.append(res_out)
    assert torch.isfinite(outs[0].float()).all() and torch.equal(outs[0], outs[1])
    assert form == "gate" or torch.equal(residuals[0], residuals[1])


# ---- state_rows: the kernels on rows of a state pool == the same kernels on a gathered copy of those rows ----

def pool_rows(pool: int, batch: int, seed: int) -> torch.Tensor:
    """`batch` distinct rows of a pool of `pool`, unsorted and not contiguous (for batch >= 3), on the GPU."""
    rows = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:batch]
    assert batch < 3 or not (rows.diff() == 1).all()
    return rows.cuda()


def assert_pool_update(pool, before, rows, gathered):
    """pool[rows] == the gathered copy after its update, which did change; every other row as before."""
    assert torch.equal(pool[rows], gathered)
    assert not torch.equal(gathered, before[rows]), "the state was not updated: the test shows nothing"
    others = torch.ones(pool.shape[0], dtype=torch.bool, device=pool.device)
    others[rows] = False
    assert torch.equal(pool[others], before[others])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_gemv_conv_epilogue_state_rows(G, dtype, batch):
    n, k, lo, dim, width, pool_size = 700, 136, 200, 300, 4, 2 * batch + 5
    x, w = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5)
    cw, cb = rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    pool = rnd(pool_size, dim, width - 1, dtype=dtype)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch)
    gathered = pool[rows]
    ref = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, out=ref, conv=dict(lo=lo, weight=cw, bias=cb, state=gathered))
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, out=out, conv=dict(lo=lo, weight=cw, bias=cb, state=pool, state_rows=rows))
    assert torch.isfinite(ref.float()).all() and torch.equal(out, ref)
    assert_pool_update(pool, before, rows, gathered)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch", [1, 5, 9, 64])
@pytest.mark.parametrize("dt_given", [False, True], ids=["fused-dt", "dt-given"])
def test_mamba1_step_state_rows(G, dtype, state_dtype, batch, dt_given):
    dim, rank, dstate, pool_size = 200, 24, 16, batch + 7
    sdt = torch.float32 if state_dtype == "float32" else dtype
    xz, xdbl = rnd(batch, 2 * dim, dtype=dtype), rnd(batch, rank + 2 * dstate, dtype=dtype)
    w = rnd(dim, rank, dtype=dtype, scale=rank ** -0.5)
    wdt, dt = (None, F.linear(xdbl[:, :rank], w)) if dt_given else (G.pack_dt_proj(w), None)
    dt_bias, D, A = rnd(dim, scale=0.5) - 4.0, rnd(dim), -torch.exp(rnd(dim, dstate, scale=0.5))
    pool = rnd(pool_size, dim, dstate).to(sdt)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch)
    gathered = pool[rows]
    ref = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    G.mamba1_step(xz[:, :dim], xz[:, dim:], xdbl, wdt, dt_bias, A, D, gathered, out=ref, dt=dt)
    y = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    G.mamba1_step(xz[:, :dim], xz[:, dim:], xdbl, wdt, dt_bias, A, D, pool, out=y, state_rows=rows, dt=dt)
    assert torch.isfinite(ref.float()).all() and torch.equal(y, ref)
    assert_pool_update(pool, before, rows, gathered)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch", [1, 6, 33])
def test_mamba2_step_state_rows(G, dtype, state_dtype, batch):
    nheads, headdim, dstate, ngroups, pool_size = 6, 16, 64, 2, batch + 4
    sdt = torch.float32 if state_dtype == "float32" else dtype
    d, gn = nheads * headdim, ngroups * dstate
    buf = rnd(batch, d + 2 * gn + nheads, dtype=dtype)
    x, B, C, dt = buf[:, :d], buf[:, d:d + gn], buf[:, d + gn:d + 2 * gn], buf[:, d + 2 * gn:]
    A, D, dt_bias = -torch.exp(rnd(nheads, scale=0.5)), rnd(nheads), rnd(nheads, scale=0.5) - 3.0
    pool = rnd(pool_size, nheads, headdim, dstate).to(sdt)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch)
    gathered = pool[rows]
    ref = torch.full((batch, d), float("nan"), dtype=dtype, device="cuda")
    G.mamba2_step(gathered, x, dt, A, B, C, D, dt_bias, (0.001, 0.1), out=ref)
    y = torch.full((batch, d), float("nan"), dtype=dtype, device="cuda")
    G.mamba2_step(pool, x, dt, A, B, C, D, dt_bias, (0.001, 0.1), out=y, state_rows=rows)
    assert torch.isfinite(ref.float()).all() and torch.equal(y, ref)
    assert_pool_update(pool, before, rows, gathered)


def test_state_rows_are_checked(G):
    x, xz, xdbl = rnd(3, 64), rnd(3, 128), rnd(3, 8 + 32)
    wdt, A = G.pack_dt_proj(rnd(64, 8)), -torch.exp(rnd(64, 16))
    pool, y = rnd(10, 64, 16), torch.empty(3, 64, device="cuda")
    args = (xz[:, :64], xz[:, 64:], xdbl, wdt, rnd(64), A, rnd(64), pool)
    for bad, why in ((torch.arange(3, device="cuda", dtype=torch.int32), "int64"),
                     (torch.arange(3), "int64 tensor on cuda"), (torch.arange(4, device="cuda"), r"\(3,\)"),
                     (torch.arange(6, device="cuda")[::2], "contiguous")):
        with pytest.raises(ValueError, match=why):
            G.mamba1_step(*args, out=y, state_rows=bad)
    with pytest.raises(ValueError, match="state"):  # without state_rows the state must have the batch's rows
        G.mamba1_step(*args, out=y)
    with pytest.raises(ValueError, match="conv state"):
        G.gemv(x, rnd(80, 64), out=torch.empty(3, 80, device="cuda"),
               conv=dict(lo=0, weight=rnd(16, 4), state=rnd(10, 16, 3)))
