"""Recurrent-state invariants of the reference LM, in every dtype."""
import pytest
import torch

from mamba_deploy.random_init import make_random_checkpoint
from mamba_deploy import load_reference

CONFIGS = {
    "mamba1": {"d_model": 48, "n_layer": 2, "vocab_size": 97, "ssm_cfg": {"d_state": 8, "d_conv": 4},
               "pad_vocab_size_multiple": 8, "tie_embeddings": True},
    "mamba2": {"d_model": 64, "n_layer": 2, "vocab_size": 97, "pad_vocab_size_multiple": 16,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8,
                           "d_conv": 3}, "tie_embeddings": False},
}
# bf16 keeps 8 mantissa bits: on random tiny models even transformers' own bf16 Mamba lands near 1e-2 of its
# float32 logits (test_reference_vs_hf.py checks we are no worse than it), so bf16 gets 2.5e-2 here.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2.5e-2}


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "ckpt"
    return make_random_checkpoint(CONFIGS[request.param], folder, dtype=torch.float32, seed=3)


@pytest.mark.parametrize("k", [1, 5])
def test_prefill_then_decode_equals_longer_prefill(checkpoint, k):
    model = load_reference(checkpoint)
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(k))
    full = model.prefill(ids, model.new_state(2))
    state = model.new_state(2)
    model.prefill(ids[:, :-k], state)
    for t in range(21 - k, 21):
        logits = model.decode(ids[:, t:t + 1], state)
    err = rel_err(logits, full)
    print(f"prefill(L) vs prefill(L-{k}) + {k} decodes: rel err {err:.2e}")
    assert err <= 1e-5


def test_chunked_prefill_equals_one_prefill(checkpoint):
    model = load_reference(checkpoint)
    ids = torch.randint(0, 97, (3, 37), generator=torch.Generator().manual_seed(7))
    one_state, chunked_state = model.new_state(3), model.new_state(3)
    one = model.prefill(ids, one_state)
    chunked = model.prefill(ids, chunked_state, chunk_len=10)
    assert rel_err(chunked, one) <= 1e-5
    for a, b in zip(one_state.ssm + one_state.conv, chunked_state.ssm + chunked_state.conv):
        assert rel_err(b, a) <= 1e-5


def test_all_logits_last_position_equals_prefill(checkpoint):
    model = load_reference(checkpoint)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(8))
    assert rel_err(model.prefill(ids, model.new_state(1)), model(ids)[:, -1:]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_tolerance(checkpoint, dtype):
    ref = load_reference(checkpoint, dtype=torch.float32)
    half = load_reference(checkpoint, dtype=dtype)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(9))
    assert half.dtype == dtype
    s_ref, s_half = ref.new_state(2), half.new_state(2)
    errs = [rel_err(half.prefill(ids, s_half), ref.prefill(ids, s_ref))]
    for t in range(4):
        nxt = ids[:, t:t + 1]
        errs.append(rel_err(half.decode(nxt, s_half), ref.decode(nxt, s_ref)))
    print(f"{dtype}: rel errs {[f'{e:.1e}' for e in errs]}")
    assert max(errs) <= TOL[dtype]


def test_decode_rejects_bad_shapes(checkpoint):
    model = load_reference(checkpoint)
    with pytest.raises(ValueError, match=r"\(batch, 1\)"):
        model.decode(torch.zeros(2, 3, dtype=torch.long), model.new_state(2))
    with pytest.raises(ValueError, match="batch"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long), model.new_state(2))


def test_forward_with_state_is_trainable(checkpoint):
    """Backward through forward(ids, state) works although forward writes the state in place."""
    model = load_reference(checkpoint).requires_grad_(True)
    state = model.new_state(2)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(4))
    model(ids[:, :4], state)
    loss = model(ids[:, 4:], state).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
