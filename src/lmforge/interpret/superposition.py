"""The toy model of superposition: n sparse features squeezed through m < n dimensions and back.

    model, losses = train_toy_models(ToyConfig(n_features=5, n_hidden=2, sparsities=[0.0, 0.9, 0.99]))
    norms, interference = feature_geometry(model.W)      # per instance and feature
    plot_superposition(model, config, "superposition.png")

One model per sparsity S, trained side by side (the leading "instance" dimension of every tensor):

    x_i = 0 with probability S, else uniform in [0, 1]           # n independent features
    h   = W x                                                    # W (m, n): the bottleneck
    x'  = ReLU(W^T h + b)                                        # read back with the same matrix
    loss = mean over the batch of sum_i I_i (x_i - x'_i)^2        # importance I_i = decay ** i

Dense features (S = 0) behave like PCA: the m most important features get orthogonal directions and
the rest are dropped (||W_i|| = 0). As features get sparser they are rarely active together, so the
model stores more features than dimensions at the price of interference (W^T W grows off-diagonal
terms); the ReLU filters the small negative interference out. For n = 5, m = 2 the columns of W
become a pentagon at high sparsity.

`feature_geometry` gives the two numbers of Elhage et al.'s figures: the norm ||W_i|| (is feature i
represented?) and sum over j != i of (W_i / ||W_i|| . W_j)^2 (how much it shares its direction).

Deliberately not here: the computation-in-superposition variants (|x| with ReLU hidden layers), the
dimensionality/fractional-dimension plots, privileged-basis experiments.

References: Elhage et al. 2022, "Toy Models of Superposition" (sections 2-3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import check, is_int, is_number
from lmforge.fileio import save_figure


@dataclass
class ToyConfig:
    """One toy experiment: a model per entry of `sparsities`, all of the same shape."""

    n_features: int = 5  # n: input and output features
    n_hidden: int = 2  # m: the bottleneck width (m < n for superposition)
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.7, 0.9, 0.97, 0.99])  # P(x_i = 0)
    importance_decay: float = 0.9  # I_i = decay ** i (1.0 = all features equally important)
    steps: int = 4000  # Adam steps
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_features", "n_hidden", "steps", "batch_size"):
            check(
                is_int(getattr(self, name), 1), f"toy.{name}", getattr(self, name), "use a positive integer"
            )
        check(
            len(self.sparsities) > 0 and all(is_number(s) and 0 <= s < 1 for s in self.sparsities),
            "toy.sparsities",
            self.sparsities,
            "use a list of probabilities in [0, 1)",
        )
        for name in ("importance_decay", "lr"):
            check(
                is_number(getattr(self, name)) and getattr(self, name) > 0,
                f"toy.{name}",
                getattr(self, name),
                "use a positive number",
            )


class ToyModel(nn.Module):
    def __init__(self, n_instances: int, n_features: int, n_hidden: int):
        super().__init__()
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_instances, n_hidden, n_features)))
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (I, B, n) -> x' (I, B, n)."""
        h = torch.einsum("imn,ibn->ibm", self.W, x)  # (I, B, m)
        return F.relu(torch.einsum("imn,ibm->ibn", self.W, h) + self.b[:, None, :])


def sample_features(
    sparsities: torch.Tensor, batch_size: int, n_features: int, generator: torch.Generator
) -> torch.Tensor:
    """sparsities (I,) -> x (I, B, n): each entry 0 with probability S of its instance, else U[0, 1]."""
    shape = (sparsities.numel(), batch_size, n_features)
    values = torch.rand(shape, generator=generator)
    active = torch.rand(shape, generator=generator) >= sparsities[:, None, None]
    return values * active


