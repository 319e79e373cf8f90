"""The persistent batch-1 decode (NativeEngine(persistent_decode=True): every layer of a Mamba1 or Mamba2 step in one
cooperative launch) against the engine's launch-per-kernel step and the float32 reference (all on the GPU)."""
from functools import partial

import pytest
import torch
from prompts import ids as prompt_ids

from mamba_deploy.checkpoint import load_reference
from mamba_deploy.random_init import make_random_checkpoint

pytestmark = pytest.mark.gpu

ALL_STAGED = {"staged_gemv": ("in_proj", "x_proj", "out_proj")}  # the per-kernel step with the same arithmetic
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# d_model 200 / 192 (no row_norm: its groups are whole warps); Mamba1: odd dt_rank 13, d_state 12, in_proj and
# out_proj biases; Mamba2: 12 heads of 32, one group (the gated norm over all 384 channels), d_state 64
ODD = {"mamba1": {"d_model": 200, "n_layer": 3, "vocab_size": 500, "pad_vocab_size_multiple": 8,
                  "ssm_cfg": {"d_state": 12, "bias": True}, "tie_embeddings": False},
       "mamba2": {"d_model": 192, "n_layer": 3, "vocab_size": 500, "pad_vocab_size_multiple": 16,
                  "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "headdim": 32, "ngroups": 1, "chunk_size": 16},
                  "tie_embeddings": False}}
FAMILIES = ["mamba1", "mamba2"]  # conftest.CONFIGS with d_model 256: the bit-for-bit cases
# The 2.7b / 2.8b models' widths in two layers: d_model 2,560 (the residual norm: 10 warps of row_norm's block, two
# levels of the consumers' groups), d_inner 5,120 (Mamba2's gated norm: 20 warps, three levels; Mamba1: 39-40
# channels a multiprocessor), in_proj rows of 5 KB (three a ring slot)
WIDE = {"mamba1": {"d_model": 2560, "n_layer": 2, "vocab_size": 500, "pad_vocab_size_multiple": 8,
                   "tie_embeddings": False},
        "mamba2": {"d_model": 2560, "n_layer": 2, "vocab_size": 500, "pad_vocab_size_multiple": 16,
                   "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 1},
                   "tie_embeddings": False}}


ids = partial(prompt_ids, vocab=500)  # the tiny models' vocabulary


@pytest.fixture(scope="module")
def odd_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("persistent")
    return {arch: make_random_checkpoint(cfg, root / arch, dtype=torch.float32, seed=7) for arch, cfg in ODD.items()}


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


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "model"])
def test_equals_the_staged_step_bit_for_bit(native, checkpoints, arch, dtype, state_dtype):
    """d_model 256: each phase's arithmetic is the per-kernel step's (row_norm, gemv's staged form, mamba1_step /
    mamba2_step, the gated row norm), so logits and states agree exactly, step after step, on slot 3 of the pool."""
    sdt = torch.float32 if state_dtype == "float32" else dtype
    base = native.load_engine(checkpoints[arch], dtype=dtype, state_dtype=sdt, max_batch=4, **ALL_STAGED)
    mega = native.load_engine(checkpoints[arch], dtype=dtype, state_dtype=sdt, max_batch=4, persistent_decode=True)
    prompt = ids(1, 19, seed=2)
    want, want_state = _steps(base, prompt, 12, slot=3)
    got, got_state = _steps(mega, prompt, 12, slot=3)
    assert not mega.persistent.failed()
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"step {i}: max |diff| {(g.float() - w.float()).abs().max().item():.3g}"
    for g, w in zip(got_state, want_state):
        assert torch.equal(g, w)


@pytest.mark.parametrize("arch", FAMILIES)
def test_wide_models_equal_the_staged_step_bit_for_bit(native, tmp_path, monkeypatch, arch):
    """At real models' widths too, where the per-kernel step stages every projection (here forced: the engine
    stages a block's rows only up to 128 KB, gemv.STAGED_MAX_BLOCK_BYTES) the steps agree exactly."""
    from mamba_deploy.native import gemv

    monkeypatch.setattr(gemv, "STAGED_MAX_BLOCK_BYTES", 1 << 30)
    ckpt = make_random_checkpoint(WIDE[arch], tmp_path / arch, dtype=torch.float16, seed=5)
    base = native.load_engine(ckpt, dtype=torch.float16, max_batch=1, **ALL_STAGED)
    mega = native.load_engine(ckpt, dtype=torch.float16, max_batch=1, persistent_decode=True)
    prompt = ids(1, 5, seed=9)
    want, want_state = _steps(base, prompt, 4)
    got, got_state = _steps(mega, prompt, 4)
    assert not mega.persistent.failed()
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"step {i}: max |diff| {(g.float() - w.float()).abs().max().item():.3g}"
    assert all(torch.equal(g, w) for g, w in zip(got_state, want_state))


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_phase_outputs_equal_the_staged_step(native, checkpoints, arch, dtype):
    """After one step the static buffers hold the last layer's phase outputs: the first that differs from the
    per-kernel step's names the phase at fault (in_proj + conv, x_proj, the step, out_proj, the residual)."""
    engines = [native.load_engine(checkpoints[arch], dtype=dtype, max_batch=1, use_graphs=False, **options)
               for options in (ALL_STAGED, {"persistent_decode": True})]
    buffers = []
    for eng in engines:
        state = eng.new_state(1)
        logits = eng.prefill(ids(1, 7, seed=3), state)
        eng.decode(logits[:, -1].argmax(-1, keepdim=True), state)
        phases = {"xz (in_proj + conv)": eng.xz[0], "y (step)": eng.y[0], "hidden (out_proj)": eng.hidden[0],
                  "residual": eng.residual[0], "logits": eng.logits[0]}
        if eng.xdbl is not None:  # Mamba1
            phases["xdbl (x_proj)"] = eng.xdbl[0]
        buffers.append(phases)
    for name, want in buffers[0].items():
        got = buffers[1][name]
        assert torch.equal(got, want), f"{name}: max |diff| {(got.float() - want.float()).abs().max().item():.3g}"


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_reference(rel_err, native, odd_checkpoints, arch, dtype):
    """Odd shapes (ODD): 24 steps against the float32 reference."""
    ref = load_reference(odd_checkpoints[arch], torch.float32, "cuda")
    eng = native.load_engine(odd_checkpoints[arch], dtype=dtype, max_batch=1, persistent_decode=True)
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


@pytest.mark.parametrize("arch", FAMILIES)
def test_graph_replay_equals_eager(native, checkpoints, arch):
    graphed = native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=2, persistent_decode=True)
    eager = native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=2, persistent_decode=True,
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


@pytest.mark.parametrize("arch", ["falcon_mamba", "mamba1_mlp", "hybrid1", "codestral", "mamba2_d_ssm"])
def test_unsupported_models_are_refused(native, checkpoints, arch):
    from mamba_deploy.errors import ParameterError

    with pytest.raises(ParameterError, match="persistent_decode"):
        native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=1, persistent_decode=True)
