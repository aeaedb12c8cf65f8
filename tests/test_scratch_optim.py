"""lmforge.scratch.optim against torch.optim, step for step for 100 steps, and the schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.scratch.optim import SGD, Adam, AdamW, RMSProp, run_on_quadratic, warmup_cosine_lr


def _gradient(params: list[np.ndarray], step: int) -> list[np.ndarray]:
    """A gradient that depends on the current parameters and on the step, so that any difference in
    the update compounds: g = cos(p)·c + 0.3·p + noise(step)."""
    rng = np.random.default_rng(1000 + step)
    return [np.cos(p) * 2.0 + 0.3 * p + rng.normal(size=p.shape) for p in params]


CASES = [
    (SGD, {"lr": 0.05}, torch.optim.SGD, {"lr": 0.05}),
    (SGD, {"lr": 0.02, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    (
        SGD,
        {"lr": 0.02, "momentum": 0.5, "dampening": 0.1, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.5, "dampening": 0.1, "weight_decay": 0.01},
    ),
    (
        SGD,
        {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    (RMSProp, {}, torch.optim.RMSprop, {}),  # both with their defaults: lr 0.01, alpha 0.99, eps 1e-8
    (
        RMSProp,
        {"lr": 0.003, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1},
        torch.optim.RMSprop,
        {"lr": 0.003, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1},
    ),
    (Adam, {"lr": 0.01}, torch.optim.Adam, {"lr": 0.01}),
    (
        Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1},
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1},
    ),
    (AdamW, {}, torch.optim.AdamW, {}),  # both default to weight_decay 0.01
    (AdamW, {"lr": 0.01, "weight_decay": 0.5}, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.5}),
]


@pytest.mark.parametrize(
    "ours, our_kwargs, theirs, their_kwargs", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]
)
def test_optimizer_matches_torch_for_100_steps(ours, our_kwargs, theirs, their_kwargs):
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    optimizer = ours(params, **our_kwargs)
    torch_optimizer = theirs(torch_params, foreach=False, **their_kwargs)
    for step in range(100):
        optimizer.step(_gradient(params, step))
        for p, g in zip(
            torch_params, _gradient([p.detach().numpy() for p in torch_params], step), strict=True
        ):
            p.grad = torch.tensor(g)
        torch_optimizer.step()
        for p, tp in zip(params, torch_params, strict=True):
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"step {step}")


def test_adamw_decay_is_decoupled_from_adam_l2():
    """With the same weight_decay, AdamW and Adam(+L2) take different paths: AdamW shrinks p by
    (1 - lr·wd) directly, Adam's L2 term is divided by √v. On the first step with g = 0 and p = 1:
    Adam: g' = wd·p = 0.1, m̂ = 0.1, v̂ = 0.01 -> p = 1 - lr·0.1/(0.1 + eps) ≈ 1 - lr;
    AdamW: p = 1·(1 - lr·0.1), then m̂ = 0 -> p = 1 - 0.1·lr."""
    lr = 0.01
    adam_p, adamw_p = [np.ones(1)], [np.ones(1)]
    Adam(adam_p, lr=lr, weight_decay=0.1).step([np.zeros(1)])
    AdamW(adamw_p, lr=lr, weight_decay=0.1).step([np.zeros(1)])
    assert adam_p[0][0] == pytest.approx(1 - lr, abs=1e-8)
    assert adamw_p[0][0] == pytest.approx(1 - 0.1 * lr, abs=1e-12)


def test_adam_first_step_is_lr_times_sign_by_hand():
    """Bias correction: after one step m̂ = g and v̂ = g², so the step is lr·g/(|g| + eps) ≈ lr·sign(g)."""
    p = [np.array([1.0, 1.0])]
    Adam(p, lr=0.1).step([np.array([3.0, -0.002])])
    np.testing.assert_allclose(p[0], [0.9, 1.1], atol=1e-5)


def test_schedule_by_hand():
    """max_lr 1, warmup 2, total 6: steps 0, 1 give 0, 1/2; then ½(1 + cos(π·k/4)) for k = 0..4
    -> 1, 0.853553, ½, 0.146447, 0; past the end it stays at min_lr = 0."""
    lrs = [warmup_cosine_lr(s, max_lr=1.0, warmup_steps=2, total_steps=6) for s in range(8)]
    np.testing.assert_allclose(lrs, [0, 0.5, 1, 0.853553, 0.5, 0.146447, 0, 0], atol=1e-6)


@pytest.mark.parametrize("min_lr", [0.0, 3e-5])
def test_schedule_matches_transformers_lambda_lr(min_lr):
    transformers = pytest.importorskip("transformers")  # a test extra: skip, not fail, without it
    max_lr, warmup, total = 3e-4, 10, 100
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    if min_lr == 0.0:
        scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    else:
        scheduler = transformers.get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup, total, min_lr=min_lr
        )
    for step in range(total + 1):
        ours = warmup_cosine_lr(step, max_lr=max_lr, warmup_steps=warmup, total_steps=total, min_lr=min_lr)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
        optimizer.step()
        scheduler.step()


def test_scheduled_adamw_matches_torch_with_lambda_lr():
    """The schedule driving our AdamW equals torch's AdamW under a LambdaLR with the closed form."""
    max_lr, warmup, total = 0.05, 10, 100

    def closed_form(step: int) -> float:  # the formula written out independently, as a multiplier
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    rng = np.random.default_rng(2)
    params = [rng.normal(size=6)]
    torch_params = [torch.tensor(params[0].copy(), requires_grad=True)]
    optimizer = AdamW(params, lr=max_lr, weight_decay=0.1)
    torch_optimizer = torch.optim.AdamW(torch_params, lr=max_lr, weight_decay=0.1, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, closed_form)
    for step in range(total):
        optimizer.lr = warmup_cosine_lr(step, max_lr=max_lr, warmup_steps=warmup, total_steps=total)
        optimizer.step(_gradient(params, step))
        torch_params[0].grad = torch.tensor(_gradient([torch_params[0].detach().numpy()], step)[0])
        torch_optimizer.step()
        scheduler.step()
        np.testing.assert_allclose(params[0], torch_params[0].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_schedule_rejects_bad_steps():
    with pytest.raises(ConfigError):
        warmup_cosine_lr(0, max_lr=1.0, warmup_steps=10, total_steps=10)


def test_quadratic_comparison_converges_for_every_optimizer():
    """All five reach a loss below 0.1 from f(-1.5, 0.5) = 2·2.25 + 100·0.25 = 29.5 in 100 steps."""
    for make in (
        lambda p: SGD(p, lr=0.009),
        lambda p: SGD(p, lr=0.005, momentum=0.9),
        lambda p: RMSProp(p, lr=0.01),
        lambda p: Adam(p, lr=0.1),
        lambda p: AdamW(p, lr=0.1),
    ):
        trajectory, losses = run_on_quadratic(make, start=(-1.5, 0.5), steps=100)
        assert losses[0] == 29.5 and losses[-1] < 0.1 and trajectory.shape == (101, 2)
