"""Regularization in numpy: L2 (weight decay), L1 by soft thresholding, elastic net, inverted dropout.

What it does: the L2 and L1 penalties with their (sub)gradients; the soft-thresholding operator, which
is the proximal step of the L1 penalty and sets small weights exactly to zero (a plain subgradient step
only makes them oscillate around zero); one proximal-gradient (ISTA) step for the elastic net
l1·‖w‖₁ + (l2/2)·‖w‖²; and inverted dropout, which scales the kept units by 1/(1-p) during training so
that nothing needs rescaling at test time (the expected activation is unchanged).

What it deliberately does not do: no acceleration (FISTA), no line search, no dropout variants
(DropConnect, spatial); lmforge.models uses torch's dropout and AdamW's decay.

References: Tibshirani, "Regression Shrinkage and Selection via the Lasso" (1996); Zou & Hastie,
"Regularization and variable selection via the elastic net" (2005); Beck & Teboulle, ISTA/FISTA (2009);
Srivastava et al., "Dropout" (2014).
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import ConfigError

Array = np.ndarray


def l2_penalty(w: Array, *, strength: float) -> tuple[float, Array]:
    """(strength/2)·‖w‖² and its gradient strength·w — what SGD's weight_decay=strength adds to g."""
    return float(0.5 * strength * np.sum(w * w)), strength * w


def l1_penalty(w: Array, *, strength: float) -> tuple[float, Array]:
    """strength·‖w‖₁ and the subgradient strength·sign(w) (0 at w = 0, as torch's abs backward)."""
    return float(strength * np.sum(np.abs(w))), strength * np.sign(w)


def soft_threshold(v: Array, threshold: float) -> Array:
    """argmin_w ½(w − v)² + threshold·|w|, elementwise: sign(v)·max(|v| − threshold, 0).

    Example: soft_threshold([3, -0.5, 1], 1) = [2, 0, 0] (equal to torch.nn.functional.softshrink).
    """
    if threshold < 0:
        raise ConfigError(f"threshold must be >= 0, got {threshold}")
    return np.sign(v) * np.maximum(np.abs(v) - threshold, 0.0)


def elastic_net_step(w: Array, grad: Array, *, lr: float, l1: float, l2: float = 0.0) -> Array:
    """One proximal-gradient step on loss(w) + l1·‖w‖₁ + (l2/2)·‖w‖², returning the new w.

    The smooth part (loss + L2) takes a gradient step, the L1 part its proximal step:
    w ← soft_threshold(w − lr·(grad + l2·w), lr·l1). l2 = 0 gives the lasso (ISTA), l1 = 0 plain
    gradient descent with weight decay.
    """
    return soft_threshold(w - lr * (grad + l2 * w), lr * l1)


def dropout(x: Array, *, p: float, rng: np.random.Generator, training: bool = True) -> tuple[Array, Array]:
    """Inverted dropout: zero each unit with probability p and scale the survivors by 1/(1-p).

    Returns (output, mask) where mask holds 0 or 1/(1-p); the backward pass is grad_out * mask.
    E[output] = (1-p)·x/(1-p) = x, so at test time (training=False) the layer is the identity.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x, np.ones_like(x)
    mask = (rng.random(x.shape) >= p) / (1.0 - p)
    return x * mask, mask