def toy_loss(model: ToyModel, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """x (I, B, n), importance (n,) -> per-instance loss (I,): mean over B of sum_i I_i (x_i - x'_i)^2."""
    return (importance * (x - model(x)).pow(2)).sum(-1).mean(-1)


def train_toy_models(config: ToyConfig) -> tuple[ToyModel, torch.Tensor]:
    """Train one model per sparsity; returns the models (instance i = sparsities[i]) and the final
    per-instance loss on a fresh batch of 8192."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    sparsities = torch.tensor(config.sparsities, dtype=torch.float32)
    importance = config.importance_decay ** torch.arange(config.n_features, dtype=torch.float32)
    model = ToyModel(len(config.sparsities), config.n_features, config.n_hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(config.steps):
        x = sample_features(sparsities, config.batch_size, config.n_features, generator)
        loss = toy_loss(model, x, importance).sum()  # instances are independent: summing trains each
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = toy_loss(model, sample_features(sparsities, 8192, config.n_features, generator), importance)
    return model.eval(), final


def feature_geometry(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (I, m, n) -> (norms, interference), each (I, n): ||W_i|| and sum_{j != i} (W_i/||W_i|| . W_j)^2.

    Example (one instance, m = 2): columns (1, 0), (0, 1), (-1, 0) -> norms [1, 1, 1], interference
    [1, 0, 1] (features 0 and 2 share a line in opposite directions, feature 1 is alone).
    """
    W = W.detach()
    norms = W.norm(dim=1)  # (I, n)
    unit = W / norms.clamp_min(1e-8)[:, None, :]
    overlaps = torch.einsum("imn,imk->ink", unit, W).pow(2)  # (I, n, n): (W_i-hat . W_j)^2
    interference = overlaps.sum(-1) - overlaps.diagonal(dim1=1, dim2=2)
    return norms, interference


def geometry_table(model: ToyModel, sparsities: Sequence[float], losses: torch.Tensor) -> str:
    """Per sparsity: the loss, how many features are represented (||W_i|| > 0.5) and each feature's
    norm and interference (rounded)."""
    norms, interference = feature_geometry(model.W)
    lines = [f"{'sparsity':>8} {'loss':>8} {'represented':>11}  ||W_i|| (interference) for i = 0 .."]
    for i, sparsity in enumerate(sparsities):
        cells = " ".join(
            f"{float(n):.2f}({float(s):.2f})" for n, s in zip(norms[i], interference[i], strict=True)
        )
        lines.append(f"{sparsity:>8.3f} {float(losses[i]):>8.4f} {int((norms[i] > 0.5).sum()):>11}  {cells}")
    return "\n".join(lines)


def plot_superposition(model: ToyModel, sparsities: Sequence[float], path: str | Path) -> Path:
    """One column per sparsity: W^T W as a heatmap (blue negative, red positive) and, for m = 2, the
    columns of W as arrows in the hidden plane (colour = importance rank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    W = model.W.detach()
    n_instances, m, n = W.shape
    rows = 2 if m == 2 else 1
    fig, axes = plt.subplots(
        rows, n_instances, figsize=(2.2 * n_instances, 2.3 * rows), dpi=80, squeeze=False
    )
    gram = torch.einsum("imn,imk->ink", W, W)  # (I, n, n) = W^T W
    colors = plt.get_cmap("viridis")(torch.linspace(0, 0.9, n).numpy())
    for i, sparsity in enumerate(sparsities):
        ax = axes[0][i]
        ax.imshow(gram[i].numpy(), cmap="RdBu_r", vmin=-1.2, vmax=1.2)
        ax.set_title(f"1 - S = {1 - sparsity:.3g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if rows == 2:
            ax = axes[1][i]
            for j in range(n):
                ax.plot([0, float(W[i, 0, j])], [0, float(W[i, 1, j])], color=colors[j], linewidth=2)
                ax.scatter([float(W[i, 0, j])], [float(W[i, 1, j])], color=colors[j], s=12)
            ax.set_xlim(-1.5, 1.5)
            ax.set_ylim(-1.5, 1.5)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("W^T W", fontsize=9)
    if rows == 2:
        axes[1][0].set_ylabel("columns of W", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
