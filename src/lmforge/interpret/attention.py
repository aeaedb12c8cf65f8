"""Attention maps of a GPT: the weights of every head on one sequence, a per-head summary, heatmaps.

    patterns = attention_patterns(model, ids)        # (n_layer, n_head, T, T), row t sums to 1
    rows = head_summary(patterns)                    # entropy, previous-token and first-token scores
    plot_attention(patterns, tokens, "maps/")        # maps/layer0.png ... one subplot per head

Summary scores of a head, averaged over the query positions t = 1..T-1 (position 0 can only look at
itself, so it says nothing about the head):
- entropy: -sum_s a[t, s] ln a[t, s], in nats; 0 = looks at one token, ln(t + 1) = uniform over the prefix.
- previous-token score: a[t, t - 1], the weight on the token just before (1 = a pure previous-token head).
- first-token score: a[t, 0], the weight on position 0 (an "attention sink" when it is near 1).

Deliberately not here: capturing (`hooks.py`), other sequence-level statistics (`induction.py`).

References: Clark et al. 2019, "What Does BERT Look At?" (entropy and positional heads); Xiao et al.
2023 (attention sinks); Elhage et al. 2021 (previous-token heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import ConfigError
from lmforge.fileio import save_figure
from lmforge.interpret.hooks import capture
from lmforge.models.gpt import GPT


def attention_patterns(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """ids (T,) or (1, T) -> attention weights of every layer and head, (n_layer, n_head, T, T)."""
    ids = ids.reshape(1, -1)
    points = [f"blocks.{i}.attn.pattern" for i in range(model.config.n_layer)]
    acts = capture(model, ids, points)
    return torch.stack([acts[p][0] for p in points]).float()


@dataclass(frozen=True)
class HeadSummary:
    layer: int
    head: int
    entropy: float  # mean entropy of a query's attention row, nats
    previous_token: float  # mean weight on position t - 1
    first_token: float  # mean weight on position 0


def head_summary(patterns: torch.Tensor) -> list[HeadSummary]:
    """patterns (n_layer, n_head, T, T) with T >= 2 -> one summary per head, layer by layer.

    Example (one head, T=3): rows [1, 0, 0], [0.5, 0.5, 0], [0, 1, 0] -> over t = 1, 2: entropy
    (ln 2 + 0) / 2 = 0.347, previous-token (0.5 + 1) / 2 = 0.75, first-token (0.5 + 0) / 2 = 0.25.
    """
    if patterns.size(-1) < 2:
        raise ConfigError("the attention summary needs a text of at least 2 tokens")
    rows = patterns[..., 1:, :]  # (L, nh, T-1, T): queries 1..T-1
    entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1).mean(-1)  # (L, nh)
    previous = patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # a[t, t-1] for t = 1..T-1
    first = rows[..., 0].mean(-1)
    L, H = entropy.shape
    return [
        HeadSummary(
            layer, head, float(entropy[layer, head]), float(previous[layer, head]), float(first[layer, head])
        )
        for layer in range(L)
        for head in range(H)
    ]


def summary_table(summary: Sequence[HeadSummary]) -> str:
    """The summary as an aligned text table, one line per head."""
    lines = [f"{'layer':>5} {'head':>4} {'entropy':>8} {'prev-tok':>8} {'first-tok':>9}"]
    for s in summary:
        lines.append(
            f"{s.layer:>5} {s.head:>4} {s.entropy:>8.3f} {s.previous_token:>8.3f} {s.first_token:>9.3f}"
        )
    return "\n".join(lines)


def plot_attention(patterns: torch.Tensor, tokens: Sequence[str], out_dir: str | Path) -> list[Path]:
    """One PNG per layer (`layer{i}.png` in out_dir), a heatmap per head with the tokens on both axes
    (rows: the query token, columns: the token it looks at). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, T, _ = patterns.shape
    if len(tokens) != T:
        raise ConfigError(f"{len(tokens)} token labels for a pattern over {T} positions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [repr(t)[1:-1] for t in tokens]  # newlines and spaces stay visible
    side = 0.9 + 0.16 * T
    paths = []
    for layer in range(L):
        fig, axes = plt.subplots(1, H, figsize=(side * H, side + 0.4), dpi=72, squeeze=False)
        for head, ax in enumerate(axes[0]):
            ax.imshow(patterns[layer, head].numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), labels if head == 0 else [], fontsize=7)
            ax.set_title(f"layer {layer} head {head}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"layer{layer}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths
