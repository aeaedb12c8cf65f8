"""Linear probes: how well a property of the input can be read off the residual stream at each depth.

    ids, labels, names = topic_probe_data(tokenizer, leads=1200, length=64)   # Wikipedia leads, 11 topics
    rows = probe_by_layer(model, ids, labels, n_classes=len(names), positions=range(16, 64, 4))
    control = probe_by_layer(GPT(model.config), ids, labels, ...)               # random weights, same shape

A probe is multinomial logistic regression on the standardised activations of one depth (depth 0 = the
embeddings, depth i = the stream after block i), fitted by full-batch L-BFGS on

    mean cross-entropy + (l2 / 2) * ||W||^2        (bias not penalised)

which is scikit-learn's `LogisticRegression(C=1 / (l2 * n_train))` objective divided by C * n_train, so
both find the same minimum (`tests/parity/test_probe_sklearn.py`). Examples are the activations at a few
positions of each row; the held-out split is by row (a lead's positions are all train or all test), so
a probe cannot pass by recognising a row it has seen.

The control is the same architecture with its initial random weights (Hewitt & Liang 2019 argue for
controls: a rich enough probe reads a property even off features that were never trained for it).

Deliberately not here: non-linear (MLP) probes, control tasks with shuffled word types, amnesic
probing; probes on attention patterns.

References: Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes";
Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"; Belinkov 2022, "Probing
Classifiers: Promises, Shortcomings, and Advances".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError
from lmforge.fileio import save_figure
from lmforge.interpret.hooks import capture
from lmforge.models.gpt import GPT
from lmforge.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class LinearProbe:
    mean: torch.Tensor  # (C,) feature means of the training set
    scale: torch.Tensor  # (C,) feature standard deviations (1 where a feature is constant)
    weight: torch.Tensor  # (K, C) on standardised features
    bias: torch.Tensor  # (K,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, C) -> class logits (N, K)."""
        return ((features - self.mean) / self.scale) @ self.weight.T + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(features).argmax(-1) == labels).float().mean())


def fit_probe(
    features: torch.Tensor, labels: torch.Tensor, *, n_classes: int, l2: float = 1e-3, max_iter: int = 200
) -> LinearProbe:
    """features (N, C), integer labels (N,) in 0 .. n_classes-1 -> the fitted probe (see module doc)."""
    if features.ndim != 2 or labels.shape != features.shape[:1] or features.size(0) < 2:
        raise ConfigError(
            f"a probe needs features (N, C) and labels (N,), got {features.shape}, {labels.shape}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ConfigError(f"probe labels must lie in 0 .. {n_classes - 1}")
    x = features.double()
    mean, scale = x.mean(0), x.std(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = (x - mean) / scale
    weight = torch.zeros(n_classes, x.size(1), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return LinearProbe(mean, scale, weight.detach(), bias.detach())


def residual_features(model: GPT, ids: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """ids (B, T) -> the residual stream at `positions` of every row, (n_layer + 1, B * P, C) float.

    Depth 0 is the input of block 0 (embeddings plus positions), depth i the output of block i. Rows are
    B-major: example b * P + p is row b at positions[p].
    """
    L = model.config.n_layer
    points = [f"blocks.{i}.resid_pre" for i in range(L)] + [f"blocks.{L - 1}.resid_post"]
    index = torch.as_tensor(list(positions))
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= ids.size(1):
        raise ConfigError(f"probe positions must lie in 0 .. {ids.size(1) - 1}")
    acts = capture(model, ids, points)
    return torch.stack([acts[p][:, index].reshape(-1, acts[p].size(-1)) for p in points]).float()


@dataclass(frozen=True)
class ProbeResult:
    depth: int  # 0 = embeddings, i = after block i
    train_accuracy: float
    test_accuracy: float


def probe_by_layer(
    model: GPT,
    ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_classes: int,
    positions: Sequence[int],
    test_fraction: float = 0.25,
    l2: float = 1e-3,
    seed: int = 0,
) -> list[ProbeResult]:
    """ids (B, T) with one label per row (B,) -> a probe per depth on the activations at `positions`,
    trained on a random (1 - test_fraction) of the rows and scored on the rest."""
    B = ids.size(0)
    n_test = round(B * test_fraction)
    if labels.shape != (B,) or not 1 <= n_test < B:
        raise ConfigError(
            f"probe_by_layer needs one label per row and rows on both sides of the split ({B} rows)"
        )
    order = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    test_rows, train_rows = order[:n_test], order[n_test:]
    P = len(positions)
    features = residual_features(model, ids, positions).reshape(-1, B, P, model.config.n_embd)
    results = []
    for depth, depth_features in enumerate(features):
        train_x = depth_features[train_rows].reshape(-1, depth_features.size(-1))
        test_x = depth_features[test_rows].reshape(-1, depth_features.size(-1))
        train_y, test_y = labels[train_rows].repeat_interleave(P), labels[test_rows].repeat_interleave(P)
        probe = fit_probe(train_x, train_y, n_classes=n_classes, l2=l2)
        results.append(ProbeResult(depth, probe.accuracy(train_x, train_y), probe.accuracy(test_x, test_y)))
    return results


def topic_probe_data(
    tokenizer: Tokenizer, *, leads: int, length: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The built-in Wikipedia leads as a probing set: `leads` leads drawn at random among those at least
    `length` tokens long, each cut to its first `length` tokens, labelled with its topic.

    Returns ids (leads, length), labels (leads,) and the topic names (label i = names[i]).
    """
    from lmforge.data.builtin import wiki_lead_topics

    records = wiki_lead_topics()
    names = sorted({topic for _, topic in records})
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    rows, labels = [], []
    for i in order:
        text, topic = records[i]
        tokens = tokenizer.encode_ordinary(text)
        if len(tokens) >= length:
            rows.append(tokens[:length])
            labels.append(names.index(topic))
            if len(rows) == leads:
                break
    if len(rows) < leads:
        raise DataError(f"only {len(rows)} Wikipedia leads have {length} tokens; ask for fewer or shorter")
    return torch.tensor(rows), torch.tensor(labels), names


def probe_table(trained: Sequence[ProbeResult], control: Sequence[ProbeResult], chance: float) -> str:
    """Held-out (and training) accuracy by depth, trained model against the random-weight control."""
    lines = [f"{'depth':>5} {'trained test':>12} {'(train)':>8} {'random test':>11} {'(train)':>8}"]
    for t, c in zip(trained, control, strict=True):
        name = "emb" if t.depth == 0 else str(t.depth)
        lines.append(
            f"{name:>5} {t.test_accuracy:>12.3f} {t.train_accuracy:>8.3f} "
            f"{c.test_accuracy:>11.3f} {c.train_accuracy:>8.3f}"
        )
    return "\n".join(lines) + f"\n(chance = the most frequent topic: {chance:.3f})"


def plot_probes(
    trained: Sequence[ProbeResult], control: Sequence[ProbeResult], chance: float, path: str | Path
) -> Path:
    """Held-out accuracy against depth, trained and random model, with the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = [r.depth for r in trained]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(depths, [r.test_accuracy for r in trained], marker="o", label="trained")
    ax.plot(depths, [r.test_accuracy for r in control], marker="s", label="random weights")
    ax.axhline(chance, color="gray", linestyle=":", label="chance")
    ax.set_xticks(depths, ["emb"] + [str(d) for d in depths[1:]])
    ax.set_xlabel("residual stream after layer")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
