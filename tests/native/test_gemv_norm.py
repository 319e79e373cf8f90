"""gemv's norm prologue (plugins/kernels/gemv.cu): the row norm done inside the GEMV against row_norm then gemv,
and against the float64 references. Outputs are poisoned with NaN before every launch."""
import pytest
import torch

from mamba_deploy.ops import add_norm_ref, gated_rms_norm_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def two_kernels(G, x, w, norm, eps=1e-5):
    """row_norm into a buffer, then gemv: what the engine runs without the prologue. -> (out, residual_out)"""
    batch, k = x.shape
    normed = nan(batch, k, dtype=x.dtype)
    if "gate" in norm:
        G.row_norm(x, norm["gate"], norm["weight"], eps, out=normed, gate=True)
        res = None
    else:
        res = nan(batch, k, dtype=norm["residual_out"].dtype)
        G.row_norm(x, norm.get("residual"), norm["weight"], eps, out=normed, residual_out=res)
    return G.gemv(normed, w, out=nan(batch, w.shape[0], dtype=x.dtype)), res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("n,k", [(1000, 2048), (160, 256), (333, 2560), (2048, 4096), (77, 8192)])
@pytest.mark.parametrize("form", ["add", "first", "residual_in_model_dtype", "gate"])
def test_norm_prologue(rel_err, G, dtype, batch, n, k, form):
    x, w = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5)
    weight = (1 + rnd(k, scale=0.1)).to(dtype)
    res_dtype = dtype if form == "residual_in_model_dtype" else torch.float32
    if form == "gate":
        norm = dict(weight=weight, eps=1e-5, gate=rnd(batch, k, dtype=dtype))
        ref_in = gated_rms_norm_ref(x, norm["gate"], weight, 1e-5, k)
    else:
        residual = None if form == "first" else rnd(batch, k, dtype=res_dtype)
        norm = dict(weight=weight, eps=1e-5, residual=residual, residual_out=nan(batch, k, dtype=res_dtype))
        ref_in, ref_res = add_norm_ref(x, residual, weight, None, 1e-5, True, res_dtype == torch.float32)
    if batch * k * x.element_size() > 32 * 1024:  # the prologue's limit (gemv.h): x rows in shared memory
        assert not G.norm_ok(x, norm)
        return
    assert G.norm_ok(x, norm)
    out = G.gemv(x, w, out=nan(batch, n, dtype=dtype), norm=norm)
    expect, expect_res = two_kernels(G, x, w, norm)
    if k <= 2048:  # one chunk a thread: the row norm kernel's arithmetic, term for term
        assert torch.equal(out, expect)
    assert rel_err(out, expect) <= TOL[dtype]
    assert rel_err(out, ref_in.to(dtype).double() @ w.double().T) <= 2 * TOL[dtype]
    if form != "gate":
        assert torch.equal(norm["residual_out"], expect_res)  # x + residual, rounded once
        assert rel_err(norm["residual_out"], ref_res) <= TOL[res_dtype]


def test_norm_prologue_with_conv_epilogue(G):
    """in_proj's launch in the engine: the norm before the products, the conv after them."""
    batch, n, k, lo, dim, width = 2, 700, 2048, 200, 300, 4
    x, w = rnd(batch, k, dtype=torch.float16), rnd(n, k, dtype=torch.float16, scale=k ** -0.5)
    norm = dict(weight=(1 + rnd(k, scale=0.1)).half(), eps=1e-5, residual=rnd(batch, k),
                residual_out=nan(batch, k, dtype=torch.float32))
    cw, cb, state = rnd(dim, width, dtype=torch.float16), rnd(dim, dtype=torch.float16), rnd(batch, dim, width - 1,
                                                                                              dtype=torch.float16)
    state2 = state.clone()
    out = G.gemv(x, w, out=nan(batch, n, dtype=torch.float16), norm=norm,
                 conv=dict(lo=lo, weight=cw, bias=cb, state=state))
    normed = nan(batch, k, dtype=torch.float16)
    G.row_norm(x, norm["residual"], norm["weight"], 1e-5, out=normed, residual_out=torch.empty_like(norm["residual"]))
    expect = G.gemv(normed, w, out=nan(batch, n, dtype=torch.float16),
                    conv=dict(lo=lo, weight=cw, bias=cb, state=state2))
    assert torch.equal(out, expect) and torch.equal(state, state2)


def test_norm_prologue_rejects(G):
    x, w = rnd(1, 256, dtype=torch.float16), rnd(8, 256, dtype=torch.float16)
    weight, res = torch.ones(256, dtype=torch.float16, device="cuda"), rnd(1, 256)
    with pytest.raises(ValueError, match="must not overlap"):
        G.gemv(x, w, norm=dict(weight=weight, eps=1e-5, residual=res, residual_out=res))
    with pytest.raises(ValueError, match="either residual_out"):
        G.gemv(x, w, norm=dict(weight=weight, eps=1e-5))
    with pytest.raises(ValueError, match="no norm prologue"):
        G.gemv(rnd(3, 256, dtype=torch.float16), w, norm=dict(weight=weight, eps=1e-5, residual_out=rnd(3, 256)))
    assert not G.norm_ok(rnd(1, 260, dtype=torch.float16), dict(weight=weight))
