"""Mamba1's decode step with dt_proj on tensor cores inside it (mamba1_step(tc=True), NativeEngine(step_dt_tc=True)):
against the float32 reference, rows independent of each other bit for bit, state rows of a pool, the checks, and
the engine's logits with it against the reference model (all on the GPU)."""
import pytest
import torch
import torch.nn.functional as F
from prompts import ids
from test_native_engine import follow_reference, logits_bar
from test_native_gemv import assert_pool_update, pool_rows, rnd

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.ops import selective_state_update_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # test_native_gemv's
DSTATE = 16


def _inputs(batch, dim, rank, dtype, state_rows=0, seed=0):
    """The step's inputs: (x, z, xdbl, dt_proj weight, dt_bias, A, D); x and z views of one (batch, 2 dim) buffer."""
    torch.manual_seed(seed)
    xz, xdbl = rnd(batch, 2 * dim, dtype=dtype), rnd(batch, rank + 2 * DSTATE, dtype=dtype)
    w = rnd(dim, rank, dtype=dtype, scale=rank ** -0.5)
    dt_bias, D, A = rnd(dim, scale=0.5) - 4.0, rnd(dim), -torch.exp(rnd(dim, DSTATE, scale=0.5))
    return xz[:, :dim], xz[:, dim:], xdbl, w, dt_bias, A, D


def _step(G, inputs, state, rows=None):
    x, z, xdbl, w, dt_bias, A, D = inputs
    y = torch.full(x.shape, float("nan"), dtype=x.dtype, device="cuda")
    G.mamba1_step(x, z, xdbl, G.pack_dt_proj(w), dt_bias, A, D, state, out=y, state_rows=rows, tc=True)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
# mamba-1.4b / 2.8b shapes; channels not a multiple of 32 and a last tile of 3 rows; dt_rank of one k32 step
# (its second k half empty), of 1024 (past the units loaded before the wait), 8
@pytest.mark.parametrize("batch,dim,rank", [(8, 4096, 128), (64, 4096, 128), (64, 5120, 160), (19, 1000, 160),
                                            (3, 72, 32), (13, 264, 1024), (9, 40, 8), (1, 96, 48)])
def test_mamba1_step_tc_against_the_reference(rel_err, G, dtype, state_dtype, batch, dim, rank):
    sdt = torch.float32 if state_dtype == "float32" else dtype
    x, z, xdbl, w, dt_bias, A, D = inputs = _inputs(batch, dim, rank, dtype)
    state = rnd(batch, dim, DSTATE).to(sdt)
    dt = F.linear(xdbl[:, :rank].float(), w.float())  # dt in float32, as the kernel keeps it
    y_ref, s_ref = selective_state_update_ref(state.float(), x.float(), dt, A, xdbl[:, rank:rank + DSTATE].float(),
                                              xdbl[:, rank + DSTATE:].float(), D, z.float(), dt_bias, True)
    y = _step(G, inputs, state)
    assert torch.isfinite(y.float()).all()
    assert rel_err(y, y_ref) <= 3 * TOL[dtype]
    assert rel_err(state, s_ref) <= 3 * TOL[sdt]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_mamba1_step_tc_rows_do_not_depend_on_the_batch(G, dtype, state_dtype):
    """A block takes 8 rows (dt_proj read once for them, one mma): rows 5-12 of a batch of 19 stepped as a batch
    of their own, and the last row alone, equal the full batch's rows bit for bit, as do the rows reversed."""
    batch, dim, rank = 19, 300, 160
    sdt = torch.float32 if state_dtype == "float32" else dtype
    inputs = _inputs(batch, dim, rank, dtype)
    state = rnd(batch, dim, DSTATE).to(sdt)
    start = state.clone()
    y = _step(G, inputs, state)
    x, z, xdbl, w, dt_bias, A, D = inputs
    for lo, hi in ((5, 13), (18, 19)):
        part_state = start[lo:hi].clone()
        part = _step(G, (x[lo:hi], z[lo:hi], xdbl[lo:hi], w, dt_bias, A, D), part_state)
        assert torch.equal(part, y[lo:hi]) and torch.equal(part_state, state[lo:hi])
    back = torch.arange(batch - 1, -1, -1, device="cuda")
    back_state = start[back].clone()
    xz_back = torch.cat([x[back], z[back]], dim=1)
    y_back = _step(G, (xz_back[:, :dim], xz_back[:, dim:], xdbl[back].contiguous(), w, dt_bias, A, D), back_state)
    assert torch.equal(y_back, y[back]) and torch.equal(back_state, state[back])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 9, 64])
