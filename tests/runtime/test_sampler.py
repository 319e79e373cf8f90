"""runtime/sampler.py on the CPU: every option against the plain reference (exact tokens on
the same noise), the distribution, batch independence, state updates, bad input."""
import math

import numpy as np
import pytest
import torch

from mamba_deploy.errors import MambaDeployError, ParameterError
from mamba_deploy.ops.philox import philox_uniform
from mamba_deploy.runtime.sampler import SamplerState, pick_tokens, weight_bits
from mamba_deploy.runtime.sampler_reference import sample_reference
from mamba_deploy.runtime.sampling import SamplingParams

P = SamplingParams


CASES = {
    "greedy": P(0.0), "plain": P(1.0), "hot": P(1.7), "cold": P(0.3), "top_k": P(0.8, top_k=7),
    "top_k_1": P(1.0, top_k=1), "top_k_all": P(1.0, top_k=10**6), "top_p": P(1.0, top_p=0.6),
    "top_p_tiny": P(1.0, top_p=1e-6), "min_p": P(1.0, min_p=0.2), "min_p_1": P(1.0, min_p=1.0),
    "penalty": P(1.0, repetition_penalty=1.8), "greedy_penalty": P(0.0, repetition_penalty=3.0),
    "combined": P(0.9, top_k=40, top_p=0.9, min_p=0.01, repetition_penalty=1.2),
    "combined_2": P(1.3, top_k=5, top_p=0.95, min_p=0.3, repetition_penalty=0.7),
}


def assigned_state(params_per_slot, vocab, seed0=11, device="cpu"):
    state = SamplerState(len(params_per_slot), vocab, device)
    gen = torch.Generator().manual_seed(seed0)
    for slot, params in enumerate(params_per_slot):
        seed = seed0 * 7919 + slot * (2**61 + 17)  # some seeds >= 2**63
        state.assign(slot, params, seed % 2**64, torch.randint(0, vocab, (6,), generator=gen).tolist())
    return state


def check_against_reference(state, params_per_slot, logits, slots, vocab_limit):
    """One sample() call; returns its tokens after comparing each with the reference on the same uniform."""
    seeds, steps, seen = state.seed.clone(), state.step.clone(), state.seen.clone()
    tokens = state.sample(logits, slots, vocab_limit)
    for row, slot in enumerate(slots.tolist()):
        u = philox_uniform(seeds[slot:slot + 1].numpy(), steps[slot:slot + 1].numpy())[0]
        expected = sample_reference(logits[row].float().numpy(), params_per_slot[slot], u, seen[slot].tolist(),
                                    vocab_limit)
        assert tokens[row].item() == expected, (row, slot, params_per_slot[slot])
    return tokens


def random_logits(gen, n, vocab, ties):
    logits = torch.randn(n, vocab, generator=gen) * 3
    return (logits * 2).round() / 2 if ties else logits  # few distinct values: many equal logits


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_option_matches_the_reference(name, ties):
    vocab, limit = 96, 80
    params = [CASES[name]] * 4
    state = assigned_state(params, vocab)
    gen = torch.Generator().manual_seed(len(name) + ties)
    for step in range(40):
        logits = random_logits(gen, 4, vocab, ties)
        logits[:, limit:] = 50.0  # padding is the most likely column: never sampled
        tokens = check_against_reference(state, params, logits, torch.randperm(4, generator=gen), limit)
        assert (tokens < limit).all()


def test_mixed_rows_in_one_batch_match_the_reference_over_dtypes():
    """Every option on its own row, greedy beside sampled, float16 / bfloat16 / float32 logits."""
    params = list(CASES.values())
    vocab = 257
    state = assigned_state(params, vocab, seed0=5)
    gen = torch.Generator().manual_seed(3)
    calls = torch.zeros(len(params), dtype=torch.int64)
    for step, dtype in enumerate([torch.float32, torch.float16, torch.bfloat16] * 10):
        slots = torch.randperm(len(params), generator=gen)[:11]
        logits = random_logits(gen, len(slots), vocab, ties=step % 2 == 0).to(dtype)
        check_against_reference(state, params, logits, slots, vocab - step % 5)
        calls[slots] += 1
    assert torch.equal(state.step, calls)  # greedy rows advance too


def test_a_padded_50k_vocabulary_matches_the_reference():
    params = [CASES["combined"], CASES["plain"], CASES["top_p"], CASES["greedy_penalty"]]
    state = assigned_state(params, 50288, seed0=2)
    gen = torch.Generator().manual_seed(4)
    for step in range(2):
        check_against_reference(state, params, random_logits(gen, 4, 50288, ties=step == 1), torch.arange(4), 50277)


