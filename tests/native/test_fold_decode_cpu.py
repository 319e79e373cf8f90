"""The folded gated norm in decode (NativeEngine(fold_gated_norm=True), native/decode.py) on the CPU, the kernels as
their references: steps with it give the logits and state of steps without (float32, up to rounding), the gated
norm never launched; where it applies (decode.fold_decode)."""
import types

import pytest
import torch
from numerics import slices_sum

from mamba_deploy.models.state import InferenceState
from mamba_deploy.native import decode as D, gemv as G, prefill as P
from mamba_deploy.ops import add_norm_ref, causal_conv1d_update_ref, gated_rms_norm_ref, selective_state_update_ref
from mamba_deploy.ops import cuda as K
from prefill_refs import kernel_on_rows, prefill_weights

# d_state 32: mamba2_step's sizes; d_inner 64 = 4 heads of 16: a head layout it folds
ONE_GROUP = {"d_model": 32, "n_layer": 3, "vocab_size": 50,
             "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 16, "ngroups": 1, "chunk_size": 4}}
VARIANTS = {"plain": {}, "mlp": {"d_intermediate": 48}}  # mlp: the norm after the mixer is norm2


def _step_reference(state, x, dt, A, B, C, D_, dt_bias, dt_limit, *, out, state_rows=None, fold=None):
    """G.mamba2_step's semantics (gemv.h) through selective_state_update_ref, the folded norm included: y, or
    y * silu(z) * weight and the partial sums of (y * silu(z))^2 over 16 channels each."""
    pool, nheads, headdim, dstate = state.shape
    rows = torch.arange(x.shape[0]) if state_rows is None else state_rows
    y, new = selective_state_update_ref(state[rows], x.unflatten(1, (nheads, headdim)), dt, A,
                                        B.unflatten(1, (-1, dstate)), C.unflatten(1, (-1, dstate)), D_, None,
                                        dt_bias, True, dt_limit)
    state[rows] = new
    y = y.flatten(1).float()
    if fold is not None:
        y = y * torch.nn.functional.silu(fold["z"].float())
        fold["sumsq"][:y.shape[0]] = y.square().unflatten(1, (-1, 16)).sum(-1)
        y = y * fold["weight"].float()
    return out.copy_(y)


def _row_norm_reference(x, other, weight, eps, *, out, gate=False, group_size=0, residual_out=None, x_sumsq=None,
                        sumsq_dim=0, sumsq_eps=0.0):
    """G.row_norm's semantics (gemv.h): ops.add_norm_ref after the folded norm's factor (x_sumsq)."""
    if gate:
        return out.copy_(gated_rms_norm_ref(x, other, weight, eps, group_size or None))
    if x.dim() == 3:  # a k-split projection's float32 slices
        x = slices_sum(x, out.dtype)
    v = x.float()
    if x_sumsq is not None:
        v = v * torch.rsqrt(x_sumsq.sum(-1, keepdim=True) / sumsq_dim + sumsq_eps)
    normed, residual = add_norm_ref(v, other, weight, None, eps)
    if residual_out is not None:
        residual_out.copy_(residual)
    return out.copy_(normed)


def _slice_products_reference(x, w, parts, calls):
    """D.slice_products' semantics: parts[s] = x[:, ks] @ w[:, ks].T in float32 over equal k slices ks."""
    calls.append(parts.shape)
    for s, (xs, ws) in enumerate(zip(x.chunk(parts.shape[0], 1), w.chunk(parts.shape[0], 1))):
        parts[s] = xs.float() @ ws.float().T


def _patch_decode_kernels(monkeypatch, gated_calls, sliced_calls=None):
    monkeypatch.setattr(G, "mamba2_step", _step_reference)
    monkeypatch.setattr(D, "slice_products", lambda *a: _slice_products_reference(*a, sliced_calls))
    monkeypatch.setattr(G, "row_norm_ok", lambda *a: True)

    def row_norm(*args, gate=False, **kwargs):
        gated_calls.extend([1] if gate else [])
        return _row_norm_reference(*args, gate=gate, **kwargs)
    monkeypatch.setattr(G, "row_norm", row_norm)
    monkeypatch.setattr(K, "causal_conv1d_update", kernel_on_rows(causal_conv1d_update_ref, 3))


def _engine(raw, fold, batch, **settings):
    """The fields of a NativeEngine that decode.step reads, float32 on the CPU; every projection on cuBLAS's path
    (torch.mm here) unless `settings` change the placement."""
    cfg, (emb, head, norm_f, layers) = prefill_weights(raw)
    c, z = cfg, lambda *shape: torch.zeros(*shape)
    eng = types.SimpleNamespace(
        config=c, dtype=torch.float32, unit=None, layers=layers, emb=emb, head=head, norm_f=norm_f,
        fold_gated_norm=fold, persistent=None, hybrid=None, norm_in_gemv=(), staged_gemv=(),
        staged_max_batch=0, gemv_max_batch=0, tc_max_batch=0, x_proj_tc_max_batch=0, out_proj_tc_max_batch=0,
        ids=torch.zeros(batch, dtype=torch.int64), hidden=z(batch, c.d_model), normed=z(batch, c.d_model),
        residuals=(z(batch, c.d_model), z(batch, c.d_model)), xz=z(batch, c.in_proj_dim), y=z(batch, c.d_inner),
        ynorm=z(batch, c.mixer_out_dim), fold_sumsq=z(batch, G.fold_sumsq_count(c.d_inner)),
        logits=z(batch, c.vocab_size_padded), slot_ids=torch.arange(batch), mlp_h=z(batch, 2 * c.d_intermediate),
        mlp_y=z(batch, c.d_intermediate), out_proj_slices=0, out_parts=z(4, batch, c.d_model),
        static=InferenceState.zeros(c, batch, torch.float32))
    eng.residual = eng.residuals[0]
    vars(eng).update(settings)
    gen = torch.Generator().manual_seed(5)
    for t in eng.static.tensors():
        t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return eng


def _steps(eng, ids):
    logits = []
    for column in ids.unbind(1):
        eng.ids.copy_(column)
        D.step(eng, ids.shape[0], greedy=False)
        logits.append(eng.logits.clone())
    return torch.stack(logits, 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_folded_decode_equals_the_unfolded_one(monkeypatch, variant, batch):
    gated_calls = []
    _patch_decode_kernels(monkeypatch, gated_calls)
    raw = {**ONE_GROUP, **VARIANTS[variant]}
    folded, plain = _engine(raw, True, batch), _engine(raw, False, batch)
    assert all(D.fold_decode(folded, batch, L) for L in folded.layers)
    ids = torch.randint(0, 50, (batch, 4), generator=torch.Generator().manual_seed(3))
    got = _steps(folded, ids)
    assert gated_calls == [], "the gated norm ran although folded"
    want = _steps(plain, ids)
    assert len(gated_calls) == 3 * 4, "the unfolded step runs a gated norm a layer"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(folded.static.tensors(), plain.static.tensors()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_fold_decode_leaves_the_batch_1_norm_inside_out_proj_and_other_layouts():
    eng = _engine(ONE_GROUP, True, 2, norm_in_gemv=("out_proj",), gemv_max_batch=2)
    L = eng.layers[0]
    assert D.fold_decode(eng, 2, L) and not D.fold_decode(eng, 1, L)  # batch 1: the GEMV's norm prologue
    eng.fold_gated_norm = False
    assert not D.fold_decode(eng, 2, L)
    for ssm_cfg in ({"d_state": 16}, {"headdim": 2}, {"ngroups": 2}):  # step kernel sizes, head layout, groups
        other = _engine({**ONE_GROUP, "ssm_cfg": {**ONE_GROUP["ssm_cfg"], **ssm_cfg}}, True, 2)
        assert not D.fold_decode(other, 2, other.layers[0]), ssm_cfg


@pytest.mark.parametrize("nheads,headdim,ok", [(4, 16, True), (2, 4, False), (3, 8, False), (8, 6, False),
                                               (24, 64, True)])
def test_fold_ok_and_the_partial_sums_a_row(nheads, headdim, ok):
    assert G.fold_ok(nheads, headdim) is ok
    if ok:
        assert G.fold_sumsq_count(nheads * headdim) * 16 == nheads * headdim


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("slices", [D.OUT_PROJ_SLICES, 4])
def test_sliced_out_proj_equals_the_whole_one(monkeypatch, variant, fold, slices):
    """out_proj as k slices whose float32 sums the next norm adds (decode.out_proj, SplitSums; the folded norm's
    factor after the sum) gives the logits and state of the whole product."""
    sliced_calls, batch = [], 3
    _patch_decode_kernels(monkeypatch, [], sliced_calls)
    raw = {**ONE_GROUP, **VARIANTS[variant]}
    sliced, whole = _engine(raw, fold, batch, out_proj_slices=slices), _engine(raw, fold, batch)
    ids = torch.randint(0, 50, (batch, 4), generator=torch.Generator().manual_seed(4))
    got = _steps(sliced, ids)
    assert sliced_calls == [(slices, batch, 32)] * 3 * 4, "every layer's out_proj a sliced product"
    want = _steps(whole, ids)
    assert len(sliced_calls) == 3 * 4, "the whole product ran sliced"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(sliced.static.tensors(), whole.static.tensors()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_out_proj_whole_above_the_slices_batch_and_off(monkeypatch):
    sliced_calls, above = [], D.OUT_PROJ_SLICES_MAX_BATCH + 1
    _patch_decode_kernels(monkeypatch, [], sliced_calls)
    for batch, settings in ((above, dict(out_proj_slices=4)), (3, dict(out_proj_slices=0)),
                            (3, dict(out_proj_slices=4, out_parts=None))):  # no buffer: a non-16-bit engine's
        _steps(_engine(ONE_GROUP, False, batch, **settings), torch.zeros(batch, 1, dtype=torch.int64))
    assert sliced_calls == []


def test_split_sums_applied_where_no_row_norm_takes_them():
    parts = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(6))
    hidden = torch.empty(3, 8, dtype=torch.float16)
    got = D.SplitSums(parts, None).applied(hidden)
    assert got.dtype == torch.float16 and torch.equal(got, parts.sum(0).half())
    sumsq = torch.rand(3, 2, generator=torch.Generator().manual_seed(7)) + 0.5
    factor = P.NormFactor(sumsq, 16, 1e-5)
    torch.testing.assert_close(D.SplitSums(parts, factor).applied(hidden), factor.applied(parts.sum(0).half()))
