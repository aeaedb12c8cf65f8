"""Classification results: class probabilities of a `GPTClassifier` over texts, accuracy, per-class
precision / recall / F1, the confusion matrix and its picture.

Definitions (as scikit-learn's `precision_recall_fscore_support` and `confusion_matrix`, which the tests
compare against): `confusion[i, j]` counts examples of true class i predicted as j; precision of class k
= confusion[k, k] / column k's sum, recall = confusion[k, k] / row k's sum, F1 = their harmonic mean; a
zero denominator gives 0.

Deliberately not here: training the classifier (`lmforge.training.finetune`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.fileio import atomic_write_bytes


@torch.no_grad()
def class_probabilities(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_tokens: int, pad_id: int, batch_size: int = 64
) -> np.ndarray:
    """(N, K) softmax of the classifier's logits; each text cut to its first `max_tokens` tokens and
    right-padded with `pad_id` (a token that plain text never encodes to, e.g. the end-of-text id)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    ids = [i[:max_tokens] for i in tokenizer.encode_ordinary_batch(list(texts))]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        x = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)
        for row, seq in enumerate(chunk):
            x[row, : len(seq)] = torch.tensor(seq)
        x = x.to(device)
        logits = model(x, attention_mask=x != pad_id)[0]  # (B, K)
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted. Example: labels [0, 1, 1], predictions
    [0, 0, 1] -> [[1, 0], [1, 1]]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def classification_report(
    labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 / support and the confusion matrix, as JSON-ready values.

    Example: labels [0, 1, 1], predictions [0, 0, 1]: accuracy 2/3; class 0 precision 1/2, recall 1;
    class 1 precision 1, recall 1/2.
    """
    matrix = confusion_matrix(labels, predictions, len(classes))
    hits = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "classes": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(actual[k]),
            }
            for k, name in enumerate(classes)
        },
        "confusion": matrix.tolist(),
    }


def report_table(report: dict[str, Any]) -> str:
    """Fixed-width text of a `classification_report`, one row per class."""
    lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name, row in report["classes"].items():
        lines.append(
            f"{name:<12}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>9}"
        )
    lines.append(f"accuracy {report['accuracy']:.2%}")
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str) -> None:
    """PNG of the confusion matrix with the count in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 1.8))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
