"""NativeEngine state slots: decode_slots / prefill_slot / reset_slot on the static pool, against the engine's
existing decode / prefill on gathered copies of the same states (bit for bit), on the GPU."""
import json

import pytest
import torch
from prompts import ids

from mamba_deploy.errors import ParameterError
from mamba_deploy.models.state import InferenceState
from mamba_deploy.random_init import make_random_checkpoint

pytestmark = pytest.mark.gpu

MAX_BATCH = 64


@pytest.fixture(scope="module")
def slot_checkpoints(checkpoints, tmp_path_factory):
    """The conftest checkpoints and mamba2_ds16: Mamba2 with d_state 16, whose decode takes the library's
    selective_state_update instead of the fused mamba2 step."""
    config = json.loads((checkpoints["mamba2"] / "config.json").read_text())
    config["ssm_cfg"]["d_state"] = 16
    folder = tmp_path_factory.mktemp("slots_ckpt") / "ds16"
    return {**checkpoints, "mamba2_ds16": make_random_checkpoint(config, folder, dtype=torch.float32, seed=5)}


def random_slots(n, seed):
    """n distinct slots out of MAX_BATCH, unsorted (a permutation when n == MAX_BATCH)."""
    slots = torch.randperm(MAX_BATCH, generator=torch.Generator().manual_seed(seed))[:n]
    assert n < 3 or not (slots.diff() == 1).all()
    return slots


def fill_pool(eng, seed):
    """Random non-zero states in every slot (a hybrid's lengths: 0..199 tokens seen); returns a copy of the pool."""
    g = torch.Generator(device=eng.device).manual_seed(seed)
    for t in eng.static.tensors():
        if t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g, device=eng.device) * 0.5)
        else:
            t.copy_(torch.randint(0, 200, t.shape, generator=g, device=eng.device))
    return eng.static.clone()


def gather(state, slots):
    """Rows `slots` of a state, copied."""
    slots = torch.as_tensor(slots).to(state.conv[0].device)
    return state.with_tensors([t[slots].clone() for t in state.tensors()])


def assert_slots(pool, before, slots, expected):
    """Bit for bit: rows `slots` of the pool (a state of all slots) equal `expected` (row r for slot slots[r]),
    and differ from `before` (the step changed them); every other slot is as in `before`."""
    device = pool.conv[0].device
    slots = torch.as_tensor(slots).to(device)
    others = torch.ones(pool.batch_size, dtype=torch.bool, device=device)
    others[slots] = False
    for now, old, new in zip(pool.tensors(), before.tensors(), expected.tensors()):
        assert torch.equal(now[slots], new)
        assert torch.equal(now[others], old[others])
    assert not torch.equal(pool.ssm[0][slots], before.ssm[0][slots]), "the state did not change: the test shows nothing"


def decode_steps(step, first_tok, steps=3):
    """Run `step(tok)` steps times, each argmax feeding the next; returns the stacked logits."""
    tok, out = first_tok, []
    for _ in range(steps):
        logits = step(tok)
        out.append(logits.clone())
        tok = logits[:, -1, :1000].argmax(-1, keepdim=True)
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "mamba2_ds16", "falcon_mamba", "codestral", "mamba2_mlp", "hybrid",
                                  "nemotron_h"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("n,gemv_max_batch,tc_max_batch", [(1, 2, 16), (3, 2, 16), (3, 2, 0), (17, 2, 16), (64, 2, 16),
                                                            (64, 2, 64), (3, 16, 0), (16, 16, 0)])
def test_decode_slots_equals_decode_of_gathered_state(native, slot_checkpoints, arch, dtype, n, gemv_max_batch,
                                                      tc_max_batch):
    eng = native.load_engine(slot_checkpoints[arch], dtype=dtype, max_batch=MAX_BATCH, gemv_max_batch=gemv_max_batch,
                             tc_max_batch=tc_max_batch)
    before = fill_pool(eng, seed=n)
    slots, tok = random_slots(n, seed=n), ids(n, 1, seed=n)
    got = decode_steps(lambda t: eng.decode_slots(t, slots), tok)
    after = eng.static.clone()
    gathered = gather(before, slots)
    ref = decode_steps(lambda t: eng.decode(t, gathered), tok)  # copied into slots 0..n-1 and back
    assert torch.isfinite(ref.float()).all()
    assert torch.equal(got, ref)
    assert_slots(after, before, slots, gathered)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "mamba2_ds16", "falcon_mamba", "mamba2_mlp", "hybrid1"])
