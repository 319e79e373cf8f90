"""StatePool and the Backend slot API on the onnxruntime and torch backends (Mamba1, Mamba2 and hybrid exports)."""
import pytest
import torch

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.export.artifact import load_export
from mamba_deploy.models.state import layers_view
from mamba_deploy.runtime.backend import load_backend
from mamba_deploy.runtime.slots import SlotSnapshot, StatePool

BACKENDS = ["onnxruntime", "torch"]


@pytest.fixture(scope="module", params=[(b, a) for b in BACKENDS for a in ("mamba1", "mamba2", "hybrid")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request, exports):
    name, arch = request.param
    return load_backend(name, load_export(exports(arch)))


def _ids(shape, seed):
    return torch.randint(1, 90, shape, generator=torch.Generator().manual_seed(seed))


def _decode_steps(backend, pool, slot, tokens):
    """Logits (steps, V) of feeding `tokens` one by one to `slot`."""
    index = torch.tensor([slot])
    return torch.cat([backend.decode_slots(t.view(1, 1), pool, index)[:, -1].clone() for t in tokens])


def test_save_restore_decode_equals_uninterrupted_decode(backend):
    pool = backend.new_pool(4)
    a, b = pool.acquire(), pool.acquire()
    backend.prefill_slot(_ids((1, 9), 0), pool, a)
    snapshot = pool.save(a)
    tokens = _ids((6,), 1)
    uninterrupted = _decode_steps(backend, pool, a, tokens)
    backend.prefill_slot(_ids((1, 5), 2), pool, b)  # b holds something else before the restore
    pool.restore(b, SlotSnapshot.from_bytes(snapshot.to_bytes()))
    assert torch.equal(_decode_steps(backend, pool, b, tokens), uninterrupted)
    pool.reset(a)
    pool.restore(a, snapshot)
    assert torch.equal(_decode_steps(backend, pool, a, tokens), uninterrupted)


def test_slot_api_equals_batch_api_and_leaves_other_slots_alone(backend):
    pool = backend.new_pool(4)
    prompts = _ids((3, 7), 3)
    batch = backend.new_state(3)
    want_prefill = backend.prefill(prompts, batch)
    slots = [2, 0, 3]  # out of order, slot 1 idle
    for row, slot in enumerate(slots):
        got = backend.prefill_slot(prompts[row:row + 1], pool, slot)
        assert torch.allclose(got, want_prefill[row:row + 1], rtol=1e-5, atol=1e-6)
    idle = pool.save(1)
    step = _ids((3, 1), 4)
    want = backend.decode(step, batch)
    got = backend.decode_slots(step, pool, torch.tensor(slots))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    batch_buffers = dict(StatePool(backend.config, batch).buffers)  # the batch state under the pool's names
    for row, slot in enumerate(slots):
        for name, tensor in pool.buffers:
            mine = batch_buffers[name][row]
            # The batch runs 3-row matmuls, the slots 1-row ones: on some CPUs their float32 rounding differs by a
            # few ulps, which deeper layers' states carry (seen: 2.5e-6 on values up to 2.9 in a hybrid's conv.2).
            assert torch.allclose(tensor[slot], mine, rtol=1e-5, atol=1e-5), name
    assert all(torch.equal(t, pool.save(1).tensors[n]) for n, t in idle.tensors.items())


def test_permuted_consecutive_slots_equal_the_gathered_decode(backend):
    """Slots 1..3 in another order (as the scheduler may hold them): onnxruntime runs them on the pool's rows with
    ids and logits permuted; the same logits and states, bit for bit, as the base class's gather / scatter."""
    from mamba_deploy.runtime.backend import Backend

    pools = [backend.new_pool(4), backend.new_pool(4)]
    for pool in pools:
        for slot in (1, 2, 3):
            backend.prefill_slot(_ids((1, 3 + slot), slot), pool, slot)
    slots, step = torch.tensor([3, 1, 2]), _ids((3, 1), 6)
    got = backend.decode_slots(step, pools[0], slots).clone()
    want = Backend.decode_slots(backend, step, pools[1], slots)
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(pools[0].buffers, pools[1].buffers))


def test_the_lowest_free_slot_is_handed_out_first(backend):
    pool = backend.new_pool(4)
    assert [pool.acquire() for _ in range(3)] == [0, 1, 2]
    pool.release(2)
    pool.release(0)
    assert [pool.acquire(), pool.acquire(), pool.acquire()] == [0, 2, 3]


@pytest.mark.parametrize("slots", [[1, 2], [3, 0], [2]])  # a range of rows, out of order, one
def test_reset_many_zeroes_those_slots_only(backend, slots):
    pool = backend.new_pool(4)
    for slot in range(4):
        for _, t in pool.buffers:
            t[slot] = slot + 1
    pool.reset_many(slots)
    for slot in range(4):
        assert all(bool((t[slot] == 0).all()) == (slot in slots) for _, t in pool.buffers)


