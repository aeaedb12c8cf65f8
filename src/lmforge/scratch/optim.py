"""Optimizers and the warmup + cosine learning-rate schedule, in numpy, step for step as torch.optim.

What it does: SGD (with optional momentum, dampening, Nesterov and coupled L2 weight decay), RMSProp,
Adam (with bias correction) and AdamW (decoupled weight decay), each updating a list of numpy arrays
in place from a list of gradients, with the same update order and epsilon placement as torch.optim so
that 100 steps agree to float64 roundoff; `warmup_cosine_lr`, the closed form of the schedule used to
pretrain GPT-style models; and `badly_conditioned_quadratic` with `run_on_quadratic`, the toy problem on
which `lmforge scratch optimizers` compares them.

What it deliberately does not do: no parameter groups, no state_dict, no closures, no AMSGrad or
centered RMSProp — lmforge.training uses torch.optim for real runs; this is the readable arithmetic.

References: torch.optim docs (the pseudo-code of each algorithm); Polyak (1964) and Sutskever et al.
(2013) for momentum; Hinton's lecture 6e for RMSProp; Kingma & Ba, "Adam" (2015); Loshchilov & Hutter,
"Decoupled Weight Decay Regularization" (2019) and "SGDR" (2017) for the cosine schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lmforge.errors import ConfigError

Array = np.ndarray


class Optimizer:
    """Holds the parameters (updated in place) and the learning rate, which a schedule may change."""

    def __init__(self, params: list[Array], *, lr: float):
        if lr < 0:
            raise ConfigError(f"lr must be >= 0, got {lr}")
        self.params = params
        self.lr = lr
        self.step_count = 0  # t in the formulas; the first step has t = 1

    def step(self, grads: list[Array]) -> None:
        self.step_count += 1
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            self._update(i, p, g)

    def _update(self, i: int, p: Array, g: Array) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """g ← g + wd·p;  b ← μ·b + (1-dampening)·g (b = g on the first step);  g ← g + μ·b if Nesterov
    else b;  p ← p − lr·g."""

    def __init__(
        self,
        params: list[Array],
        *,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr=lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening, self.nesterov, self.weight_decay = (
            momentum,
            dampening,
            nesterov,
            weight_decay,
        )
        self.buffers: list[Array | None] = [None] * len(params)  # momentum buffer b per parameter

    def _update(self, i: int, p: Array, g: Array) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p  # coupled L2: the gradient of (wd/2)·‖p‖²
        if self.momentum:
            b = self.buffers[i]
            b = g.copy() if b is None else self.momentum * b + (1.0 - self.dampening) * g
            self.buffers[i] = b
            g = g + self.momentum * b if self.nesterov else b
        p -= self.lr * g


class RMSProp(Optimizer):
    """s ← α·s + (1-α)·g²;  p ← p − lr·g / (√s + eps).  Note eps is added *after* the square root and
    there is no bias correction (torch's defaults: lr=0.01, alpha=0.99, eps=1e-8)."""

    def __init__(
        self,
        params: list[Array],
        *,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr=lr)
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.square_avg = [np.zeros_like(p) for p in params]  # s per parameter

    def _update(self, i: int, p: Array, g: Array) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        s = self.square_avg[i]
        s *= self.alpha
        s += (1.0 - self.alpha) * g * g
        p -= self.lr * g / (np.sqrt(s) + self.eps)


class Adam(Optimizer):
    """m ← β1·m + (1-β1)·g;  v ← β2·v + (1-β2)·g²;  p ← p − (lr / (1-β1ᵗ))·m / (√v / √(1-β2ᵗ) + eps).

    The bias corrections undo the pull towards the zero initialisation of m and v in the first steps.
    weight_decay here is *coupled* L2 (added to g, then rescaled by the adaptive denominator) — see AdamW.
    """

    def __init__(
        self,
        params: list[Array],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr=lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.exp_avg = [np.zeros_like(p) for p in params]  # m per parameter
        self.exp_avg_sq = [np.zeros_like(p) for p in params]  # v per parameter

    def _update(self, i: int, p: Array, g: Array) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        self._adam_update(i, p, g)

    def _adam_update(self, i: int, p: Array, g: Array) -> None:
        t = self.step_count
        m, v = self.exp_avg[i], self.exp_avg_sq[i]
        m += (1.0 - self.beta1) * (g - m)  # = β1·m + (1-β1)·g, written as torch's lerp
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        step_size = self.lr / (1.0 - self.beta1**t)
        denom = np.sqrt(v) / math.sqrt(1.0 - self.beta2**t) + self.eps
        p -= step_size * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay: first p ← p·(1 − lr·wd), then the plain Adam step.

    The decay shrinks every weight by the same factor whatever its gradient history, instead of being
    divided by √v like Adam's L2 term (torch's default weight_decay for AdamW is 0.01).
    """

    def __init__(
        self,
        params: list[Array],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, i: int, p: Array, g: Array) -> None:
        p *= 1.0 - self.lr * self.weight_decay
        self._adam_update(i, p, g)


def warmup_cosine_lr(
    step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    """Learning rate at `step` (0-based): linear warmup, then a half cosine from max_lr to min_lr.

    lr = max_lr·step/warmup_steps                            for step < warmup_steps
       = min_lr + (max_lr − min_lr)·½(1 + cos(π·progress))   with progress = (step − warmup)/(total − warmup)
       = min_lr                                              for step >= total_steps
    Example (max_lr=1, warmup=2, total=6): steps 0..6 -> 0, 0.5, 1, 0.8536, 0.5, 0.1464, 0.
    With min_lr = 0 it equals transformers' get_cosine_schedule_with_warmup (num_cycles = 0.5).
    """
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ConfigError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- the comparison problem of `lmforge scratch optimizers` --------------------------------------


def badly_conditioned_quadratic(x: Array) -> tuple[float, Array]:
    """f(x) = 2·x1² + 100·x2² and its gradient (4·x1, 200·x2).

    The curvatures differ 50-fold (condition number 50): plain SGD must keep lr < 2/200 to stay stable
    along x2, and then crawls along x1; momentum and the adaptive methods cope better.
    """
    return float(2.0 * x[0] ** 2 + 100.0 * x[1] ** 2), np.array([4.0 * x[0], 200.0 * x[1]])


def run_on_quadratic(
    make_optimizer: Callable[[list[Array]], Optimizer], *, start: tuple[float, float], steps: int
) -> tuple[Array, list[float]]:
    """Minimise badly_conditioned_quadratic from `start`; returns (trajectory (steps+1, 2), losses)."""
    x = np.array(start, dtype=np.float64)
    optimizer = make_optimizer([x])
    trajectory, losses = [x.copy()], []
    for _ in range(steps):
        loss, grad = badly_conditioned_quadratic(x)
        losses.append(loss)
        optimizer.step([grad])
        trajectory.append(x.copy())
    losses.append(badly_conditioned_quadratic(x)[0])
    return np.array(trajectory), losses