def test_greedy_is_argmax_of_the_penalised_logits_and_advances_the_step():
    state = SamplerState(3, 6, "cpu")
    state.assign(0, P(0.0, repetition_penalty=2.0), 1, [1])
    state.assign(2, P(1.0), 2, [])
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0, 0.5, 9.0], [0.0] * 6])
    tokens = state.sample(logits, torch.tensor([0, 2]), 5)
    assert tokens[0].item() == 2  # 3.0 seen -> 1.5 < 2.0; column 5 is padding
    assert state.step.tolist() == [1, 0, 1]
    assert state.seen[0].tolist() == [False, True, True, False, False, False]
    assert state.seen[2].sum().item() == 1 and state.seen[1].sum().item() == 0


def test_top_p_keeps_the_smallest_set_reaching_p_on_exact_boundaries():
    """Four equal logits: weights are equal integers, so 0.5 of the mass is reached exactly by two tokens."""
    n = 400
    state = SamplerState(n, 4, "cpu")
    for slot in range(n):
        state.assign(slot, P(1.0, top_p=0.5), slot, [])
    tokens = state.sample(torch.zeros(n, 4), torch.arange(n), 4)
    assert sorted(set(tokens.tolist())) == [0, 1]
    assert sample_reference(np.zeros(4, np.float32), P(1.0, top_p=0.5), 0.99, [False] * 4, 4) == 1


def test_inverse_cdf_picks_the_first_cumulative_weight_above_u_total():
    """u = 0.25 on four equal weights lies exactly on the first boundary: cumsum > u * total is strict."""
    scaled = torch.zeros(4, 4)
    uniform = torch.tensor([0.25, 0.2499999, 0.5, 0.9999999])
    zero, one = torch.zeros(4), torch.ones(4)
    tokens = pick_tokens(scaled, torch.zeros(4, dtype=torch.int64), one, zero, uniform)
    assert tokens.tolist() == [1, 0, 2, 3]
    assert [sample_reference(np.zeros(4, np.float32), P(1.0), float(u), [False] * 4, 4) for u in uniform] == [1, 0, 2, 3]


def exact_filtered_probs(logits, params, vocab_limit):
    """float64 probabilities after the filters, from their definitions (no repetition penalty)."""
    x = np.asarray(logits, dtype=np.float64)[:vocab_limit] / params.temperature
    order = sorted(range(len(x)), key=lambda j: (-x[j], j))
    p = np.exp(x - x.max())
    k = params.top_k or len(x)
    keep, mass, total = [], 0.0, sum(p[j] for j in order[:k])
    for rank, j in enumerate(order):
        if rank < k and (params.top_p >= 1 or mass < params.top_p * total) and p[j] >= params.min_p * p.max():
            keep.append(j)
        mass += p[j] if rank < k else 0.0
    out = np.zeros(len(logits))
    out[keep] = p[keep] / p[keep].sum()
    return out


@pytest.mark.parametrize("params", [P(1.0), P(0.7, top_k=4), P(1.2, top_p=0.8), P(1.0, min_p=0.15),
                                    P(0.9, top_k=5, top_p=0.9, min_p=0.05)], ids=str)
