"""Gradient checking: compare an analytic gradient with central finite differences.

What it does: `numerical_gradient(f, x)` perturbs each entry of x by ±eps and returns
(f(x+eps) - f(x-eps)) / 2eps, whose error is O(eps²); `relative_error(a, b)` gives the scale-free
discrepancy |a-b| / max(|a|, |b|, tiny) that gradient checks are judged by (about 1e-7 or below is a
correct backward pass in float64; 1e-2 is a bug).

What it deliberately does not do: no random subsets of coordinates, no float32 support (finite
differences in float32 are too noisy to mean anything). It is O(size of x) evaluations of f — for
the small networks of lmforge.scratch only.

References: CS231n notes, "Gradient checks"; Goodfellow et al., *Deep Learning*, 11.5.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """dF/dx by central differences, where f() reads x (modified in place and restored).

    Example: x = [3.0], f = lambda: x[0] ** 2  ->  ((3+eps)² - (3-eps)²) / 2eps = 6.0 exactly in
    exact arithmetic (central differences are exact for quadratics).
    """
    grad = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + eps
        f_plus = f()
        x[idx] = original - eps
        f_minus = f()
        x[idx] = original
        grad[idx] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max over entries of |a - n| / max(|a|, |n|, 1e-12); entries where both are ~0 count as 0 error."""
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1e-12)
    diff = np.abs(analytic - numeric)
    return float(np.max(np.where(diff < 1e-12, 0.0, diff / scale), initial=0.0))
