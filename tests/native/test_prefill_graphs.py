"""Prefill graphs (NativeEngine(prefill_graph_tokens=...)): short chunks replayed as captured pieces on the state
pool == the eager prefill of the same pieces, bit for bit, on any slots; other slots untouched; on the GPU."""
import pytest
import torch
from prompts import ids
from test_native_slots import fill_pool

from mamba_deploy.native import prefill_split as S
from mamba_deploy.native.prefill_graphs import pieces

pytestmark = pytest.mark.gpu

ARCHS = ["mamba1", "mamba2", "falcon_mamba", "mamba2_d_ssm", "mamba1_mlp"]  # conftest.CONFIGS without hybrids


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,length", [(1, 100), (3, 37), (2, 1), (4, 224), (1, 1280)])
def test_graph_pieces_equal_eager_pieces_bitwise(native, checkpoints, arch, dtype, batch, length):
    graphed = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=8, prefill_graph_tokens=2047)
    eager = native.load_engine(checkpoints[arch], dtype=dtype, max_batch=8, prefill_graph_tokens=0)
    assert graphed.prefill_graphs.applies(batch, length, False) and not eager.prefill_graphs.applies(batch, length,
                                                                                                     False)
    for first, seed in ((2, 1), (8 - batch, 2)):  # the same graphs on another set of slots
        before = fill_pool(graphed, seed)
        fill_pool(eager, seed)
        prompt = ids(batch, length, seed)
        got = graphed.prefill(prompt, graphed.slot_state(first, batch))
        start = 0
        for n in pieces(length):
            for a, b in S.bounds(graphed, n, batch, graphed=True):  # a batch-1 Mamba1 piece in two by default
                want = eager.prefill(prompt[:, start + a:start + b], eager.slot_state(first, batch))
            start += n
        assert torch.equal(got, want)
        assert got.shape == (batch, 1, graphed.config.vocab_size_padded)
        for mine, theirs, old in zip(graphed.static.tensors(), eager.static.tensors(), before.tensors()):
            assert torch.equal(mine, theirs)
            assert torch.equal(mine[:first], old[:first]) and torch.equal(mine[first + batch:], old[first + batch:])
        assert not torch.equal(graphed.static.ssm[0], before.ssm[0]), "the state did not change"
    assert set(graphed.prefill_graphs.graphs) == {(batch, n, False) for n in pieces(length)}


def test_graphs_leave_what_they_do_not_take_to_the_eager_path(rel_err, native, checkpoints):
    """Longer chunks, larger batches, all_logits and states that are not slots of the pool stay eager; a
    hybrid gets no prefill graphs; logits returned by one run are not overwritten by the next."""
    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=8, prefill_graph_tokens=64,
                             prefill_graph_batch=2)
    assert not eng.prefill_graphs.applies(1, 65, False) and not eng.prefill_graphs.applies(3, 8, False)
    assert not eng.prefill_graphs.applies(1, 8, True)
    assert not eng.prefill_graphs.applies(1, 63, False) and eng.prefill_graphs.applies_padded(1, 63, False)
    held = eng.new_state(2)  # slots 0-1 of the pool
    first = eng.prefill(ids(2, 20, 5), held)
    kept = first.clone()
    eng.prefill(ids(2, 20, 6), held)
    assert torch.equal(first, kept)
    own = eng.new_state(2)  # another state is alive: fresh tensors, not the pool's
    eng.prefill(ids(2, 20, 7), own)
    assert set(eng.prefill_graphs.graphs) == {(2, 16, False), (2, 4, False)}
    hybrid = native.load_engine(checkpoints["hybrid"], dtype=torch.float32, max_batch=2, prefill_graph_tokens=64)
    assert hybrid.prefill_graphs.max_tokens == 0


def test_graphs_hold_at_most_max_graph_tokens(native, checkpoints):
    """The defaults: up to 2,048 tokens a row and 16 rows, rows x the next power of two <= 4,096 tokens."""
    from mamba_deploy.native.prefill_graphs import MAX_GRAPH_TOKENS

    eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=16)
    graphs = eng.prefill_graphs
    assert MAX_GRAPH_TOKENS == 4096
    assert graphs.applies(1, 2048, False) and graphs.applies(2, 2048, False) and not graphs.applies(3, 2048, False)
    assert graphs.applies(16, 256, False) and not graphs.applies(16, 257, False)
    assert graphs.applies_padded(2, 2000, False) and not graphs.applies_padded(3, 1025, False)
    assert not graphs.applies(1, 2049, False)


def test_generate_with_prefill_graphs_equals_without(native, checkpoints):
    """Ragged prompts through the scheduler: the same greedy tokens with prefill graphs as without."""
    from mamba_deploy.bench import engine_api

    prompts = [ids(1, n, n)[0].tolist() for n in (5, 37, 100)]
    outs = []
    for tokens in (0, 128):
        eng = native.load_engine(checkpoints["mamba1"], dtype=torch.float32, max_batch=4, prefill_graph_tokens=tokens)
        outs.append(engine_api(eng).generate(prompts, max_new_tokens=12, temperature=0))
    assert outs[0] == outs[1]
