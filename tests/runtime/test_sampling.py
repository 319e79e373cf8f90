"""sampling.py: masks, penalties, padded columns, reproducibility."""
import math

import pytest
import torch

from mamba_deploy.errors import ParameterError
from mamba_deploy.runtime.sampling import (SamplingParams, apply_repetition_penalty, mask_min_p, mask_padding,
                                           mask_top_k, mask_top_p, sample)


def kept(logits):
    return torch.isfinite(logits).nonzero()[:, -1].tolist()


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert sorted(kept(mask_top_k(logits, 2))) == [1, 3]
    assert kept(mask_top_k(logits, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(mask_top_p(logits, 0.7)) == [0, 1]
    assert kept(mask_top_p(logits, 0.8)) == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(mask_top_p(logits, 0.81)) == [0, 1, 2]
    assert kept(mask_top_p(logits, 0.1)) == [0]  # always at least one


def test_min_p_relative_to_max():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert kept(mask_min_p(logits, 0.5)) == [0, 1]  # 0.15 < 0.5 * 0.5


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0]]


def test_padding_columns_never_sampled():
    logits = torch.zeros(4, 10)
    logits[:, 8:] = 100.0  # the padding is by far the most likely
    assert mask_padding(logits, 8)[:, 8:].eq(-math.inf).all()
    gen = torch.Generator().manual_seed(0)
    for params in (SamplingParams(0.0), SamplingParams(1.0), SamplingParams(2.0, top_k=50, top_p=0.99)):
        for _ in range(20):
            assert (sample(logits, params, 8, generator=gen) < 8).all()


def test_greedy_and_seed_reproducibility():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert sample(logits, SamplingParams(0.0), 50).tolist() == logits.argmax(-1).tolist()
    params = SamplingParams(1.0, top_p=0.9)
    draws = [sample(logits, params, 50, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*draws)
    noise = torch.rand(3, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(logits, params, 50, noise=noise), sample(logits, params, 50, noise=noise))


def test_sampling_follows_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3)
    counts = torch.bincount(sample(logits, SamplingParams(1.0), 3, generator=torch.Generator().manual_seed(0)),
                            minlength=3)
    assert torch.allclose(counts / 20000, probs, atol=0.02)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2),
                                 dict(repetition_penalty=0), dict(top_k=2.5), dict(temperature=float("inf")),
                                 dict(top_p="0.9"), dict(min_p=None), dict(repetition_penalty=True)])
def test_invalid_params_name_the_field(bad):
    with pytest.raises(ParameterError, match=rf"^{next(iter(bad))} must be ") as info:
        SamplingParams(**bad).validate()
    assert info.value.param == next(iter(bad))
