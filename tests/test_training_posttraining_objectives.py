"""Post-training objectives against values worked by hand and against torch's own formulation:
`sequence_logprobs`, `dpo_loss` and `distillation_loss` (trl parity is in tests/parity/test_dpo_trl.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.training.objectives import distillation_loss, dpo_loss, sequence_logprobs


def test_sequence_logprobs_by_hand():
    """V=2. Row 0: logits [0, 0] -> log p(1) = ln 1/2; logits [ln 3, 0] -> log p(0) = ln 3/4; position 2
    is masked (its target -100 is never read): -0.693147 - 0.287682 = -0.980829. Row 1 counts only
    position 2, logits [0, ln 3] with target 1: ln 3/4 = -0.287682."""
    ln3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0], [ln3, 0.0], [5.0, 1.0]], [[1.0, 2.0], [0.0, 0.0], [0.0, ln3]]])
    targets = torch.tensor([[1, 0, -100], [0, -100, 1]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    expected = torch.tensor([math.log(0.5) + math.log(0.75), math.log(0.75)])
    torch.testing.assert_close(sequence_logprobs(logits, targets, mask), expected)


def test_dpo_loss_by_hand():
    """Zero log-ratios: -log sigmoid(0) = ln 2 = 0.693147, rewards 0. Pair 2: policy - reference is +2 for
    chosen, -3 for rejected, beta 0.1: -log sigmoid(0.1 * 5) = log(1 + e^-0.5) = 0.474077; mean of the
    two = 0.583612; rewards 0.1 * 2 = 0.2 and 0.1 * -3 = -0.3."""
    policy_chosen = torch.tensor([-5.0, -8.0], requires_grad=True)
    policy_rejected = torch.tensor([-6.0, -12.0])
    ref_chosen, ref_rejected = torch.tensor([-5.0, -10.0]), torch.tensor([-6.0, -9.0])
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected
    )
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-0.5))) / 2, rel=1e-6)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.0, 0.2]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([0.0, -0.3]))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    loss.backward()
    # d/dx of mean -log sigmoid(beta x) = -beta * sigmoid(-beta x) / B: pair 1 -0.1 * 0.5 / 2 = -0.025
    torch.testing.assert_close(
        policy_chosen.grad, torch.tensor([-0.025, -0.1 * (1 / (1 + math.exp(0.5))) / 2])
    )


def test_distillation_loss_by_hand():
    """V=2, student [0, 0] (p_s = 1/2, 1/2), teacher [2 ln 3, 0], T=2: z_t/T = [ln 3, 0] -> p_t = (3/4, 1/4).
    KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812; times T^2 = 0.523248."""
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(0.523248, abs=1e-6)
    assert distillation_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(student, teacher, 0.0)


def test_distillation_loss_matches_torch_kl_div_with_a_mask():
    """Reduction: the mean over counted positions, i.e. F.kl_div(log q_s, log p_t, log_target=True,
    reduction="batchmean") on the counted rows, times T^2."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 17, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 5, 17, generator=generator) * 2
    mask = torch.rand(3, 5, generator=generator) > 0.4
    T = 1.7
    ours = distillation_loss(student, teacher, T, mask=mask)
    rows = mask.reshape(-1)
    reference = (
        F.kl_div(
            F.log_softmax(student.reshape(-1, 17)[rows] / T, dim=-1),
            F.log_softmax(teacher.reshape(-1, 17)[rows] / T, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * T**2
    )
    torch.testing.assert_close(ours, reference)
    unmasked = (
        F.kl_div(
            F.log_softmax(student.reshape(-1, 17) / T, dim=-1),
            F.log_softmax(teacher.reshape(-1, 17) / T, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * T**2
    )
    torch.testing.assert_close(distillation_loss(student, teacher, T), unmasked)
    ours.backward()
    assert student.grad[~mask].abs().sum() == 0 and student.grad[mask].abs().sum() > 0
