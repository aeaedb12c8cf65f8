"""Language-model metrics: mean loss over a split, perplexity, bits-per-byte, next-token (or masked-token)
accuracy, and the unigram distribution and baseline of a masked-LM.

- Perplexity is exp(mean loss in nats per token): the effective number of equally likely choices.
- Bits-per-byte divides the total loss by the number of UTF-8 bytes the tokens stand for, not the number
  of tokens, so models with different tokenizers are comparable: bpb = loss * tokens / (bytes * ln 2).
  The token and byte counts of a split come from the dataset's meta.json.
- `evaluate_lm` averages over *target tokens* (IGNORE_INDEX targets are skipped), not over batches, so
  a padded last batch, or a batch of short answers under a loss mask, counts exactly as much as it
  should. It is the one held-out loss of lmforge: `lmforge eval`, the trainer's periodic evaluation and
  the arithmetic recipe's answer-only loss all call it.

Deliberately not here: downstream tasks (exact match lives with the recipe that defines it), sampling.
References: Gao et al. 2020, "The Pile" (bits per byte); Hugging Face, "Perplexity of fixed-length models".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from lmforge.models.gpt import IGNORE_INDEX


def perplexity(loss: float) -> float:
    """exp(loss); loss in nats per token. Example: loss ln(65) = 4.174 -> perplexity 65."""
    return math.exp(min(loss, 700.0))  # exp(709) overflows a float; an exploded loss reports ~1e304


def bits_per_byte(loss: float, *, tokens: int, num_bytes: int) -> float:
    """Bits per UTF-8 byte from a mean loss in nats per token.

    Example: loss 1.0 nat/token, 100 tokens for 400 bytes -> 100 nats / 400 bytes / ln 2 = 0.3607 bits/byte.
    """
    if tokens <= 0 or num_bytes <= 0:
        raise ValueError(f"tokens and num_bytes must be positive, got {tokens} and {num_bytes}")
    return loss * tokens / (num_bytes * math.log(2))


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored targets (not IGNORE_INDEX) where the argmax of logits (..., V) equals the target."""
    mask = targets != IGNORE_INDEX
    if not mask.any():
        return float("nan")
    return (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()


def unigram_logprobs(train_tokens: np.ndarray, *, vocab_size: int) -> torch.Tensor:
    """log p(id) (V,) float64 from the token frequencies of `train_tokens`, add-one smoothed (an id never
    seen keeps a small probability). Example: train [0, 0, 1], vocab 3 -> log((3, 2, 1) / 6)."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size] + 1
    return torch.from_numpy(np.log(counts / counts.sum()))  # (V,)


def unigram_loss(train_tokens: np.ndarray, targets: Sequence[torch.Tensor], *, vocab_size: int) -> float:
    """Mean cross-entropy (nats) of the scored targets under the unigram distribution of `train_tokens`
    (`unigram_logprobs`): the loss of a model that knows token frequencies and nothing of context, the
    baseline a masked-LM must beat. Example: train [0, 0, 1], vocab 3 -> p = (3, 2, 1) / 6; targets
    [0, 2] -> (ln 2 + ln 6) / 2 = 1.2425."""
    logp = unigram_logprobs(train_tokens, vocab_size=vocab_size)  # (V,)
    scored = torch.cat([t[t != IGNORE_INDEX].reshape(-1) for t in targets])
    if scored.numel() == 0:
        raise ValueError("unigram_loss: the targets contain no scored token")
    return float(-logp[scored].mean())


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_batches: int = 0,
    device: str | torch.device = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss, perplexity, accuracy and (given bytes_per_token) bpb of `model`.

    `model(x, y)` must return `(logits, mean loss over non-ignored targets)`, like `lmforge.models.GPT`;
    the logits are (B, T, V), or (N, V) for the N non-ignored targets in row-major order (a BERT's
    masked-LM head runs on the scored positions only).
    `max_batches=0` uses every batch. The model is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    try:
        for i, (x, y) in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, loss = model(x, y)
            n = int((y != IGNORE_INDEX).sum())
            if n == 0:
                continue
            total_loss += float(loss) * n  # mean over this batch's targets -> sum
            total_tokens += n
            mask = y != IGNORE_INDEX
            predicted = logits.argmax(-1)  # (B, T), or (N,) when the model scored the targets only
            if predicted.shape == y.shape:
                predicted = predicted[mask]
            total_correct += int((predicted == y[mask]).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("evaluate_lm: the batches contain no target tokens")
    loss = total_loss / total_tokens
    metrics = {
        "loss": loss,
        "ppl": perplexity(loss),
        "accuracy": total_correct / total_tokens,
        "tokens": float(total_tokens),
    }
    if bytes_per_token is not None:
        metrics["bpb"] = loss / (bytes_per_token * math.log(2))
    return metrics
