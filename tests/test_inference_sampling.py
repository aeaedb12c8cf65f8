"""Sampling: validation, each filter on hand-made distributions, seeds, penalties."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.inference import SamplingParams
from lmforge.inference.sampling import apply_penalties, min_p_filter, sample_next, top_k_filter, top_p_filter


def logits_of(probs: list[float]) -> torch.Tensor:
    """(1, V) logits whose softmax is `probs`."""
    return torch.tensor([probs], dtype=torch.float32).log()


def frequencies(logits: torch.Tensor, params: SamplingParams, n: int = 20_000) -> torch.Tensor:
    """Empirical distribution of `n` draws from one row of logits."""
    generator = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), params, generator=generator)
    return torch.bincount(draws, minlength=logits.size(-1)).float() / n


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("min_p", 1.0),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", math.inf),
        ("seed", -1),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    "p, kept",
    [
        # sorted probabilities 0.5, 0.3, 0.15, 0.05; cumulative 0.5, 0.8, 0.95, 1.0
        (0.3, {2}),  # 0.5 alone reaches 0.3
        (0.75, {2, 0}),  # 0.5 < 0.75 <= 0.8
        (0.9, {2, 0, 3}),  # 0.8 < 0.9 <= 0.95
        (0.99, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, kept):
    logits = logits_of([0.3, 0.05, 0.5, 0.15])  # vocabulary order deliberately not sorted
    filtered = top_p_filter(logits, p)[0]
    assert {i for i in range(4) if filtered[i] > -math.inf} == kept


def test_top_p_stops_when_the_mass_equals_p_exactly():
    """Probabilities (0.5, 0.25, 0.25), exact in binary, and p=0.5: the first token alone reaches 0.5,
    so the second (mass above it 0.5 >= 0.5) is dropped and one token is kept; p=0.75 keeps two."""
    logits = logits_of([0.25, 0.5, 0.25])
    assert torch.isfinite(top_p_filter(logits, 0.5)[0]).tolist() == [False, True, False]
    kept = torch.isfinite(top_p_filter(logits, 0.75)[0])
    assert bool(kept[1]) and int(kept.sum()) == 2  # which of the tied 0.25s is the sort's choice


def test_top_p_draws_follow_renormalised_distribution():
    """p=0.75 keeps 0.5 and 0.3, renormalised to 0.625 and 0.375 (std of a frequency ~0.0034)."""
    freq = frequencies(logits_of([0.3, 0.05, 0.5, 0.15]), SamplingParams(top_p=0.75))
    torch.testing.assert_close(freq, torch.tensor([0.375, 0.0, 0.625, 0.0]), atol=0.015, rtol=0)


def test_temperature_two_takes_square_root_of_probabilities():
    """softmax(log p / 2) is proportional to sqrt(p): 0.8, 0.2 -> 0.894, 0.447 -> 2/3, 1/3."""
    freq = frequencies(logits_of([0.8, 0.2]), SamplingParams(temperature=2.0))
    torch.testing.assert_close(freq, torch.tensor([2 / 3, 1 / 3]), atol=0.015, rtol=0)


def test_top_k_and_min_p_on_hand_made_distributions():
    logits = logits_of([0.1, 0.6, 0.3])
    assert (top_k_filter(logits, 2)[0] > -math.inf).tolist() == [False, True, True]
    # min_p=0.2: threshold 0.2 x 0.6 = 0.12 drops only the 0.1 token; min_p=0.6 leaves 0.6 alone
    assert (min_p_filter(logits, 0.2)[0] > -math.inf).tolist() == [False, True, True]
    assert (min_p_filter(logits, 0.6)[0] > -math.inf).tolist() == [False, True, False]


def test_top_k_one_equals_greedy():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(1)) * 3
    for seed in range(5):
        params = SamplingParams(temperature=1.5, top_k=1, seed=seed)
        assert torch.equal(sample_next(logits, params, generator=params.make_generator()), logits.argmax(-1))
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0)), logits.argmax(-1))


def test_same_seed_same_draws_different_seed_different_draws():
    logits = torch.zeros(64, 1000)  # uniform over 1000 tokens: two seeds agreeing on 64 draws is ~impossible

    def draws(seed: int) -> torch.Tensor:
        params = SamplingParams(seed=seed)
        return sample_next(logits, params, generator=params.make_generator())

    assert torch.equal(draws(7), draws(7))
    assert not torch.equal(draws(7), draws(8))


def test_penalties_worked_by_hand():
    """repetition 2: seen logits 3 -> 1.5 and -1 -> -2, unseen 3 stays; frequency 0.5 x 2 times -> -1."""
    logits = torch.tensor([[3.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[True, True, False, True]])
    counts = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    out = apply_penalties(logits, seen=seen, counts=counts, repetition_penalty=2.0, frequency_penalty=0.5)
    torch.testing.assert_close(out, torch.tensor([[1.5, -2.0, 3.0, 0.25 - 1.0]]))


def test_greedy_applies_repetition_penalty():
    """Token 0 leads 2.0 vs 1.5 but was seen; a penalty of 2 makes it 1.0, so token 1 wins."""
    logits = torch.tensor([[2.0, 1.5]])
    seen = torch.tensor([[True, False]])
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=2.0), seen=seen).item() == 1
