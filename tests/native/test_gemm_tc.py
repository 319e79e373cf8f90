"""plugins/kernels/gemm_tc.cu (gemv's tensor-core form, batch 1..64, fp16 / bf16; its wgmma form from batch 17, or
from 1 with algo "wgmma") against float64 products and against the CUDA-core form: odd batches and sizes, every
cluster split, strided rows, bias, the conv epilogue over state rows; the skinny form (gemv_skinny.cu, n <= 256) at
every cluster size. Outputs are poisoned with NaN before every launch."""
import pytest
import torch

from mamba_deploy.ops import causal_conv1d_update_ref

pytestmark = pytest.mark.gpu

DTYPES = [torch.float16, torch.bfloat16]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (n, k): mamba-1.4b's x_proj, dt_proj, in_proj, out_proj; mamba2-1.3b's in_proj; odd ones (k % 8 == 0);
# mamba-2.8b's in_proj and out_proj (80 blocks: one split more than the rule for a block a multiprocessor gives).
# Cluster splits of k: 1 (k 72, 128), 2 (k 1032, n 8512, n 10240), 4 (k 2056, partial last stage), 8 (k 4096, 5120).
# At batch 9-16 every shape the wide tile (128 columns) would split takes the narrow one (64) with half the splits.
SHAPES = [(160, 4096), (4096, 128), (8192, 2048), (2048, 4096), (8512, 2048), (37, 72), (129, 1032), (1000, 2056),
          (10240, 2560), (2560, 5120)]


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


@pytest.fixture(autouse=True)
def _hopper():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the tensor-core form needs compute capability 9.0+")


# tensor_cores: wgmma from batch 17 where built for sm_90a; wgmma: from batch 1 (n = 8 and 16 batch rows too)
@pytest.mark.parametrize("algo", ["tensor_cores", "mma_sync", "wgmma"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 16, 17, 31, 33, 64])
@pytest.mark.parametrize("n,k", SHAPES)
def test_tc_vs_float64(rel_err, G, dtype, batch, n, k, algo):
    x, w, b = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    ref = x.double() @ w.double().T + b.double()
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, b, out=out, algo=algo)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) <= TOL[dtype]
    again = torch.full_like(out, float("nan"))
    G.gemv(x, w, b, out=again, algo=algo)
    assert torch.equal(out, again), "the same inputs must give the same bits"


@pytest.mark.parametrize("algo", ["tensor_cores", "wgmma"])
def test_tc_one_row_of_any_stride(rel_err, G, algo):
    """One x row whose row stride is not a whole number of 16-byte units (gemv_tc_ok asks nothing of it at batch 1;
    the wgmma form's tensor map of x needs one)."""
    x, w = rnd(1, 2048 + 5, dtype=torch.float16)[:, :2048], rnd(300, 2048, dtype=torch.float16, scale=2048 ** -0.5)
    assert x.stride(0) % 8 != 0
    out = torch.full((1, 300), float("nan"), dtype=torch.float16, device="cuda")
    G.gemv(x, w, out=out, algo=algo)
    assert rel_err(out, x.double() @ w.double().T) <= TOL[torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [2, 16])
def test_tc_matches_cuda_cores(rel_err, G, dtype, batch):
    """The two forms compute one function (within rounding of their different summation orders)."""
    x, w = rnd(batch, 2048, dtype=dtype), rnd(3000, 2048, dtype=dtype, scale=2048 ** -0.5)
    outs = {}
    for algo in ("tensor_cores", "cuda_cores"):
        outs[algo] = torch.full((batch, 3000), float("nan"), dtype=dtype, device="cuda")
        G.gemv(x, w, out=outs[algo], algo=algo)
    assert rel_err(outs["tensor_cores"], outs["cuda_cores"].double()) <= TOL[dtype]


def test_tc_strided_rows(rel_err, G):
    """x and out as column slices of wider buffers (x_proj reads xz[:, :d_inner]); nothing else written."""
    xz, w = rnd(40, 3 * 256, dtype=torch.float16), rnd(48, 256, dtype=torch.float16)
    big = torch.full((40, 100), float("nan"), dtype=torch.float16, device="cuda")
    G.gemv(xz[:, 256:512], w, out=big[:, 40:88], algo="tensor_cores")
    assert rel_err(big[:, 40:88], xz[:, 256:512].double() @ w.double().T) <= 2e-3
    assert big[:, :40].isnan().all() and big[:, 88:].isnan().all()


@pytest.mark.parametrize("algo", ["tensor_cores", "wgmma"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, 12, 20, 40, 64])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("k", [136, 2048])  # 2048: k split over clusters (batch 12: the narrow tile)
def test_tc_conv_epilogue_state_rows(rel_err, G, dtype, batch, width, k, algo):
    n, lo, dim, pool_size = 700, 200, 300, 2 * batch + 5
    x, w = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5)
    cw, cb = rnd(dim, width, dtype=dtype), rnd(dim, dtype=dtype)
    pool = rnd(pool_size, dim, width - 1, dtype=dtype)
    rows = torch.randperm(pool_size, device="cuda")[:batch]
    before = pool.clone()
    proj = (x.double() @ w.double().T).to(dtype)
    y_ref, s_ref = causal_conv1d_update_ref(proj[:, lo:lo + dim].float(), cw.float(), cb.float(),
                                            before[rows].float(), "silu")
    out = torch.full((batch, n), float("nan"), dtype=dtype, device="cuda")
    G.gemv(x, w, out=out, conv=dict(lo=lo, weight=cw, bias=cb, state=pool, state_rows=rows), algo=algo)
    assert rel_err(out[:, lo:lo + dim], y_ref) <= 3 * TOL[dtype]
    assert rel_err(pool[rows], s_ref) <= 3 * TOL[dtype]
    assert rel_err(out[:, :lo], proj[:, :lo]) <= TOL[dtype]
    assert rel_err(out[:, lo + dim:], proj[:, lo + dim:]) <= TOL[dtype]
    others = torch.ones(pool_size, dtype=torch.bool, device="cuda")
    others[rows] = False
    assert torch.equal(pool[others], before[others])


# n <= 256 without conv: the skinny form (16-column blocks, k split over a cluster of `split_k` blocks).
SKINNY = [(160, 4096), (192, 5120), (1, 8), (17, 40), (250, 5000), (256, 264)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5, 16, 33, 64])
@pytest.mark.parametrize("n,k", SKINNY)
@pytest.mark.parametrize("split", [0, 1, 3, 8, 16])
def test_skinny_vs_float64(rel_err, G, dtype, batch, n, k, split):
    x, w, b = rnd(batch, k, dtype=dtype), rnd(n, k, dtype=dtype, scale=k ** -0.5), rnd(n, dtype=dtype)
    ref = x.double() @ w.double().T + b.double()
    big = torch.full((batch, n + 24), float("nan"), dtype=dtype, device="cuda")
    out = big[:, 8:8 + n]  # a column slice: nothing else of the row may be written
    G.gemv(x, w, b, out=out, algo="tensor_cores", split_k=split)
    assert torch.isfinite(out.float()).all() and big[:, :8].isnan().all() and big[:, 8 + n:].isnan().all()
    assert rel_err(out, ref) <= TOL[dtype]
    again = torch.full_like(out, float("nan"))
    G.gemv(x, w, b, out=again, algo="tensor_cores", split_k=split)
    assert torch.equal(out, again), "the same inputs must give the same bits"


def test_skinny_split_refused(G):
    x, w = rnd(4, 64, dtype=torch.float16), rnd(80, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="split_k"):
        G.gemv(x, w, out=torch.empty(4, 80, dtype=torch.float16, device="cuda"), algo="tensor_cores", split_k=17)
    with pytest.raises(RuntimeError, match="split_k"):  # the CUDA-core form takes 1, 2, 4 or 8
        G.gemv(x, w, out=torch.empty(4, 80, dtype=torch.float16, device="cuda"), algo="cuda_cores", split_k=3)


def test_tc_refusals(G):
    x32, w32 = rnd(20, 64), rnd(80, 64)
    with pytest.raises(ValueError, match="batch <= 16"):  # float32 has only the CUDA-core form
        G.gemv(x32, w32, out=torch.empty(20, 80, device="cuda"))
    x, w = rnd(4, 60, dtype=torch.float16), rnd(80, 60, dtype=torch.float16)  # k % 8 != 0
    for algo in ("tensor_cores", "wgmma"):
        with pytest.raises(RuntimeError, match="tensor-core form needs"):
            G.gemv(x, w, out=torch.empty(4, 80, dtype=torch.float16, device="cuda"), algo=algo)
    with pytest.raises(ValueError, match="algo"):
        G.gemv(x, w, out=torch.empty(4, 80, dtype=torch.float16, device="cuda"), algo="fast")
    assert not G.tc_ok(x, w) and G.tc_ok(rnd(64, 64, dtype=torch.bfloat16), rnd(8, 64, dtype=torch.bfloat16))
    assert not G.tc_ok(rnd(65, 64, dtype=torch.float16), rnd(8, 64, dtype=torch.float16))