def test_each_kind_of_state_is_one_block_of_layers(backend):
    """reset_many zeroes a kind's rows of every layer as one view only while the layers share one allocation."""
    state = backend.new_state(3)
    for kind in (state.conv, state.ssm, state.key, state.value, state.attn_conv):
        if kind:
            block = layers_view(kind)
            assert block is not None and block.shape == (len(kind), *kind[0].shape)
            assert all(torch.equal(block[j], t) and (t.data_ptr() - kind[0].data_ptr()) % 256 == 0
                       for j, t in enumerate(kind))
    assert layers_view([t.clone() for t in state.ssm]) is None or len(state.ssm) == 1


def test_acquire_release_reset_and_leak_check(backend):
    pool = backend.new_pool(2)
    a, b = pool.acquire(), pool.acquire()
    assert {a, b} == {0, 1} and pool.free_count == 0 and pool.held == [0, 1]
    with pytest.raises(MambaDeployError, match="no free state slot"):
        pool.acquire()
    backend.prefill_slot(_ids((1, 4), 5), pool, a)
    assert any(t[a].abs().sum() > 0 for _, t in pool.buffers)
    pool.reset(a)
    assert all(t[a].abs().sum() == 0 for _, t in pool.buffers)
    pool.release(a)
    with pytest.raises(MambaDeployError, match="not held"):
        pool.release(a)
    with pytest.raises(MambaDeployError, match=r"1 state slot\(s\) still held: \[1\]"):
        pool.check_no_leaks()
    pool.release(b)
    pool.check_no_leaks()
    assert pool.free_count == 2


def test_pool_buffers_are_the_inference_state(backend):
    """pool.state is an InferenceState over the same memory as the named per-slot buffers."""
    pool = backend.new_pool(3)
    cfg = backend.config
    assert pool.state.batch_size == 3
    mamba, attn = cfg.mamba_layers, cfg.attn_layer_idx
    assert [n for n, _ in pool.buffers] == [f"conv.{i}" for i in mamba] + [f"ssm.{i}" for i in mamba] + \
        [f"key.{i}" for i in attn] + [f"value.{i}" for i in attn] + \
        [f"conv.{i}" for i in attn if cfg.attn_d_conv] + (["length"] if attn else [])
    assert all(t is s for (_, t), s in zip(pool.buffers, pool.state.tensors()))
    if attn:
        assert pool.state.key[0].shape == cfg.kv_cache_shape(3, backend.max_seq_len)
        assert pool.state.length.shape == (3,) and pool.state.length.dtype == torch.int64
    assert pool.state.conv[0].shape == cfg.conv_state_shape(3) and pool.state.ssm[0].shape == cfg.ssm_state_shape(3)


def test_snapshot_of_another_model_is_refused(exports):
    m1, m2 = (load_backend("torch", load_export(exports(a))) for a in ("mamba1", "mamba2"))
    p1, p2 = m1.new_pool(1), m2.new_pool(1)
    snap = p1.save(p1.acquire())
    with pytest.raises(MambaDeployError, match="another model") as info:
        p2.restore(p2.acquire(), SlotSnapshot.from_bytes(snap.to_bytes()))
    assert len(str(info.value).splitlines()) == 1
    wrong_dtype = SlotSnapshot(snap.fingerprint, {n: t.double() for n, t in snap.tensors.items()})
    with pytest.raises(MambaDeployError, match="conv.0 is torch.float64"):
        p1.restore(0, wrong_dtype)


@pytest.mark.parametrize("damage", ["magic", "truncated", "trailing", "header"])
def test_damaged_snapshot_bytes_are_refused(exports, damage):
    backend = load_backend("torch", load_export(exports("mamba1")))
    pool = backend.new_pool(1)
    data = pool.save(pool.acquire()).to_bytes()
    data = {"magic": b"X" + data[1:], "truncated": data[:-3], "trailing": data + b"\0",
            "header": data[:17] + b"!" + data[18:]}[damage]
    with pytest.raises(MambaDeployError, match="snapshot"):
        SlotSnapshot.from_bytes(data)


def test_bfloat16_snapshot_round_trip(exports):
    backend = load_backend("torch", load_export(exports("mamba1", dtype="bfloat16")))
    pool = backend.new_pool(2)
    slot = pool.acquire()
    backend.prefill_slot(_ids((1, 5), 6), pool, slot)
    back = SlotSnapshot.from_bytes(pool.save(slot).to_bytes())
    assert back.tensors["conv.0"].dtype == torch.bfloat16
    pool.restore(1, back)
    assert all(torch.equal(t[1], t[slot]) for _, t in pool.buffers)