@pytest.mark.parametrize("n", [1, 17])
def test_decode_slots_graph_equals_eager(native, slot_checkpoints, arch, n):
    eng = native.load_engine(slot_checkpoints[arch], dtype=torch.float16, max_batch=MAX_BATCH)
    before = fill_pool(eng, seed=7)
    slots, tok, runs = random_slots(n, seed=11).to(eng.device), ids(n, 1, seed=12), []
    for graphs in (True, False):
        eng.use_graphs = graphs
        for dst, src in zip(eng.static.tensors(), before.tensors()):
            dst.copy_(src)
        runs.append((decode_steps(lambda t: eng.decode_slots(t, slots), tok, steps=4), eng.static.clone()))
    assert n in eng.graphs
    (g, gs), (e, es) = runs
    assert torch.isfinite(g.float()).all() and torch.equal(g, e)
    assert all(torch.equal(a, b) for a, b in zip(gs.tensors(), es.tensors()))


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
@pytest.mark.parametrize("slot", [0, 5, 7])
def test_prefill_slot_equals_prefill_of_fresh_state(native, checkpoints, arch, slot):
    eng = native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=8, chunk_len=16)
    before = fill_pool(eng, seed=slot)
    prompt = ids(1, 37, seed=slot)
    eng.reset_slot(slot)
    got = eng.prefill_slot(prompt, slot).clone()
    fresh = InferenceState.zeros(eng.config, 1, eng.dtype, eng.state_dtype, eng.device)
    ref = eng.prefill(prompt, fresh)
    assert torch.isfinite(ref.float()).all() and torch.equal(got, ref)
    assert_slots(eng.static, before, [slot], fresh)


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_serving_flow_equals_each_sequence_alone(rel_err, native, checkpoints, arch):
    """Sequences admitted into scattered slots at different times, decoded together over changing slot sets
    (with the claimed static state decoding in between), equal each sequence decoded alone."""
    eng = native.load_engine(checkpoints[arch], dtype=torch.float32, max_batch=16)
    alone_eng = native.load_engine(checkpoints[arch], dtype=torch.float32, max_batch=1)
    prompts = {13: ids(1, 9, seed=1), 2: ids(1, 30, seed=2), 8: ids(1, 17, seed=3)}
    fill_pool(eng, seed=4)  # garbage left by earlier sequences: reset_slot must clear it
    static = eng.new_state(2)  # slots 0..1, decoded between the slot steps below
    eng.prefill(ids(2, 5, seed=5), static)
    tokens = {}
    for slot, p in prompts.items():
        eng.reset_slot(slot)
        tokens[slot] = [eng.prefill_slot(p, slot)[:, -1, :1000].argmax(-1, keepdim=True)]
    schedule = [[13, 2], [8, 13, 2], [2], [8, 2, 13], [13, 8]]  # slot sets of successive steps
    logits = {s: [] for s in prompts}
    for step_slots in schedule:
        tok = torch.cat([tokens[s][-1] for s in step_slots])
        out = eng.decode_slots(tok, torch.tensor(step_slots)).clone()  # (the logits buffer is reused)
        eng.decode(ids(2, 1, seed=len(step_slots)), static)
        for r, s in enumerate(step_slots):
            logits[s].append(out[r:r + 1].clone())
            tokens[s].append(out[r:r + 1, -1, :1000].argmax(-1, keepdim=True))
    for slot, p in prompts.items():
        st = alone_eng.new_state(1)
        tok = alone_eng.prefill(p, st)[:, -1, :1000].argmax(-1, keepdim=True)
        assert torch.equal(tok, tokens[slot][0])
        for i in range(len(logits[slot])):
            ref = alone_eng.decode(tok, st)
            assert rel_err(logits[slot][i], ref) <= 1e-5, f"slot {slot} step {i}"
            tok = ref[:, -1, :1000].argmax(-1, keepdim=True)
            assert torch.equal(tok, tokens[slot][i + 1])
        del st


