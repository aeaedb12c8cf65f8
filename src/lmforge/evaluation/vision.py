"""Scoring and showing image models: predictions, accuracy, confusion matrix, image grids as PNG.

- `predict`: logits of a classifier over batches -> predicted labels, true labels, mean cross-entropy.
- `confusion_matrix`: counts[true, predicted], checked by hand in the tests.
- `image_grid` / `save_image_grid`: tile (N, C, H, W) images in [0, 1] into one picture (the layout of
  torchvision's `make_grid`: row-major, `padding` pixels between tiles), written as PNG with Pillow.
- `plot_confusion_matrix`, `misclassified_grid`: the two pictures a classification run leaves behind.

Deliberately not here: FID (`fid.py`), training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.fileio import atomic_open, save_figure


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, float]:
    """(predicted labels (N,), true labels (N,), mean cross-entropy) with the model in eval mode."""
    was_training = model.training
    model.eval()
    predicted, labels, loss_sum = [], [], 0.0
    for x, y in batches:
        logits, _ = model(x.to(device))
        loss_sum += F.cross_entropy(logits.float(), y.to(device), reduction="sum").item()
        predicted.append(logits.argmax(-1).cpu())
        labels.append(y)
    model.train(was_training)
    y_true = torch.cat(labels).numpy()
    return torch.cat(predicted).numpy(), y_true, loss_sum / max(1, len(y_true))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of images of class i predicted as class j.

    Example: true [0, 0, 1], predicted [0, 1, 1] -> [[1, 1], [0, 1]].
    """
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def image_grid(images: torch.Tensor | np.ndarray, *, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] (clipped) -> a uint8 picture (rows*(H+p)+p, nrow*(W+p)+p[, C])."""
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images.detach().cpu())
    x = x.float().clamp(0, 1)
    N, C, H, W = x.shape
    rows = -(-N // nrow)  # ceil
    canvas = torch.ones(C, rows * (H + padding) + padding, nrow * (W + padding) + padding)  # white frame
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        canvas[:, top : top + H, left : left + W] = x[i]
    array = (canvas * 255).round().byte().permute(1, 2, 0).numpy()  # (H', W', C)
    return array[..., 0] if C == 1 else array


def save_png(array: np.ndarray, path: str | Path, *, scale: int = 1) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, each pixel enlarged to scale x scale."""
    from PIL import Image

    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        Image.fromarray(array).save(f, format="PNG", optimize=True)
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8, scale: int = 2) -> Path:
    return save_png(image_grid(images, nrow=nrow), path, scale=scale)


def plot_confusion_matrix(
    counts: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """A heat map of `counts` with the number in each cell, rows = true class, columns = prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=80)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = counts.max() / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if counts[i, j] > threshold else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return save_figure(fig, path)


def misclassified_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    *,
    count: int = 24,
) -> Path:
    """The first `count` misclassified images (uint8 (N, C, H, W)), each titled "true -> predicted"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(y_true != y_pred)[:count]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), dpi=80, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        image = images[i]
        ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")
        ax.set_title(f"{classes[y_true[i]]}\n-> {classes[y_pred[i]]}", fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
