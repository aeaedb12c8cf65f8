"""Parameter groups and learning-rate schedules, with expected values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.training.config import OptimSection
from lmforge.training.optim import build_optimizer, lr_at, param_groups


class Tiny(nn.Module):
    """Embedding (4x3), LayerNorm (weight+bias), Linear 3->5 with bias, and a head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(4, 3)
        self.ln = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 5)
        self.head = nn.Linear(3, 4, bias=False)
        self.head.weight = self.wte.weight  # tied: one parameter, counted once


def _names(model: nn.Module, params: list[torch.Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_weight_decay_only_on_matrices() -> None:
    model = Tiny()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert _names(model, decay["params"]) == {"fc.weight"}
    assert _names(model, no_decay["params"]) == {"wte.weight", "ln.weight", "ln.bias", "fc.bias"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    # every parameter exactly once, the tied table included once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters())) == 5


def test_decay_embeddings_option() -> None:
    model = Tiny()
    decay, no_decay = param_groups(model, weight_decay=0.1, decay_embeddings=True)
    assert _names(model, decay["params"]) == {"fc.weight", "wte.weight"}
    assert _names(model, no_decay["params"]) == {"ln.weight", "ln.bias", "fc.bias"}


def test_adamw_decays_only_the_decay_group() -> None:
    """With lr=0.5, weight_decay=0.1 and zero gradients, AdamW's update is the decay alone:
    p <- p * (1 - lr * wd) = p * 0.95 for fc.weight; parameters of the no-decay group stay put."""
    model = Tiny()
    optimizer = build_optimizer(model, OptimSection(lr=0.5, min_lr=0.0, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["fc.weight"].detach(), before["fc.weight"] * 0.95)
    for name in ("wte.weight", "ln.weight", "ln.bias", "fc.bias"):
        torch.testing.assert_close(after[name].detach(), before[name])


def test_optimizer_choice_and_its_settings_reach_torch() -> None:
    """optim.name picks the torch class (on zero gradients SGD's L2 decay and AdamW's decoupled decay
    move the weights alike, so the test above cannot tell them apart), with the configured settings."""
    adamw = build_optimizer(Tiny(), OptimSection(lr=0.5, min_lr=0.0, beta1=0.8, beta2=0.9, eps=1e-6))
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["betas"], adamw.defaults["eps"]) == ((0.8, 0.9), 1e-6)
    sgd = build_optimizer(Tiny(), OptimSection(name="sgd", lr=0.5, min_lr=0.0, momentum=0.7))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.7
    assert [g["name"] for g in sgd.param_groups] == ["decay", "no_decay"]  # the names the log shows


def test_sgd_momentum_by_hand() -> None:
    """SGD, lr=0.1, momentum=0.9, constant gradient 1: buffers 1, 1.9 -> p = 0 - 0.1 - 0.19 = -0.29."""
    p = nn.Parameter(torch.zeros(2))
    model = nn.Module()
    model.p = p
    optimizer = build_optimizer(model, OptimSection(name="sgd", lr=0.1, min_lr=0.0, momentum=0.9))
    for _ in range(2):
        p.grad = torch.ones(2)
        optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((2,), -0.29))


def test_cosine_schedule_by_hand() -> None:
    """lr=1, min_lr=0.1, warmup 2, decay_iters 6: warmup 1/2, 2/2; then p = 0, 1/4, 1/2, 3/4, 1 and
    lr = 0.1 + 0.45 * (1 + cos(pi p)) = 1.0, 0.1 + 0.45 * 1.70711 = 0.86820, 0.55, 0.23180, 0.1."""
    got = [lr_at(s, lr=1.0, min_lr=0.1, warmup_iters=2, decay_iters=6, schedule="cosine") for s in range(8)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.868198, 0.55, 0.231802, 0.1, 0.1], abs=1e-6)


def test_linear_and_constant_schedules_by_hand() -> None:
    """Linear, lr=1, min_lr=0, warmup 0, decay 4: 1, 0.75, 0.5, 0.25, 0, 0. Constant with warmup 4:
    0.25, 0.5, 0.75, 1, then 1 forever."""
    linear = [
        lr_at(s, lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=4, schedule="linear") for s in range(6)
    ]
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    constant = [
        lr_at(s, lr=1.0, min_lr=0.0, warmup_iters=4, decay_iters=4, schedule="constant") for s in range(6)
    ]
    assert constant == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_midpoint_is_mean_of_ends() -> None:
    """Half-way through the decay cos(pi/2) = 0, so the rate is (lr + min_lr) / 2 for any lr, min_lr."""
    assert lr_at(600, lr=6e-4, min_lr=6e-5, warmup_iters=100, decay_iters=1100) == pytest.approx(3.3e-4)
    assert math.isclose(lr_at(99, lr=6e-4, min_lr=6e-5, warmup_iters=100, decay_iters=1100), 6e-4)
