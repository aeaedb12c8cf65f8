"""Optimizers and learning-rate schedules: parameter groups, AdamW / SGD, warmup + cosine / linear / constant.

- `param_groups` puts weight decay on matrices only: the weights of linear layers decay; biases, norm
  gains and (unless `decay_embeddings`) embedding tables do not. Decaying a norm gain or a bias pulls it
  towards 0, which is not a sensible prior for a scale or an offset (Loshchilov & Hutter 2019, nanoGPT's
  `configure_optimizers`).
- `lr_at` is the whole schedule as a pure function of the step, so it is tested by hand and a resumed
  run needs no scheduler state.

Deliberately not here: the loop (trainer.py), ZeRO/FSDP sharding of the optimizer state (not written yet).
References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW); "SGDR" (cosine
schedule); Goyal et al. 2017 (linear warmup).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmforge.training.config import OptimSection


def param_groups(
    model: nn.Module, *, weight_decay: float, decay_embeddings: bool = False
) -> list[dict[str, Any]]:
    """Two groups, `[{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]`.

    A parameter decays when it has 2 or more dimensions and is not an embedding table (unless
    `decay_embeddings`). Tied weights appear once (`named_parameters` de-duplicates them); a table shared
    by an `nn.Embedding` and the LM head counts as an embedding. Group names are kept for logging.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and (decay_embeddings or id(p) not in embedding_ids)
        (decay if is_matrix else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, config: OptimSection) -> torch.optim.Optimizer:
    """AdamW or SGD+momentum over `param_groups(model)`; the lr is set each step by the trainer."""
    groups = param_groups(model, weight_decay=config.weight_decay, decay_embeddings=config.decay_embeddings)
    if config.name == "adamw":
        # foreach=True: one multi-tensor kernel per op instead of a Python loop over parameters.
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, foreach=True
        )
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)


def lr_at(
    step: int, *, lr: float, min_lr: float, warmup_iters: int, decay_iters: int, schedule: str = "cosine"
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup: lr * (step + 1) / warmup_iters for step < warmup_iters, so step 0 already moves the weights
    and step warmup_iters - 1 uses the full lr. Then, with p = (step - warmup_iters) / (decay_iters -
    warmup_iters) clipped to [0, 1]: cosine gives min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, linear
    gives lr - (lr - min_lr) * p, constant gives lr. After decay_iters the rate stays at min_lr.

    Example (lr=1, min_lr=0.1, warmup_iters=2, decay_iters=6, cosine): steps 0..6 ->
    0.5, 1.0, 1.0, 0.55 + 0.45 * cos(pi/4) = 0.868, 0.55, 0.232, 0.1.
    """
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if schedule == "constant":
        return lr
    span = max(1, decay_iters - warmup_iters)
    progress = min(1.0, max(0.0, (step - warmup_iters) / span))
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
