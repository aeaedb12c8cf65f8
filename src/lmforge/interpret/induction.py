"""Induction heads: the repeated-random-sequence test, per-head induction scores, the in-context loss drop.

A sequence of N random tokens followed by the same N tokens again: in the second half every next token
is predictable by looking back at what followed the current token's earlier occurrence. An induction
head does exactly that: from position t (token x) it attends to position t - N + 1, the token after the
first x. Its score is the mean attention weight on that position over the second half:

    score(head) = mean over rows b and t = N .. 2N-1 of pattern[b, head, t, t - N + 1]

(1 = a perfect induction head, about 1/t for a head that spreads its attention evenly). The loss drop
is the mean next-token loss on the first copy (unpredictable: about ln V) minus that on the second copy.

The score looks at one diagonal only. `by_offset` keeps all of them: the mean weight on key t - d for
d = 0 .. N over the same queries, so a head that copies from a fixed distance shows as one peak (the
score is d = N - 1; d = N is the earlier occurrence itself, a "duplicate-token" head; d = 1 a
previous-token head). It shows circuits that predict the repeat from another position than t - N + 1.

Deliberately not here: training models to have them (`lmforge.recipes.induction`), prefix-matching and
copying scores from the OV circuit (Olsson et al. section "Head activation evaluators").

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al.
2022, "In-context Learning and Induction Heads".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.interpret.hooks import capture
from lmforge.models.gpt import GPT


def repeated_random_tokens(vocab_size: int, half: int, *, batch_size: int, seed: int) -> torch.Tensor:
    """(batch_size, 2 * half) int64: `half` uniform random ids, then the same ids again."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(vocab_size, (batch_size, half), generator=generator)
    return torch.cat([first, first], dim=1)


@dataclass(frozen=True)
class InductionReport:
    scores: torch.Tensor  # (n_layer, n_head) induction score of each head
    by_offset: torch.Tensor  # (n_layer, n_head, N + 1) mean weight on key t - d, d = 0 .. N
    loss_first: float  # mean next-token loss predicting tokens 1 .. N-1 (the first copy)
    loss_second: float  # mean next-token loss predicting tokens N+1 .. 2N-1 (the repeat)
    loss_by_position: torch.Tensor  # (2N - 1,) mean loss predicting token t + 1 from the prefix to t

    @property
    def loss_drop(self) -> float:
        return self.loss_first - self.loss_second


def induction_report(model: GPT, ids: torch.Tensor) -> InductionReport:
    """ids (B, 2N) from `repeated_random_tokens` -> induction scores of every head and the loss drop."""
    B, T = ids.shape
    half = T // 2
    if T % 2 or half < 2 or not torch.equal(ids[:, :half], ids[:, half:]):
        raise ConfigError("induction_report needs sequences made of one random half repeated (2N tokens)")
    points = [f"blocks.{i}.attn.pattern" for i in range(model.config.n_layer)]
    acts = capture(model, ids, points)
    queries = torch.arange(half, T)  # t = N .. 2N-1
    keys = queries - half + 1  # the token after the previous occurrence
    scores = torch.stack([acts[p][:, :, queries, keys].float().mean(dim=(0, 2)) for p in points])  # (L, nh)
    offsets = torch.arange(half + 1)  # d = 0 .. N; t - d >= 0 for every query t >= N
    by_offset = torch.stack(
        [acts[p][:, :, queries[:, None], queries[:, None] - offsets].float().mean(dim=(0, 2)) for p in points]
    )  # (L, nh, N + 1)
    logits = acts["logits"].float()  # (B, T, V)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    by_position = losses.mean(0)  # entry t: predicting token t + 1
    return InductionReport(
        scores=scores,
        by_offset=by_offset,
        loss_first=float(by_position[: half - 1].mean()),
        loss_second=float(by_position[half:].mean()),
        loss_by_position=by_position,
    )
