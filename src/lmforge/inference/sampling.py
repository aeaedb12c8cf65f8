"""Choosing the next token from a row of logits: penalties, temperature, top-k, top-p, min-p, sampling.

`SamplingParams` holds the knobs and validates them; `sample_next` turns logits of shape (B, V) into
next-token ids of shape (B,). The steps run in the order of `transformers`' logits processors:
repetition/frequency penalty -> temperature -> top-k -> top-p -> min-p -> softmax -> draw. With
temperature 0 the draw is an argmax (greedy), but penalties still apply, as in `transformers`.

Randomness comes only from the `torch.Generator` the caller passes, so a fixed seed gives the same
tokens. Deliberately knows nothing about the model, stopping or text: logits in, ids out.

References: Holtzman et al. 2019 (nucleus / top-p sampling); Keskar et al. 2019, CTRL (repetition
penalty: divide positive logits, multiply negative ones); OpenAI API (frequency penalty: subtract
penalty x count); Nguyen et al. 2024 (min-p sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.errors import check, is_int, is_number

MIN_TEMPERATURE = 1e-4  # smallest temperature > 0: logits / 1e-40 overflow float32 to inf, softmax to NaN


@dataclass(frozen=True)
class SamplingParams:
    # softmax temperature; 0 means greedy (argmax), larger values flatten the distribution
    temperature: float = 1.0
    # keep only the k most likely tokens; None keeps all
    top_k: int | None = None
    # keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 keeps all
    top_p: float = 1.0
    # drop tokens whose probability is below min_p x (probability of the most likely token); 0 keeps all
    min_p: float = 0.0
    # CTRL penalty on every token already in the sequence (prompt included): > 1 discourages repeats
    repetition_penalty: float = 1.0
    # subtracted from a token's logit once per time it was generated so far (OpenAI-style); 0 = off
    frequency_penalty: float = 0.0
    # seed of the torch.Generator used for drawing; None draws a fresh seed from torch's global RNG
    seed: int | None = None

    def __post_init__(self) -> None:
        check(
            is_number(self.temperature) and (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE),
            "sampling.temperature",
            self.temperature,
            f"use 0 (greedy) or a number >= {MIN_TEMPERATURE} (logits / a smaller one overflow float32)",
        )
        check(
            self.top_k is None or is_int(self.top_k, 1),
            "sampling.top_k",
            self.top_k,
            "use an integer >= 1, or leave it unset to keep all tokens",
        )
        check(
            is_number(self.top_p) and 0 < self.top_p <= 1,
            "sampling.top_p",
            self.top_p,
            "use a number in (0, 1]; 1 keeps all tokens",
        )
        check(
            is_number(self.min_p) and 0 <= self.min_p < 1,
            "sampling.min_p",
            self.min_p,
            "use a number in [0, 1); 0 keeps all tokens",
        )
        check(
            is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            "sampling.repetition_penalty",
            self.repetition_penalty,
            "use a number > 0; 1 means no penalty",
        )
        check(
            is_number(self.frequency_penalty),
            "sampling.frequency_penalty",
            self.frequency_penalty,
            "use a finite number; 0 means no penalty",
        )
        check(
            self.seed is None or (is_int(self.seed, 0) and self.seed < 2**64),
            "sampling.seed",
            self.seed,
            "use an integer in [0, 2**64)",
        )

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax of the (penalised) logits."""
        return self.temperature == 0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded with `seed` (or with a fresh seed from torch's global RNG)."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        return torch.Generator(device=device).manual_seed(seed)


def apply_penalties(
    logits: torch.Tensor,
    *,
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
    repetition_penalty: float,
    frequency_penalty: float,
) -> torch.Tensor:
    """Penalise tokens that already occurred. Returns a new tensor.

    logits: (B, V) float; seen: (B, V) bool, tokens in the prompt or generated so far; counts: (B, V)
    float, how often each token was generated. Example with repetition_penalty=2: a seen token's logit
    3.0 becomes 1.5 and -1.0 becomes -2.0 (both less likely); with frequency_penalty=0.5 a token
    generated twice loses 1.0.
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if frequency_penalty != 0.0 and counts is not None:
        logits = logits - frequency_penalty * counts
    return logits


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf. (B, V) -> (B, V)."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p. (B, V) -> (B, V).

    A token is dropped when the probability of the tokens ranked above it already reaches p, so the
    most likely token is always kept. Example: probabilities (0.5, 0.3, 0.15, 0.05) and p=0.75 keep
    the first two (0.5 < 0.75, 0.5+0.3 = 0.8 >= 0.75).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # probability of the tokens ranked above
    drop_sorted = mass_above >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p x the top probability. (B, V) -> (B, V).

    In log space: logit < max_logit + log(min_p). Example: probabilities (0.6, 0.3, 0.1) and
    min_p=0.2 give the threshold 0.12, dropping only the 0.1 token.
    """
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)  # (B, 1)
    return logits.masked_fill(logits < threshold, -math.inf)


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose one next token per row. logits: (B, V) -> ids: (B,) int64.

    Works in float32 whatever the model's dtype, so that bf16 logits do not make ties out of
    near-equal probabilities.
    """
    logits = apply_penalties(
        logits.float(),
        seen=seen,
        counts=counts,
        repetition_penalty=params.repetition_penalty,
        frequency_penalty=params.frequency_penalty,
    )
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    logits = min_p_filter(logits, params.min_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
