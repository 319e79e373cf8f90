"""The onnxruntime backend's in-place IO binding (prepared decode bindings, states bound in place) gives exactly the
values of a plain `InferenceSession.run` on numpy copies."""
import numpy as np
import pytest
import torch

from mamba_deploy.export.artifact import load_export
from mamba_deploy.export.testing import tiny_export
from mamba_deploy.runtime.backend import load_backend


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def backend(request, tmp_path_factory):
    folder = tiny_export(request.param, tmp_path_factory.mktemp(request.param))
    return load_backend("onnxruntime", load_export(folder), threads=2)


def plain_run(be, kind, ids, conv, ssm):
    """One session.run on numpy copies -> (logits, new conv, new ssm)."""
    n = be.config.n_layer
    feeds = {"input_ids": ids.numpy()}
    for i in range(n):
        feeds[f"past_conv_state.{i}"] = conv[i].numpy().copy()
        feeds[f"past_ssm_state.{i}"] = ssm[i].numpy().copy()
    names = ["logits", *[f"present_conv_state.{i}" for i in range(n)], *[f"present_ssm_state.{i}" for i in range(n)]]
    out = [torch.from_numpy(a) for a in be.sessions[kind].run(names, feeds)]
    return out[0], out[1:n + 1], out[n + 1:]


@pytest.mark.parametrize("batch,prompt_len", [(1, 1), (1, 7), (3, 5)])
def test_binding_equals_plain_run_bit_for_bit(backend, batch, prompt_len):
    gen = torch.Generator().manual_seed(batch * 10 + prompt_len)
    ids = torch.randint(1, backend.config.vocab_size, (batch, prompt_len + 4), generator=gen)
    state = backend.new_state(batch)
    conv, ssm = [t.clone() for t in state.conv], [t.clone() for t in state.ssm]
    got = backend.prefill(ids[:, :prompt_len], state)
    want, conv, ssm = plain_run(backend, "prefill", ids[:, :prompt_len], conv, ssm)
    assert torch.equal(got, want)
    for t in range(prompt_len, ids.shape[1]):
        got = backend.decode(ids[:, t:t + 1], state)
        want, conv, ssm = plain_run(backend, "decode", ids[:, t:t + 1], conv, ssm)
        assert torch.equal(got, want)
        assert all(torch.equal(a, b) for a, b in zip(state.conv + state.ssm, conv + ssm))


def test_two_states_interleaved_and_strided_views(backend):
    """Prepared bindings of two live states do not mix; a state of strided views (the fallback) agrees exactly."""
    cfg = backend.config
    ids = torch.randint(1, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    a, b = backend.new_state(1), backend.new_state(1)
    big = backend.new_state(2)  # row 1 of it: views that are not contiguous for batch > 1 layouts
    strided = type(a)([t.transpose(0, -1).contiguous().transpose(0, -1)[1:] for t in big.conv],
                      [t.transpose(0, -1).contiguous().transpose(0, -1)[1:] for t in big.ssm])
    assert not all(t.is_contiguous() for t in strided.conv + strided.ssm)
    backend.prefill(ids[:1, :3], a)
    backend.prefill(ids[1:, :3], b)
    backend.prefill(ids[1:, :3], strided)
    for t in range(3, 6):
        la = backend.decode(ids[:1, t:t + 1], a).clone()
        lb = backend.decode(ids[1:, t:t + 1], b).clone()
        ls = backend.decode(ids[1:, t:t + 1], strided)
        assert torch.equal(lb, ls)
        assert not torch.equal(la, lb)
    alone = backend.new_state(1)
    backend.prefill(ids[:1, :3], alone)
    for t in range(3, 6):
        last = backend.decode(ids[:1, t:t + 1], alone)
    assert torch.equal(last, la)
    assert all(torch.equal(x, y) for x, y in zip(a.conv + a.ssm, alone.conv + alone.ssm))
    assert np.isfinite(la.numpy()).all()


@pytest.mark.parametrize("slots", [[1, 2], [2], [3, 0], [0, 1, 2, 3]])
def test_slots_on_pool_rows_equal_gather_scatter(backend, slots):
    """prefill_slot / decode_slots on the pool's rows (consecutive slots) or gathered (others) == Backend's default."""
    from mamba_deploy.runtime.backend import Backend

    cfg = backend.config
    ids = torch.randint(1, cfg.vocab_size, (len(slots), 7), generator=torch.Generator().manual_seed(len(slots)))
    pools = [backend.new_pool(4), backend.new_pool(4)]
    index = torch.tensor(slots, dtype=torch.int64)
    for row, slot in enumerate(slots):
        a = backend.prefill_slot(ids[row:row + 1, :4], pools[0], slot)
        b = Backend.prefill_slot(backend, ids[row:row + 1, :4], pools[1], slot)
        assert torch.equal(a, b)
    for t in range(4, 7):
        a = backend.decode_slots(ids[:, t:t + 1], pools[0], index).clone()
        b = Backend.decode_slots(backend, ids[:, t:t + 1], pools[1], index)
        assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(pools[0].state.conv + pools[0].state.ssm,
                                                 pools[1].state.conv + pools[1].state.ssm))


def test_slot_out_of_range_is_an_error(backend):
    from mamba_deploy.errors import MambaDeployError

    pool = backend.new_pool(2)
    with pytest.raises(MambaDeployError, match="outside the pool"):
        backend.prefill_slot(torch.ones(1, 3, dtype=torch.int64), pool, 2)
    with pytest.raises(MambaDeployError, match="outside the pool"):
        backend.decode_slots(torch.ones(2, 1, dtype=torch.int64), pool, torch.tensor([1, 2]))