def test_mamba1_step_tc_state_rows(G, dtype, batch):
    dim, rank, pool_size = 200, 24, batch + 7
    inputs = _inputs(batch, dim, rank, dtype, seed=batch)
    pool = rnd(pool_size, dim, DSTATE)
    before, rows = pool.clone(), pool_rows(pool_size, batch, seed=batch)
    gathered = pool[rows]
    ref = _step(G, inputs, gathered)
    y = _step(G, inputs, pool, rows)
    assert torch.isfinite(ref.float()).all() and torch.equal(y, ref)
    assert_pool_update(pool, before, rows, gathered)


def test_mamba1_step_tc_refuses_what_it_does_not_take(G):
    x, z, xdbl, w, dt_bias, A, D = _inputs(4, 64, 24, torch.float16)
    state, y = rnd(4, 64, DSTATE), torch.empty(4, 64, dtype=torch.float16, device="cuda")
    assert G.mamba1_step_tc_ok(xdbl, state, DSTATE)
    wdt, step = G.pack_dt_proj(w), G.mamba1_step
    with pytest.raises(ValueError, match="tc needs"):  # float32
        step(x.float(), z.float(), xdbl.float(), wdt.float(), dt_bias, A, D, state, out=y.float(), tc=True)
    odd = rnd(4, 20 + 2 * DSTATE, dtype=torch.float16)  # dt_rank 20: a 16-byte unit of x_dt would reach B
    with pytest.raises(ValueError, match="tc needs"):
        step(x, z, odd, G.pack_dt_proj(w[:, :20]), dt_bias, A, D, state, out=y, tc=True)
    skewed = rnd(4, 64, 20)[:, :, :DSTATE]  # channel rows 80 bytes apart: not 16-byte units
    assert not G.mamba1_step_tc_ok(xdbl, skewed, DSTATE)
    with pytest.raises(ValueError, match="tc needs"):
        step(x, z, xdbl, wdt, dt_bias, A, D, skewed, out=y, tc=True)
    with pytest.raises(ValueError, match="tc needs"):  # dt given
        step(x, z, xdbl, None, dt_bias, A, D, state, out=y, dt=F.linear(xdbl[:, :24], w), tc=True)


@pytest.mark.parametrize("arch", ["mamba1", "falcon_mamba", "mamba1_mlp", "hybrid1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [9, 20])
def test_engine_with_step_dt_tc_matches_the_reference(rel_err, native, G, monkeypatch, checkpoints, arch, dtype,
                                                      batch):
    """The engine's decode with step_dt_tc (Falcon-Mamba's dt_rank 20 keeps the GEMM form) against the float32
    reference over prefill + 32 steps, and its graph step equal to its eager step bit for bit."""
    forms, launch = [], G.mamba1_step
    monkeypatch.setattr(G, "mamba1_step", lambda *a, **k: forms.append(k.get("tc", False)) or launch(*a, **k))
    ref = load_reference(checkpoints[arch], torch.float32, "cuda")
    eng = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=batch, step_dt_tc=True)
    prompt = ids(batch, 21, seed=6)
    run = follow_reference(rel_err, ref, eng, prompt, 32)
    bar = logits_bar(rel_err, ref, checkpoints[arch], dtype, prompt)
    assert run.worst <= bar, f"max relative logits error over prefill + 32 steps: {run.worst:.3g} (bar {bar:.3g})"
    assert forms and set(forms) == {arch != "falcon_mamba"}, "the step took another form than expected"
    assert batch in eng.graphs
    graphed, graphed_state = run.logits.clone(), run.state.clone()  # decode returns the engine's reused logits
    state = run.state.zero_()
    eng.prefill(prompt, state)  # the same prefill graphs again: the state the graphed steps started from
    eng.use_graphs = False
    for tok in run.tokens:
        eager = eng.decode(tok, state)
    assert torch.equal(eager, graphed), "graph != eager"
    assert all(torch.equal(a, b) for a, b in zip(state.tensors(), graphed_state.tensors()))
