"""The folded gated norm's wiring (NativeEngine(fold_gated_norm=True), native/prefill.py) on the CPU, the kernels as
their references: a prefill with it gives the logits and state of one without (float32, up to rounding), the gated
norm kernel never launched; where it applies (fold_applies)."""
import types

import pytest
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.models.state import InferenceState
from mamba_deploy.native import prefill as P, prefill_split as S
from mamba_deploy.ops import cuda as K
from prefill_refs import FakeWavefront, patch_prefill_kernels, prefill_weights

ONE_GROUP = {"d_model": 32, "n_layer": 3, "vocab_size": 50,
             "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "ngroups": 1, "chunk_size": 4}}


def _engine(raw, fold, parts=1):
    cfg, (emb, head, norm_f, layers) = prefill_weights(raw)
    return types.SimpleNamespace(config=cfg, dtype=torch.float32, unit=None, layers=layers, emb=emb, head=head,
                                 norm_f=norm_f, prefill_split=parts, fold_gated_norm=fold)


def _prefill(eng, ids, pad, all_logits):
    state = InferenceState.zeros(eng.config, ids.shape[0], torch.float32)
    if S.applies(eng, ids.shape[1]):
        logits = S.run(eng, FakeWavefront(), ids, state, all_logits, pad=pad)
    else:
        hidden, residual, factor = eng.emb[ids], None, None
        for L in eng.layers:
            hidden, residual, factor = P.layer(eng, L, hidden, residual, state, pad=pad, factor=factor)
        logits = P.head_logits(eng, hidden, residual, all_logits, factor)
    return logits, state


VARIANTS = {"plain": {}, "mlp": {"d_intermediate": 48}, "layer_norm": {"rms_norm": False}}  # the norm after: norm2


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("all_logits", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_folded_prefill_equals_the_unfolded_one(monkeypatch, parts, all_logits, padded, variant):
    patch_prefill_kernels(monkeypatch)
    monkeypatch.setattr(S, "MIN_PART_TOKENS", 8)
    gated_calls = []
    unfolded_norm = K.gated_rms_norm
    monkeypatch.setattr(K, "gated_rms_norm", lambda *a, **k: gated_calls.append(1) or unfolded_norm(*a, **k))
    n = 40
    ids = torch.randint(0, 50, (2, n), generator=torch.Generator().manual_seed(3))
    pad = P.left_padding(parse_config(ONE_GROUP), (2, n), [n, 23], torch.device("cpu"))[0] if padded else None
    raw = {**ONE_GROUP, **VARIANTS[variant]}
    folded, plain = _engine(raw, True, parts), _engine(raw, False, parts)
    assert all(P.fold_applies(folded.config, L, torch.float32) for L in folded.layers)
    got, got_state = _prefill(folded, ids, pad, all_logits)
    assert gated_calls == [], "the gated norm ran although folded"
    want, want_state = _prefill(plain, ids, pad, all_logits)
    assert len(gated_calls) == 3 * parts, "the unfolded prefill runs a gated norm a layer (and part)"
    keep = slice(n - 23, None) if padded and all_logits else slice(None)
    torch.testing.assert_close(got[..., keep, :], want[..., keep, :], rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(got_state.tensors(), want_state.tensors()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_norm_factor_of_the_last_token_and_applied():
    sumsq = torch.rand(2, 5, 4) * 10
    factor = P.NormFactor(sumsq, 64, 1e-5)
    assert torch.equal(factor.last().sumsq, sumsq[:, -1:])
    hidden = torch.randn(2, 5, 8)
    want = hidden * torch.rsqrt(sumsq.sum(-1, keepdim=True) / 64 + 1e-5)
    torch.testing.assert_close(factor.applied(hidden), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("change,applies", [
    ({}, True),
    ({"ssm_cfg": {**ONE_GROUP["ssm_cfg"], "ngroups": 2}}, False),           # two norm groups
    ({"ssm_cfg": {**ONE_GROUP["ssm_cfg"], "d_ssm": 32}}, False),            # an MLP part beside the SSM
    ({"ssm_cfg": {**ONE_GROUP["ssm_cfg"], "bias": True}}, False),           # out_proj with a bias
    ({"ssm_cfg": {"d_state": 8}}, False),                                   # Mamba1
])
def test_fold_applies_to_one_norm_group_without_bias_or_mlp_part(change, applies):
    cfg, (*_, layers) = prefill_weights({**ONE_GROUP, **change})
    assert P.fold_applies(cfg, layers[0], torch.float32) is applies
    if applies:
        assert not P.fold_applies(cfg, layers[0], torch.float16)  # the norm weight in another dtype
