"""NativeEngine.decode of a state apart from the pool (one made while the claimed state is alive) on the CPU, the
graph replay replaced by an update of the lent pool rows: the state gets its step, and the pool rows it borrowed
(the claimed state's) get back what they held."""
import torch

from mamba_deploy.config import parse_config
from mamba_deploy.models.state import InferenceState
from mamba_deploy.native import engine as E

CFG = parse_config({"d_model": 32, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"d_state": 16}})


def _stand_in(monkeypatch, batch=4):
    """A NativeEngine without __init__ (no GPU): its pool, buffers and slot bookkeeping on the CPU; a step adds 1
    to every value of the rows it runs on (slot_ids[:b])."""
    eng = object.__new__(E.NativeEngine)
    eng.config, eng.max_batch, eng.device, eng.dtype, eng.state_dtype = CFG, batch, torch.device("cpu"), \
        torch.float32, torch.float32
    eng.static = InferenceState.zeros(CFG, batch, torch.float32)
    eng.ids, eng.logits = torch.zeros(batch, dtype=torch.int64), torch.zeros(batch, 64)
    eng.slot_ids, eng._claim, eng._slot_range = torch.arange(batch), None, (0, batch)
    eng._slot_iota = eng.slot_ids.clone()
    monkeypatch.setattr(E.NativeEngine, "max_seq_len", None, raising=False)

    def replay(b):
        for t in eng.static.tensors():
            t[eng.slot_ids[:b]] += 1
    eng._replay = replay
    return eng


def _fill(state, value):
    for t in state.tensors():
        t.fill_(value)
    return state


def _values(state):
    return {float(v) for t in state.tensors() for v in t.unique()}


def test_decoding_another_state_leaves_the_claimed_one_as_it_was(monkeypatch):
    eng = _stand_in(monkeypatch)
    claimed = _fill(eng.new_state(2), 5.0)
    assert eng.is_pool_view(claimed)
    other = _fill(eng.new_state(2), 7.0)
    assert not eng.is_pool_view(other)
    eng.decode(torch.zeros(2, 1, dtype=torch.int64), other)
    assert _values(other) == {8.0}, "the other state did not get its step"
    assert _values(claimed) == {5.0}, "the claimed state's rows were not given back"
    eng.decode(torch.zeros(2, 1, dtype=torch.int64), claimed)  # the claimed state still steps in place
    assert _values(claimed) == {6.0} and _values(other) == {8.0}
