"""Evaluation: language-model metrics (loss, perplexity, bits-per-byte, accuracy) and, later, tasks."""

from lmforge.evaluation.metrics import (
    accuracy,
    bits_per_byte,
    evaluate_lm,
    perplexity,
    unigram_logprobs,
    unigram_loss,
)

__all__ = ["accuracy", "bits_per_byte", "evaluate_lm", "perplexity", "unigram_logprobs", "unigram_loss"]
