"""The split prefill (NativeEngine(prefill_split=k): a chunk as a wavefront of up to k parts on as many streams) ==
the sequential prefill in chunks of its parts, bit for bit: eager, all logits or the last; as prefill graphs on
slots of the pool (other slots untouched); left-padded fresh prompts in one padded graph; on the GPU."""
import pytest
import torch
from prompts import ids
from test_native_slots import fill_pool

from mamba_deploy.native import prefill_split as S

pytestmark = pytest.mark.gpu

ARCHS = ["mamba1", "mamba2", "falcon_mamba", "codestral", "mamba2_d_ssm", "mamba1_mlp", "mamba2_mlp"]
PART = S.MIN_PART_TOKENS  # every part of these prompts is this long: a multiple of each model's align


def _assert_same_state(a, b):
    for mine, theirs in zip(a.tensors(), b.tensors()):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("parts,batch", [(2, 1), (3, 2)])
def test_split_equals_chunks_of_its_parts_bitwise(native, checkpoints, arch, dtype, parts, batch):
    split = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, prefill_graph_tokens=0,
                               prefill_split=parts)
    chunks = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, prefill_graph_tokens=0, chunk_len=PART)
    length = parts * PART
    assert S.part_bounds(length, parts, S.align(split.config)) == [(j * PART, (j + 1) * PART) for j in range(parts)]
    assert S.applies(split, length) and not S.applies(chunks, length)
    for all_logits, seed in ((False, 1), (True, 2)):
        mine, theirs = split.new_state(batch), chunks.new_state(batch)
        prompt = ids(batch, length, seed)
        got = split.prefill(prompt, mine, all_logits=all_logits)
        want = chunks.prefill(prompt, theirs, all_logits=all_logits)
        assert got.shape == (batch, length if all_logits else 1, split.config.vocab_size_padded)
        assert torch.equal(got, want)
        _assert_same_state(mine, theirs)
        assert mine.ssm[0].abs().sum() > 0, "the state did not change"
        del mine, theirs


@pytest.mark.parametrize("arch", ["mamba1", "mamba2", "codestral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_graphs_on_slots_equal_eager_chunks_bitwise(native, checkpoints, arch, dtype):
    graphed = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, prefill_split=2)
    eager = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=4, prefill_graph_tokens=0, chunk_len=PART)
    batch, length = 2, 2 * PART
    assert graphed.prefill_graphs.applies(batch, length, False)
    for first, seed in ((0, 3), (2, 4)):  # the same graph on another set of slots
        before = fill_pool(graphed, seed)
        fill_pool(eager, seed)
        prompt = ids(batch, length, seed)
        got = graphed.prefill(prompt, graphed.slot_state(first, batch))
        want = eager.prefill(prompt, eager.slot_state(first, batch))
        assert torch.equal(got, want)
        _assert_same_state(graphed.static, eager.static)
        for mine, old in zip(graphed.static.tensors(), before.tensors()):
            assert torch.equal(mine[:first], old[:first]) and torch.equal(mine[first + batch:], old[first + batch:])
    assert set(graphed.prefill_graphs.graphs) == {(batch, length, False)}
    # fresh prompts of different lengths: one padded graph, the split inside it
    lengths = [length, PART + 37]
    for eng in (graphed, eager):
        for slot in range(eng.max_batch):
            eng.reset_slot(slot)
    prompt = ids(batch, length, 5)
    got = graphed.prefill(prompt, graphed.slot_state(0, batch), lengths=lengths)
    want = eager.prefill(prompt, eager.slot_state(0, batch), lengths=lengths)
    assert (batch, length, True) in graphed.prefill_graphs.graphs
    assert torch.equal(got, want)
    _assert_same_state(graphed.static, eager.static)


def test_split_leaves_hybrids_and_short_chunks_whole(native, checkpoints):
    hybrid = native.load_engine(checkpoints["hybrid"], dtype=torch.float32, max_batch=2, prefill_split=2)
    assert not S.applies(hybrid, 4 * PART)
    plain = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=2, prefill_split=2)
    assert S.applies(plain, 2 * PART) and not S.applies(plain, 2 * PART - 1)


def test_changing_the_split_or_the_fold_drops_the_captured_prefill_graphs(native, checkpoints):
    eng = native.load_engine(checkpoints["mamba2"], dtype=torch.float16, max_batch=2)
    eng.prefill(ids(1, 2 * PART, 9), eng.new_state(1))
    assert eng.prefill_graphs.graphs, "no prefill graph was captured"
    eng.prefill_split = None  # unchanged (the default): the graphs stay
    assert eng.prefill_graphs.graphs
    eng.prefill_split = 2
    assert not eng.prefill_graphs.graphs
    eng.prefill(ids(1, 2 * PART, 9), eng.new_state(1))
    eng.fold_gated_norm = True
    assert not eng.prefill_graphs.graphs

