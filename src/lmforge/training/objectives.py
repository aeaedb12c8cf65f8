"""Training objectives: what a batch is scored by, shared by pretraining, the recipes and fine-tuning.

An objective maps (model, x, y) to the mean loss over the scored targets of y; `count_targets(y)` says
how many there are, which lets the trainer weight micro-batches and evaluation average over tokens
instead of batches (see `trainer.accumulate_gradients`). Targets equal to `IGNORE_INDEX` are not
scored, which is how a loss mask is written: padding, the operands of an arithmetic problem, the prompt
of an instruction pair.

- `causal_lm`: next-token cross-entropy; the model computes it (`GPT.forward(x, y)`), so that the
  fp32 log-softmax and `torch.compile` of the forward cover it.
- `count_targets`: the scored positions of a target tensor.

Classification, masked-LM, DPO and distillation losses join this module as the fine-tuning issues land.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmforge.models.gpt import IGNORE_INDEX

# (model, x, y) -> mean loss over the scored targets of y (a scalar tensor to backpropagate)
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def count_targets(targets: torch.Tensor) -> int:
    """Positions that the loss scores. Example: [[5, -100, 7], [-100, -100, 2]] -> 3."""
    return int((targets != IGNORE_INDEX).sum())


def causal_lm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, as `model(x, y) -> (logits, mean loss)` computes it."""
    return model(x, y)[1]
