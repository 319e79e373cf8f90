"""The persistent batch-1 decode (NativeEngine(persistent_decode=True): every Mamba1 layer of a step in one
cooperative launch) against the engine's launch-per-kernel step and the float32 reference (all on the GPU)."""
import pytest
import torch

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.random_init import make_random_checkpoint

pytestmark = pytest.mark.gpu

ALL_STAGED = {"staged_gemv": ("in_proj", "x_proj", "out_proj")}  # the per-kernel step with the same arithmetic
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# d_model 200 (no row_norm: its groups are whole warps), odd dt_rank 13, d_state 12, in_proj / out_proj biases
ODD = {"d_model": 200, "n_layer": 3, "vocab_size": 500, "pad_vocab_size_multiple": 8,
       "ssm_cfg": {"d_state": 12, "bias": True}, "tie_embeddings": False}


def ids(batch, length, seed=0, vocab=500):
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory):
    return make_random_checkpoint(ODD, tmp_path_factory.mktemp("persistent") / "odd", dtype=torch.float32, seed=7)


def _steps(eng, prompt, steps, slot=0):
    """Prefill `prompt` into `slot`, then greedy steps there: the logits of each step, the slot's final state."""
    eng.reset_slot(slot)
    logits = eng.prefill_slot(prompt, slot)
    out = []
    for _ in range(steps):
        tok = logits[:, -1].float().argmax(-1, keepdim=True)
        logits = eng.decode_slots(tok, [slot])
        out.append(logits.clone())
    return out, [t[slot].clone() for t in eng.static.conv + eng.static.ssm]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_equals_the_staged_step_bit_for_bit(native, checkpoints, dtype, state_dtype):
    """d_model 256: each phase's arithmetic is the per-kernel step's (row_norm, gemv's staged form, mamba1_step),
    so logits and states agree exactly, step after step, on slot 3 of the pool."""
    sdt = torch.float32 if state_dtype == "float32" else dtype
    base = native.load_engine(checkpoints["mamba1"], dtype=dtype, state_dtype=sdt, max_batch=4, **ALL_STAGED)
    mega = native.load_engine(checkpoints["mamba1"], dtype=dtype, state_dtype=sdt, max_batch=4, persistent_decode=True)
    prompt = ids(1, 19, seed=2)
    want, want_state = _steps(base, prompt, 12, slot=3)
    got, got_state = _steps(mega, prompt, 12, slot=3)
    assert not mega.persistent.failed()
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"step {i}: max |diff| {(g.float() - w.float()).abs().max().item():.3g}"
    for g, w in zip(got_state, want_state):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_reference(rel_err, native, odd_checkpoint, dtype):
    """Odd shapes (d_model 200, dt_rank 13, d_state 12, biases): 24 steps against the float32 reference."""
    ref = load_reference(odd_checkpoint, torch.float32, "cuda")
    eng = native.load_engine(odd_checkpoint, dtype=dtype, max_batch=1, persistent_decode=True)
    prompt = ids(1, 23, seed=4)
    rs, es = ref.new_state(1), eng.new_state(1)
    r, e = ref.prefill(prompt.cuda(), rs), eng.prefill(prompt, es)
    worst = 0.0
    for _ in range(24):
        tok = r[:, -1, :500].argmax(-1, keepdim=True)
        r, e = ref.decode(tok, rs), eng.decode(tok, es)
        worst = max(worst, rel_err(e, r))
    assert not eng.persistent.failed()
    assert worst <= TOL[dtype], f"max relative logits error over 24 steps: {worst:.3g}"
    assert rel_err(es.ssm[-1], rs.ssm[-1]) <= 10 * TOL[dtype]


def test_graph_replay_equals_eager(native, checkpoints):
    graphed = native.load_engine(checkpoints["mamba1"], dtype=torch.float16, max_batch=2, persistent_decode=True)
    eager = native.load_engine(checkpoints["mamba1"], dtype=torch.float16, max_batch=2, persistent_decode=True,
                               use_graphs=False)
    prompt = ids(1, 9, seed=6)
    want, _ = _steps(eager, prompt, 6, slot=1)
    got, _ = _steps(graphed, prompt, 6, slot=1)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_batch_above_one_keeps_the_per_kernel_step(native, checkpoints):
    """The option changes batch 1 only: a batch-2 step equals the default engine's."""
    prompt = ids(2, 11, seed=8)
    outs = []
    for options in ({}, {"persistent_decode": True}):
        eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float16, max_batch=2, **options)
        state = eng.new_state(2)
        logits = eng.prefill(prompt, state)
        outs.append(eng.decode(logits[:, -1].argmax(-1, keepdim=True), state).clone())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("arch", ["mamba2", "falcon_mamba", "mamba1_mlp", "hybrid1"])
def test_unsupported_models_are_refused(native, checkpoints, arch):
    from mamba_deploy.errors import ParameterError

    with pytest.raises(ParameterError, match="persistent_decode"):
        native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=1, persistent_decode=True)
