"""The scheduler on the native backend runs on the engine's own slots (slot-indexed decode, no state copies),
and a prompt in a ragged batch gets exactly the tokens it gets alone."""
import pytest

from mamba_deploy.runtime import Engine

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [21, 22]]


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.7, top_p=0.9, seed=3)])
def test_generate_on_the_engine_slots_equals_each_prompt_alone(export_dir, sampling):
    eng = Engine.load(export_dir, backend="native", max_batch=8)
    together = eng.generate(PROMPTS, max_new_tokens=12, **sampling)
    assert eng.backend._owns(eng.scheduler.pool), "the scheduler's pool must be the engine's slots"
    alone = [eng.generate([p], max_new_tokens=12, **sampling)[0] for p in PROMPTS]
    assert together == alone
    assert any(len(row) == 12 for row in together)  # rows may end early at the tokenizer's EOS (id 0)
    assert eng.scheduler.pool.free_count == eng.scheduler.max_batch


def test_native_generate_agrees_with_the_torch_backend_greedy(export_dir):
    native = Engine.load(export_dir, backend="native", max_batch=4).generate(PROMPTS, max_new_tokens=8,
                                                                             temperature=0.0)
    reference = Engine.load(export_dir, backend="torch").generate(PROMPTS, max_new_tokens=8, temperature=0.0)
    assert native == reference


EQUAL = [[5, 6, 7, 8], [9, 10, 11, 12], [40, 41, 42, 43], [3, 3, 3, 3]]


def test_graph_sampling_equals_eager_sampling_bit_for_bit(export_dir):
    """Decode + sampling replayed as one CUDA graph gives the tokens the same ops give run eagerly."""
    sampling = dict(max_new_tokens=16, temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.2,
                    seed=5)
    graphed = Engine.load(export_dir, backend="native", max_batch=4)
    eager = Engine.load(export_dir, backend="native", max_batch=4, use_graphs=False)
    assert graphed.generate(EQUAL, **sampling) == eager.generate(EQUAL, **sampling)
    assert graphed.backend.engine.sample_graphs, "generate must run the sampling decode graph"


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.7, top_p=0.9, seed=3)])
def test_batched_prefill_of_equal_prompts_equals_each_alone(export_dir, sampling):
    eng = Engine.load(export_dir, backend="native", max_batch=8)
    alone = [eng.generate([p], max_new_tokens=10, **sampling)[0] for p in EQUAL]
    assert eng.generate(EQUAL, max_new_tokens=10, **sampling) == alone
    # slots 0, 2, 4, 6 (not consecutive): prefill goes through gather/scatter, decode through the slot ids
    sched = eng.scheduler
    held = [sched.pool.acquire() for _ in range(8)]
    for slot in held[0::2]:
        sched.pool.release(slot)
    try:
        assert eng.generate(EQUAL, max_new_tokens=10, **sampling) == alone
    finally:
        for slot in held[1::2]:
            sched.pool.release(slot)


NEAR = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [30, 31, 32, 33, 34, 35, 36, 37, 38], [3, 4, 5, 6, 7, 8, 9, 10],
        [50, 51, 52, 53, 54, 55, 56, 57, 58, 59]]  # 37 tokens in 4 x 10: within the scheduler's PAD_OVERHEAD


@pytest.mark.parametrize("prefill_graph_tokens", [0, 64])
def test_ragged_prompts_merge_into_one_padded_prefill_and_equal_each_alone(export_dir, prefill_graph_tokens):
    sampling = dict(max_new_tokens=10, temperature=0.7, top_p=0.9, seed=4)
    eng = Engine.load(export_dir, backend="native", max_batch=8, prefill_graph_tokens=prefill_graph_tokens)
    assert eng.backend.pads_prompts
    alone = [eng.generate([p], **sampling)[0] for p in NEAR]
    calls, prefill = [], eng.backend.engine.prefill

    def spy(ids, state, all_logits=False, lengths=None):
        calls.append((tuple(ids.shape), lengths))
        return prefill(ids, state, all_logits=all_logits, lengths=lengths)
    eng.backend.engine.prefill = spy
    assert eng.generate(NEAR, **sampling) == alone
    assert calls == [((4, 10), [10, 10, 9, 8])]  # longest first
