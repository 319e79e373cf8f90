"""plugins/kernels/gemv.cu against torch: GEMV (batch 1..16, odd sizes, conv epilogue) and the fused
Mamba1 step. Outputs are poisoned with NaN before every launch."""
import pytest
import torch
import torch.nn.functional as F

from mamba_deploy.ops import causal_conv1d_update_ref, selective_state_update_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def G(native):
    from mamba_deploy.native import gemv

    return gemv


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
    assert rel_err(out[:, :lo], proj[:, :lo]) <= TOL[dtype] and rel_err(out[:, lo + dim:], proj[:, lo + dim:]) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
@pytest.mark.parametrize("batch,dim,rank,dstate", [(1, 4096, 128, 16), (7, 300, 20, 16), (3, 128, 8, 5)])
def test_mamba1_step(rel_err, G, dtype, state_dtype, batch, dim, rank, dstate):
    sdt = torch.float32 if state_dtype == "float32" else dtype
    xz = rnd(batch, 2 * dim, dtype=dtype)
    x, z = xz[:, :dim], xz[:, dim:]
    xdbl = rnd(batch, rank + 2 * dstate, dtype=dtype)
    wdt = rnd(dim, rank, dtype=dtype, scale=rank ** -0.5)
    dt_bias, D = rnd(dim, scale=0.5) - 4.0, rnd(dim)
    A = -torch.exp(rnd(dim, dstate, scale=0.5))
    state = rnd(batch, dim, dstate).to(sdt)
    dt = F.linear(xdbl[:, :rank].float(), wdt.float())
    y_ref, s_ref = selective_state_update_ref(state.float(), x.float(), dt, A, xdbl[:, rank:rank + dstate].float(),
                                              xdbl[:, rank + dstate:].float(), D, z.float(), dt_bias, True)
    y = torch.full((batch, dim), float("nan"), dtype=dtype, device="cuda")
    G.mamba1_step(x, z, xdbl, G.pack_dt_proj(wdt), dt_bias, A, D, state, out=y)
    assert rel_err(y, y_ref) <= 3 * TOL[dtype]
    assert rel_err(state, s_ref) <= 3 * TOL[sdt]
