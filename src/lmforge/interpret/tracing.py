"""Activation patching (causal tracing): which (layer, position) carries what decides an answer.

Two prompts of the same length differ in a few tokens, e.g. "When Mary and John went out, John gave
the ball to" (clean, answer " Mary") and the same with "Mary" swapped for another name (corrupt). The
metric is the logit difference at the last position, logit(answer) - logit(wrong). The corrupt prompt
is run once per (layer, position) with that one activation restored to its value in the clean run; a
cell's effect is how much of the clean logit difference the restoration brings back:

    restored[l, t] = (diff(patched at l, t) - diff(corrupt)) / (diff(clean) - diff(corrupt))

so 0 = no effect, 1 = the whole clean behaviour. `kind` chooses the activation: "resid_pre" (the whole
residual stream entering layer l), "attn_out" or "mlp_out" (one branch's contribution).

Deliberately not here: noise corruption (Meng et al. add Gaussian noise to the subject embeddings; here
the corruption is a second prompt, as in Wang et al. 2022), path patching, attribution patching.

References: Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (causal tracing);
Wang et al. 2022, "Interpretability in the Wild" (clean/corrupt prompts, logit difference); Heimersheim
& Nanda 2024, "How to use and interpret activation patching".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import ConfigError
from lmforge.fileio import save_figure
from lmforge.interpret.hooks import capture, patch
from lmforge.models.gpt import GPT

KINDS = ("resid_pre", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Trace:
    clean_diff: float  # logit(answer) - logit(wrong) on the clean prompt
    corrupt_diff: float  # the same on the corrupt prompt
    patched_diff: torch.Tensor  # (n_layer, T): with activation (l, t) restored from the clean run
    restored: torch.Tensor  # (n_layer, T): (patched - corrupt) / (clean - corrupt)


def logit_difference(logits: torch.Tensor, answer: int, wrong: int) -> float:
    """logits (1, T, V) -> logit of `answer` minus logit of `wrong` at the last position."""
    return float(logits[0, -1, answer] - logits[0, -1, wrong])


def trace(
    model: GPT,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    *,
    answer: int,
    wrong: int,
    kind: str = "resid_pre",
) -> Trace:
    """clean and corrupt ids, each (T,) -> the effect of restoring each (layer, position) of `kind`."""
    if kind not in KINDS or (kind == "mlp_out" and model.config.attn_only):
        raise ConfigError(
            f"unknown activation kind {kind!r} for causal tracing; choose one of {', '.join(KINDS)}"
        )
    clean, corrupt = clean.reshape(1, -1), corrupt.reshape(1, -1)
    if clean.shape != corrupt.shape:
        raise ConfigError(
            f"the clean and corrupt prompts must have the same number of tokens ({clean.size(1)} vs "
            f"{corrupt.size(1)}); change words for words of the same token length"
        )
    L, T = model.config.n_layer, clean.size(1)
    points = [f"blocks.{layer}.{kind}" for layer in range(L)]
    clean_acts = capture(model, clean, points)
    clean_diff = logit_difference(clean_acts["logits"], answer, wrong)
    corrupt_diff = logit_difference(capture(model, corrupt, [])["logits"], answer, wrong)
    if clean_diff == corrupt_diff:
        raise ConfigError("the clean and corrupt prompts give the same logit difference: nothing to trace")
    patched = torch.zeros(L, T)
    for layer, point in enumerate(points):
        for position in range(T):

            def restore(
                activation: torch.Tensor, point: str = point, position: int = position
            ) -> torch.Tensor:
                new = activation.clone()
                new[:, position] = clean_acts[point][:, position]
                return new

            patched[layer, position] = logit_difference(
                patch(model, corrupt, {point: restore}), answer, wrong
            )
    restored = (patched - corrupt_diff) / (clean_diff - corrupt_diff)
    return Trace(clean_diff, corrupt_diff, patched, restored)


def plot_trace(result: Trace, tokens: Sequence[str], path: str | Path, *, title: str) -> Path:
    """Heatmap of `restored`: positions (tokens) down, layers across, as in Meng et al.'s figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, T = result.restored.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * L, 0.8 + 0.28 * T), dpi=80)
    image = ax.imshow(result.restored.T.numpy(), cmap="Purples", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_yticks(range(T), [repr(t)[1:-1] for t in tokens], fontsize=8)
    ax.set_xticks(range(L), [str(layer) for layer in range(L)], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction of logit difference restored")
    fig.tight_layout()
    return save_figure(fig, path)