def test_distribution_of_20k_draws(params):
    """20k rows with distinct seeds on the same logits: chi-square against the exact filtered probabilities."""
    logits = [2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, -3.0, 5.0]  # the last column is padding
    n = 20000
    state = SamplerState(n, len(logits), "cpu")
    state.assign(0, params, 0, [])
    for name in ("temperature", "top_k", "top_p", "min_p"):  # every row as row 0, with its own seed
        getattr(state, name).fill_(getattr(state, name)[0].item())
    state.seed.copy_(torch.arange(1000, 1000 + n))
    tokens = state.sample(torch.tensor([logits] * n), torch.arange(n), 8)
    counts = np.bincount(tokens.numpy(), minlength=len(logits))
    probs = exact_filtered_probs(logits, params, 8)
    assert np.all(counts[probs == 0] == 0)
    support = probs > 0
    chi2 = float((((counts - n * probs) ** 2)[support] / (n * probs[support])).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 8 * math.sqrt(2 * dof), (chi2, dof, counts, probs * n)  # p < 1e-4


def test_a_row_gets_the_same_tokens_alone_or_in_a_batch():
    vocab = 333
    params = P(0.8, top_k=50, top_p=0.9, min_p=0.01, repetition_penalty=1.3)
    alone = SamplerState(1, vocab, "cpu")
    alone.assign(0, params, 42, [3, 4, 5])
    batch = assigned_state([CASES[k] for k in sorted(CASES)][:8], vocab, seed0=9)
    batch.assign(5, params, 42, [3, 4, 5])
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        logits = torch.randn(8, vocab, generator=gen) * 4
        order = torch.randperm(8, generator=gen)
        position = int((order == 5).nonzero())
        together = batch.sample(logits, order, vocab - 3)
        single = alone.sample(logits[position:position + 1].clone(), torch.tensor([0]), vocab - 3)
        assert together[position].item() == single.item()
    assert torch.equal(alone.seen[0], batch.seen[5])


def test_same_seed_same_tokens_other_seed_other_tokens():
    def run(seed):
        state = SamplerState(1, 50, "cpu")
        state.assign(0, P(1.0), seed, [])
        gen = torch.Generator().manual_seed(1)
        return [state.sample(torch.randn(1, 50, generator=gen), torch.tensor([0]), 50).item() for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_assign_and_release_reset_the_row():
    state = SamplerState(2, 10, "cpu")
    state.assign(1, P(0.5, top_k=3, top_p=0.7, min_p=0.1, repetition_penalty=1.5), 2**64 - 1, [2, 9])
    state.sample(torch.randn(1, 10), torch.tensor([1]), 10)
    assert state.seed[1].item() == -1 and state.step[1].item() == 1 and state.top_k[1].item() == 3
    state.assign(1, P(0.5), 3, [4])
    assert state.step[1].item() == 0 and state.seen[1].nonzero().flatten().tolist() == [4]
    state.release(1)
    assert (state.temperature[1].item(), state.top_k[1].item(), state.top_p[1].item()) == (1.0, 0, 1.0)
    assert not state.seen[1].any() and state.seed[1].item() == 0


def test_assigning_a_used_row_equals_assigning_a_fresh_one():
    """The scheduler does not reset a retired request's row: the next assign_many must overwrite every field."""
    used, fresh = SamplerState(3, 10, "cpu"), SamplerState(3, 10, "cpu")
    used.assign_many([1, 2], [P(0.5, top_k=3, top_p=0.7, min_p=0.1, repetition_penalty=1.5), P(1.1)], [2**64 - 1, 4],
                     [[2, 9], [5]])
    for _ in range(3):
        used.sample(torch.randn(2, 10), torch.tensor([1, 2]), 10)
    for state in (used, fresh):
        state.assign_many([2, 1], [P(0.8), P(0.0, top_k=1)], [6, 9], [[4], []])
    names = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "step", "last_token", "seen")
    assert all(torch.equal(getattr(used, n), getattr(fresh, n)) for n in names)


def test_assign_many_and_release_many_equal_one_slot_at_a_time():
    params = [P(0.5, top_k=3, top_p=0.7), P(0.0), P(1.2, min_p=0.2, repetition_penalty=1.3)]
    seeds, prompts, slots = [5, 2**64 - 1, 0], [[2, 9, 2], [], [7]], [3, 0, 1]
    one, many = SamplerState(5, 10, "cpu"), SamplerState(5, 10, "cpu")
    for state in (one, many):
        state.assign(4, P(0.9, top_k=2), 8, [1, 3])  # a slot the calls leave alone
    for slot, p, seed, prompt in zip(slots, params, seeds, prompts):
        one.assign(slot, p, seed, prompt)
    many.assign_many(slots, params, seeds, prompts)
    names = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "step", "last_token", "seen")
    assert all(torch.equal(getattr(one, n), getattr(many, n)) for n in names)
    for slot in (3, 1):
        one.release(slot)
    many.release_many([3, 1])
    assert all(torch.equal(getattr(one, n), getattr(many, n)) for n in names)
    fresh = SamplerState(5, 10, "cpu")  # released rows hold a new state's values; slot 4 is still assigned
    assert all(torch.equal(getattr(many, n)[[1, 3]], getattr(fresh, n)[[1, 3]]) for n in names)
    assert many.temperature[4].item() == pytest.approx(0.9) and many.seen[4].nonzero().flatten().tolist() == [1, 3]
    defaults = P()
    assert [fresh.temperature[0].item(), fresh.top_k[0].item(), fresh.top_p[0].item(), fresh.min_p[0].item(),
            fresh.repetition_penalty[0].item()] == [defaults.temperature, defaults.top_k, defaults.top_p,
                                                    defaults.min_p, defaults.repetition_penalty]
    with pytest.raises(ValueError, match="distinct"):
        many.release_many([1, 1])
    with pytest.raises(ValueError, match="distinct"):
        many.assign_many([2, 2], params[:2], seeds[:2], prompts[:2])
    with pytest.raises(MambaDeployError, match="prompt token ids"):
        many.assign_many([2, 3], params[:2], seeds[:2], [[1], [10]])


def test_weight_bits_keep_sums_exact_in_float64():
    for vocab in (1, 2, 3, 50280, 50288, 2**17, 256000):
        assert vocab * 2 ** weight_bits(vocab) <= 2**53


def test_bad_input():
    state = SamplerState(2, 10, "cpu")
    with pytest.raises(ParameterError, match="^top_p must be"):
        state.assign(0, P(1.0, top_p=0.0), 1, [])
    for seed in (-1, 2**64, 1.5, None):
        with pytest.raises(ParameterError, match=r"^seed must be an integer in \[0, 2\*\*64\)"):
            state.assign(0, P(), seed, [])
    with pytest.raises(MambaDeployError, match=r"prompt token ids must be in \[0, 10\)"):
        state.assign(0, P(), 1, [3, 10])
    with pytest.raises(ValueError, match="slot must be"):
        state.assign(2, P(), 1, [])
    good = torch.zeros(2, 10)
    for args, match in [((torch.zeros(2, 9), torch.tensor([0, 1]), 9), "logits"),
                        ((good, torch.tensor([0, 1], dtype=torch.int32), 10), "slots"),
                        ((good, torch.tensor([0]), 10), "slots"), ((good, torch.tensor([0, 1]), 11), "vocab_limit"),
                        ((good, torch.tensor([0, 1]), 0), "vocab_limit")]:
        with pytest.raises(ValueError, match=match):
            state.sample(*args)


@pytest.mark.parametrize("rows,vocab", [(1, 50280), (3, 7), (64, 1000), (2, 128), (5, 129), (1, 1)])
def test_blocked_cumsum_equals_cumsum(rows, vocab):
    from mamba_deploy.runtime.sampler import cumsum_rows

    weights = torch.randint(0, 2 ** 40, (rows, vocab), generator=torch.Generator().manual_seed(vocab))
    assert torch.equal(cumsum_rows(weights), weights.cumsum(dim=-1))


@pytest.mark.parametrize("candidates", [16, 64, (16, 64)])
def test_host_pick_takes_the_same_tokens_as_the_full_sort(candidates, monkeypatch):
    """pick_tokens_host (the CPU's: a sorted prefix of top candidates, the full sort only where a filter does not
    provably end inside it) == pick_tokens on every row: peaked and flat rows, ties at the cut, -inf columns,
    every filter alone and combined; both paths taken."""
    from mamba_deploy.runtime import sampler

    last = candidates if isinstance(candidates, int) else candidates[-1]
    gen = torch.Generator().manual_seed(last + (0 if isinstance(candidates, int) else 1))
    vocab, rows = 300, []
    for scale in (0.5, 3.0, 12.0):
        rows.append(torch.randn(40, vocab, generator=gen) * scale)
    ties = (torch.randn(40, vocab, generator=gen) * 4).round() / 2  # many equal values, some at the cut
    ties[::3, -20:] = float("-inf")
    rows.append(ties)
    scaled = torch.cat(rows)
    n = scaled.shape[0]
    top_k = torch.tensor([0, 1, 5, last - 1, last, last + 1, 200, vocab])[torch.arange(n) % 8]
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.99, 0.2])[torch.arange(n) % 5]
    min_p = torch.tensor([0.0, 0.05, 0.5])[torch.arange(n) % 3]
    uniform = torch.rand(n, generator=gen).clamp(1e-6, 1 - 1e-6)
    expected = sampler.pick_tokens(scaled, top_k, top_p, min_p, uniform)
    sorted_rows = []
    full = sampler.pick_tokens
    monkeypatch.setattr(sampler, "pick_tokens", lambda x, *a: sorted_rows.append(x.shape[0]) or full(x, *a))
    got = sampler.pick_tokens_host(scaled, top_k, top_p, min_p, uniform, candidates=candidates)
    assert torch.equal(got, expected)
    assert 0 < sum(sorted_rows) < n  # some rows decided on the candidates, some sorted whole
