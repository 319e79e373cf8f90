"""out_proj as k slices on the GPU (decode.out_proj: where cuBLAS runs it, float32 partial sums that the next row norm
adds): the row norm's slices (md_row_norm_params.x_parts) against torch, and engines with the slices against the
same engines without them, graph == eager bit for bit; where the engine turns them on."""
import pytest
import torch
from numerics import slices_sum
from prompts import ids

pytestmark = pytest.mark.gpu

NORM_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# sliced against whole: the same products summed in another order, rounded once to the model dtype
ENGINE_TOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2}


def rnd(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("slices,rows,hidden", [(1, 3, 256), (2, 5, 2048), (4, 7, 2560), (4, 64, 2048)])
@pytest.mark.parametrize("factor", [False, True])
def test_row_norm_adds_the_slices(rel_err, G, dtype, slices, rows, hidden, factor):
    from mamba_deploy.ops import add_norm_ref

    parts = rnd(slices, rows + 3, hidden, seed=1)[:, :rows]  # rows of a larger buffer: strided slices
    weight, residual = (1 + 0.1 * rnd(hidden, seed=2)).to(dtype), rnd(rows, hidden, seed=3)
    x = slices_sum(parts, dtype).float()
    owed = {}
    if factor:
        sumsq = rnd(rows, 5, seed=4).abs() + 0.5
        owed = dict(x_sumsq=sumsq, sumsq_dim=64, sumsq_eps=1e-5)
        x = x * torch.rsqrt(sumsq.sum(-1, keepdim=True) / 64 + 1e-5)
    want, want_residual = add_norm_ref(x, residual, weight, None, 1e-5, True, True)
    out = torch.full((rows, hidden), float("nan"), dtype=dtype, device="cuda")
    G.row_norm(parts, residual, weight, 1e-5, out=out, residual_out=residual, **owed)
    assert rel_err(out, want) <= NORM_TOL[dtype]
    if factor:
        assert rel_err(residual, want_residual) <= 1e-6
    else:  # the sum and the residual add are the reference's own float32 operations
        assert torch.equal(residual, want_residual)


def test_row_norm_refuses_slices_it_cannot_take(G):
    parts, out, w = rnd(2, 3, 256), torch.empty(3, 256, device="cuda"), torch.ones(256, device="cuda")
    for bad, kwargs in ((parts.half(), {}), (parts, dict(gate=True)), (parts[..., ::2], {})):
        with pytest.raises(ValueError, match="slices"):
            G.row_norm(bad, None, w, 1e-5, out=out[:, :bad.shape[2]], **kwargs)


def _decode(eng, batch: int, eager_too: bool = False, steps: int = 6) -> list:
    """[(logits of each step, state after them)] from one prefill: through graphs, then with eager_too eagerly."""
    state = eng.new_state(batch)
    eng.prefill(ids(batch, 21, seed=5), state)
    saved, runs = state.clone(), []
    for graphs in (True, False) if eager_too else (True,):
        eng.use_graphs = graphs
        for dst, src in zip(state.tensors(), saved.tensors()):
            dst.copy_(src)
        # the same tokens for every engine: a greedy pick could follow a near tie either way
        out = [eng.decode(ids(batch, 1, seed=6 + step), state).clone() for step in range(steps)]
        runs.append((torch.stack(out), state.clone()))
    return runs


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "mamba1_mlp", "hybrid1"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sliced_out_proj_decodes_as_the_whole_one(rel_err, native, checkpoints, arch, dtype):
    from mamba_deploy.native import decode as D

    batch = 20  # above tc_max_batch (16): out_proj on cuBLAS
    sliced = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=24)
    assert sliced.out_proj_slices == D.OUT_PROJ_SLICES
    (got, got_state), (eager, eager_state) = _decode(sliced, batch, eager_too=True)
    assert sliced.out_parts[:, :batch].abs().amax() > 0, "no sliced product ran"
    assert torch.equal(got, eager), "graph != eager"
    assert all(torch.equal(a, b) for a, b in zip(got_state.tensors(), eager_state.tensors()))
    whole = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=24)
    whole.out_proj_slices = 0
    [(want, want_state)] = _decode(whole, batch)
    assert whole.out_parts[:, :batch].abs().amax() == 0
    assert rel_err(got, want) <= ENGINE_TOL[dtype]
    assert rel_err(got_state.ssm[-1], want_state.ssm[-1]) <= ENGINE_TOL[dtype]


@pytest.mark.parametrize("arch,dtype,on", [("mamba1", torch.float16, True), ("mamba2", torch.bfloat16, True),
                                           ("mamba1", torch.float32, False), ("mamba2_mlp", torch.float16, False)])
def test_where_the_engine_slices_out_proj(native, checkpoints, arch, dtype, on):
    """16-bit models whose norms are all RMS norms without bias (mamba2_mlp has LayerNorms)."""
    eng = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4)
    assert (eng.out_proj_slices > 0) is on and (eng.out_parts is not None) is on
