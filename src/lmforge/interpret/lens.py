"""The logit lens: read the residual stream after every layer as if it were the last one.

    lens = logit_lens(model, ids)           # (n_layer + 1, B, T, V); row 0 = embeddings, i = after block i
    top_tokens(lens[:, 0, -1], k=5)         # the 5 likeliest tokens at each depth
    target_ranks(lens[:, 0, -1], target)    # rank of one token at each depth (0 = top)

Row i applies the model's own final norm and unembedding to the stream (`ln_f`, then `lm_head`) to the
input of block i (i < n_layer) or to the output of the last block (i = n_layer), so the last row is
exactly the model's logits. For a post-norm model `ln_f` is the identity and the blocks' own norms are
already in the stream.

Deliberately not here: learned per-layer translators (the "tuned lens", Belrose et al. 2023).

References: nostalgebraist 2020, "interpreting GPT: the logit lens".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmforge.fileio import save_figure
from lmforge.interpret.hooks import capture
from lmforge.models.gpt import GPT


def logit_lens(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T) -> lens logits (n_layer + 1, B, T, V) (see the module docstring)."""
    L = model.config.n_layer
    points = [f"blocks.{i}.resid_pre" for i in range(L)] + [f"blocks.{L - 1}.resid_post"]
    acts = capture(model, ids, points)
    streams = torch.stack([acts[p] for p in points])  # (L + 1, B, T, C)
    with torch.no_grad():
        return model.lm_head(model.transformer.ln_f(streams))


def top_tokens(lens_logits: torch.Tensor, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lens logits at one position (n_layer + 1, V) -> (probabilities, ids), each (n_layer + 1, k)."""
    return lens_logits.float().softmax(-1).topk(k, dim=-1)


def target_ranks(lens_logits: torch.Tensor, target: int) -> list[int]:
    """lens logits at one position (n_layer + 1, V) -> the rank of `target` at each depth (0 = top).

    Ties count in the target's favour: rank = how many tokens score strictly higher.
    """
    scores = lens_logits.float()
    return (scores > scores[:, target : target + 1]).sum(-1).tolist()


def plot_ranks(ranks: Sequence[int], path: str | Path, *, title: str) -> Path:
    """Rank of the target token (log scale, 1 = top) against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth_labels = ["emb"] + [str(i) for i in range(1, len(ranks))]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(range(len(ranks)), [r + 1 for r in ranks], marker="o")
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.set_xticks(range(len(ranks)), depth_labels)
    ax.set_xlabel("after layer")
    ax.set_ylabel("rank of target (1 = top)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
