"""The gated RMSNorm folded into Mamba2's chunk scan (norm_weight / norm_sumsq: out = g * w and each head's sum of
g^2, g the gated output) against the float32 reference, in the SSD form (16-bit inputs of >= 32 steps: the
output kernel's epilogue) and the others (float32, short sequences: a kernel after the scan); rmsnorm(g) * w
rebuilt from the two; the state as without the fold."""
import pytest
import torch
from cuda_checks import DTYPES, check, mamba2_inputs, nan_like

from mamba_deploy.ops import chunk_scan_ref, gated_rms_norm_ref

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", [1, 2, 129, 1000])
@pytest.mark.parametrize("nheads,headdim,dstate", [(4, 64, 128), (3, 32, 16), (2, 128, 64)])
@pytest.mark.parametrize("z_rows", [0, 3, 1])  # z contiguous; a slice of wider rows (in_proj's); rows 3 d + 1 wide
def test_folded_gated_norm_equals_the_reference(cuda, dtype, seqlen, nheads, headdim, dstate, z_rows):
    """z_rows 1: an odd row stride, so the SSD epilogue reads z and writes out element by element (no 4-byte pairs)."""
    batch, d, eps = 2, nheads * headdim, 1e-5
    kw = mamba2_inputs(batch, seqlen, nheads, headdim, 1, dstate, dtype)
    if z_rows:
        wide = torch.randn(batch, seqlen, 3 * d + (z_rows == 1), device="cuda").to(dtype)
        wide[..., d:2 * d] = kw["z"].flatten(2)
        kw["z"] = wide[..., d:2 * d].unflatten(-1, (nheads, headdim))
    weight = (torch.randn(d, device="cuda") * 0.5 + 1).to(dtype)
    g_ref, s_ref = chunk_scan_ref(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()})
    sumsq = nan_like((batch, seqlen, nheads), torch.float32)
    out, state = cuda.chunk_scan(**kw, out=nan_like(kw["x"].shape, dtype), norm_weight=weight, norm_sumsq=sumsq,
                                 state_out=nan_like(kw["initial_state"].shape, torch.float32))
    check("out", out, g_ref * weight.float().view(nheads, headdim), dtype)
    check("sumsq", sumsq, g_ref.square().sum(-1), dtype)
    check("state", state, s_ref, dtype)
    _, plain_state = cuda.chunk_scan(**kw)
    assert torch.equal(state, plain_state), "the fold changed the state"
    rstd = torch.rsqrt(sumsq.sum(-1, keepdim=True) / d + eps)
    y_ref = chunk_scan_ref(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in {**kw, "z": None}.items()})[0]
    want = gated_rms_norm_ref(y_ref.flatten(2), kw["z"].float().flatten(2), weight.float(), eps, d)
    check("rmsnorm(g) * w", out.float().flatten(2) * rstd, want, dtype)


def test_folded_gated_norm_is_refused_without_z_or_sumsq(cuda):
    kw = mamba2_inputs(1, 40, 2, 32, 1, 16, torch.float16)
    weight = torch.ones(64, dtype=torch.float16, device="cuda")
    sumsq = torch.zeros(1, 40, 2, device="cuda")
    with pytest.raises(ValueError, match="norm_weight and norm_sumsq together, and z"):
        cuda.chunk_scan(**{**kw, "z": None}, norm_weight=weight, norm_sumsq=sumsq)
    with pytest.raises(ValueError, match="norm_weight and norm_sumsq together"):
        cuda.chunk_scan(**kw, norm_weight=weight)
    with pytest.raises(ValueError, match="norm_sumsq float32"):
        cuda.chunk_scan(**kw, norm_weight=weight, norm_sumsq=sumsq.half())
