"""lmforge.scratch.regularization: penalties vs autograd, proximal steps by hand, dropout expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.scratch.optim import SGD
from lmforge.scratch.regularization import dropout, elastic_net_step, l1_penalty, l2_penalty, soft_threshold


def test_penalty_gradients_match_torch_autograd():
    w = np.random.default_rng(0).normal(size=(4, 3))
    wt = torch.tensor(w, requires_grad=True)
    (0.5 * 0.3 * (wt**2).sum() + 0.2 * wt.abs().sum()).backward()
    l2_value, l2_grad = l2_penalty(w, strength=0.3)
    l1_value, l1_grad = l1_penalty(w, strength=0.2)
    assert l2_value + l1_value == pytest.approx(0.15 * np.sum(w**2) + 0.2 * np.sum(np.abs(w)), rel=1e-12)
    np.testing.assert_allclose(l2_grad + l1_grad, wt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_l2_gradient_is_sgd_weight_decay():
    """SGD on loss + (wd/2)‖w‖² takes the same steps as SGD(weight_decay=wd) on the loss alone."""
    rng = np.random.default_rng(1)
    a = [rng.normal(size=5)]
    b = [a[0].copy()]
    with_penalty, with_decay = SGD(a, lr=0.1), SGD(b, lr=0.1, weight_decay=0.05)
    for _ in range(20):
        with_penalty.step([np.sin(a[0]) + l2_penalty(a[0], strength=0.05)[1]])
        with_decay.step([np.sin(b[0])])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)


def test_soft_threshold_by_hand_and_against_softshrink():
    """soft_threshold([3, -0.5, 1, -2], 1) = [3-1, 0, 1-1, -2+1] = [2, 0, 0, -1]."""
    np.testing.assert_array_equal(
        soft_threshold(np.array([3.0, -0.5, 1.0, -2.0]), 1.0), [2.0, 0.0, 0.0, -1.0]
    )
    v = np.random.default_rng(2).normal(size=50)
    np.testing.assert_allclose(soft_threshold(v, 0.4), F.softshrink(torch.tensor(v), 0.4).numpy(), atol=0)
    with pytest.raises(ConfigError):
        soft_threshold(v, -1.0)


def test_soft_threshold_is_the_l1_proximal_operator():
    """It minimises ½(w − v)² + t·|w|: no point on a fine grid does better."""
    v, t = 0.7, 0.25
    grid = np.linspace(-2, 2, 40001)
    objective = lambda w: 0.5 * (w - v) ** 2 + t * np.abs(w)
    assert objective(soft_threshold(np.array(v), t)) <= objective(grid).min() + 1e-12


def test_elastic_net_step_by_hand():
    """w = [1, -0.2, 0.05], grad = [0.5, 0.1, 0], lr = 0.1, l1 = 1, l2 = 0.5:
    smooth step w − lr·(grad + l2·w) = [1 − 0.1·1.0, −0.2 − 0.1·0.0, 0.05 − 0.1·0.025] = [0.9, −0.2, 0.0475]
    soft threshold at lr·l1 = 0.1: [0.8, −0.1, 0] — the small weight becomes exactly zero."""
    w = elastic_net_step(np.array([1.0, -0.2, 0.05]), np.array([0.5, 0.1, 0.0]), lr=0.1, l1=1.0, l2=0.5)
    np.testing.assert_allclose(w, [0.8, -0.1, 0.0], atol=1e-12)
    assert w[2] == 0.0


def test_lasso_by_proximal_gradient_reaches_the_closed_form():
    """loss = ½‖w − v‖²: the lasso solution is soft_threshold(v, l1) and ISTA (lr 0.5) converges to it,
    with exact zeros where |v| <= l1; adding l2 divides the survivors by (1 + l2)."""
    v = np.array([2.0, -0.3, 0.9, -1.5, 0.1])
    for l2 in (0.0, 0.5):
        w = np.zeros_like(v)
        for _ in range(200):
            w = elastic_net_step(w, w - v, lr=0.5, l1=0.5, l2=l2)
        np.testing.assert_allclose(w, soft_threshold(v, 0.5) / (1 + l2), atol=1e-12)
        assert np.count_nonzero(w) == 3


def test_inverted_dropout_keeps_the_expectation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=8)
    p = 0.3
    samples = np.stack([dropout(x, p=p, rng=rng)[0] for _ in range(40_000)])  # (N, 8)
    # Each sample entry is x/(1-p) or 0: standard error of the mean |x|·√(p/(1-p))/√N ≈ 0.0033·|x|.
    np.testing.assert_allclose(samples.mean(axis=0), x, atol=0.02 * np.abs(x).max())
    assert abs(np.mean(samples == 0) - p) < 0.01
    kept = samples[0] != 0
    np.testing.assert_allclose(samples[0][kept], x[kept] / (1 - p), rtol=1e-12)
    # Test time: the identity, which is what the training-time average converged to.
    out, mask = dropout(x, p=p, rng=rng, training=False)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(mask, 1.0)


def test_dropout_backward_is_the_mask_and_layer_expectation_matches_test_time():
    """y = W·dropout(x): averaged over masks it equals the test-time W·x (linearity of expectation),
    and dy/dx for a given mask is W·diag(mask), the same mask as the forward pass."""
    rng = np.random.default_rng(4)
    W, x = rng.normal(size=(3, 6)), rng.normal(size=6)
    outs = []
    for _ in range(20_000):
        dropped, mask = dropout(x, p=0.5, rng=rng)
        outs.append(W @ dropped)
    np.testing.assert_allclose(np.mean(outs, axis=0), W @ x, atol=0.1)
    xt = torch.tensor(x, requires_grad=True)
    (torch.tensor(W) @ (xt * torch.tensor(mask))).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), (W * mask).sum(axis=0), rtol=1e-12)
    with pytest.raises(ConfigError):
        dropout(x, p=1.0, rng=rng)
