"""Evaluation metrics: perplexity, bits-per-byte, accuracy and token-weighted evaluation, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.evaluation.metrics import accuracy, bits_per_byte, evaluate_lm, perplexity


def test_perplexity_and_bpb_by_hand() -> None:
    # a uniform guess over 65 characters has loss ln 65 and perplexity 65
    assert perplexity(math.log(65)) == pytest.approx(65.0)
    # 1 nat/token, 100 tokens for 400 bytes: 100 / 400 / ln 2 = 0.360674 bits per byte
    assert bits_per_byte(1.0, tokens=100, num_bytes=400) == pytest.approx(0.360674, abs=1e-6)
    # one token per byte at ln 2 nats = exactly 1 bit per byte
    assert bits_per_byte(math.log(2), tokens=7, num_bytes=7) == pytest.approx(1.0)
    assert math.isfinite(perplexity(1e6))  # an exploded loss reports a huge number, not OverflowError


def test_accuracy_skips_ignored_targets() -> None:
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # argmax: 1, 0, 1
    targets = torch.tensor([[1, 1, -100]])  # right, wrong, ignored -> 1/2
    assert accuracy(logits, targets) == 0.5


class TargetMeanModel(nn.Module):
    """A fake LM whose 'loss' is the mean of the non-ignored target ids, so weighting is visible."""

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        mask = y != -100
        logits = torch.zeros(*y.shape, 8)
        return logits, y[mask].float().mean()


def test_evaluate_lm_weights_by_tokens_not_batches() -> None:
    """Batch 1 scores targets 1 and 2 (mean 1.5), batch 2 only 6 (mean 6): per token (1 + 2 + 6) / 3 = 3,
    whereas averaging the batch means would give 3.75. bytes_per_token 2 -> bpb = 3 / (2 ln 2)."""
    batches = [
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 2, -100]])),
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([[6, -100, -100]])),
    ]
    metrics = evaluate_lm(TargetMeanModel(), batches, bytes_per_token=2.0)
    assert metrics["loss"] == pytest.approx(3.0)
    assert metrics["tokens"] == 3
    assert metrics["bpb"] == pytest.approx(3.0 / (2 * math.log(2)))
    assert evaluate_lm(TargetMeanModel(), batches, max_batches=1)["loss"] == pytest.approx(1.5)