@pytest.mark.parametrize("arch", ["mamba1", "mamba2"])
def test_static_decode_unaffected_by_slot_decodes(native, checkpoints, arch):
    """decode(state) of the claimed state (slots 0..3) between decode_slots steps == decode(state) alone: the
    slot index buffer is pointed back at slots 0..3, and the slot steps never touch them."""
    runs = []
    for interleave in (True, False):
        eng = native.load_engine(checkpoints[arch], dtype=torch.float16, max_batch=12)
        fill_pool(eng, seed=9)
        state = eng.new_state(4)
        eng.prefill(ids(4, 6, seed=10), state)
        tok, outs = ids(4, 1, seed=11), []
        for step in range(4):
            if interleave:
                eng.decode_slots(ids(3, 1, seed=step), torch.tensor([9, 5, 11]))
                eng.decode_slots(ids(1, 1, seed=step), torch.tensor([7], device=eng.device))
            logits = eng.decode(tok, state)
            outs.append(logits.clone())
            tok = logits[:, -1, :1000].argmax(-1, keepdim=True)
        runs.append((torch.stack(outs), state.clone()))
    (a, sa), (b, sb) = runs
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(sa.conv + sa.ssm, sb.conv + sb.ssm))


def test_decode_of_a_slot_view_runs_in_place(native, checkpoints):
    """A state that is slots [k, k + b) of the pool (slot_state) decodes on those slots: no copy into slots 0..;
    a state apart from the pool decodes through slot 0, which gets back what it held."""
    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float16, max_batch=8)
    before = fill_pool(eng, seed=3)
    view = eng.slot_state(6)
    assert eng._first_slot(view) == 6
    tok = ids(1, 1, seed=3)
    got = eng.decode(tok, view).clone()
    gathered = gather(before, [6])
    ref = eng.decode(tok, gathered)  # through slot 0 (copied in and out, then slot 0 given back)
    assert torch.equal(got, ref)
    assert_slots(eng.static.clone(), before, [6], gathered)


def test_reset_slot_zeroes_one_slot(native, checkpoints):
    eng = native.load_engine(checkpoints["mamba2"], dtype=torch.float16, max_batch=4)
    before = fill_pool(eng, seed=1)
    eng.reset_slot(2)
    for pool, old in zip(eng.static.conv + eng.static.ssm, before.conv + before.ssm):
        assert not pool[2].any()
        assert torch.equal(pool[[0, 1, 3]], old[[0, 1, 3]])


def test_bad_slots_are_refused(native, checkpoints):
    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float16, max_batch=4)
    tok = ids(2, 1, seed=0)
    for slots, why in (([1, 1], "distinct"), ([0, 4], "0..3"), ([-1, 2], "0..3"), ([0.0, 1.0], "integers"),
                       ([0, 1, 2], r"\(2,\)"), (torch.tensor([[0, 1]]), r"\(2,\)")):
        with pytest.raises(ParameterError, match=why):
            eng.decode_slots(tok, slots)
    with pytest.raises(ParameterError, match="input_ids"):
        eng.decode_slots(ids(5, 1, seed=0), [0, 1, 2, 3, 0])
    with pytest.raises(ParameterError, match="input_ids"):
        eng.decode_slots(ids(2, 2, seed=0), [0, 1])
    for bad in (4, -1, 1.0, "0", None):
        with pytest.raises(ParameterError, match="slot"):
            eng.reset_slot(bad)
        with pytest.raises(ParameterError, match="slot"):
            eng.prefill_slot(ids(1, 3, seed=0), bad)
    with pytest.raises(ParameterError, match="input_ids"):
        eng.prefill_slot(ids(2, 3, seed=0), 0)
