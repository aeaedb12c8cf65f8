"""Parity of lmforge's DPO loss and sequence log-probabilities with trl 1.16.

trl 1.16 has no free-standing DPO loss function: the loss is computed inside
`DPOTrainer._compute_loss(model, inputs, return_outputs)`, from per-token log-probs that the model's fused
LM head returns. So the test calls that method unbound with the minimum it reads: a stand-in `self`
carrying a real `DPOConfig`'s settings (beta, loss_type ["sigmoid"], f_divergence "reverse_kl", ...), an
accelerator whose gathers are the identity, and a stand-in model returning the per-token log-probs whose
sums are the policy's sequence log-probs (with `precompute_ref_log_probs`, the reference log-probs come
in the batch). The loss is returned; the rewards are checked through what trl logs (the batch means of
rewards/chosen, rewards/rejected and rewards/margins, and each pair's own rewards from a batch of one).
Sequence log-probs are checked against trl's `selective_log_softmax` with its shifted completion-mask
convention.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from trl.trainer.dpo_trainer import DPOConfig, DPOTrainer  # noqa: E402
from trl.trainer.utils import selective_log_softmax  # noqa: E402

from lmforge.training.objectives import dpo_loss, sequence_logprobs  # noqa: E402


def _trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, tmp_path):
    """trl's loss on these sequence log-probs, and the metrics it logged."""
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, report_to=[], use_cpu=True, bf16=False)
    B = policy_chosen.size(0)
    # each sequence: 2 tokens, the second a completion token, so the per-token log-probs are (2B, 1)
    per_token = torch.cat([policy_chosen, policy_rejected])[:, None]
    model = SimpleNamespace(training=True)
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    identity = lambda x: x
    trainer = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        ld_alpha=args.ld_alpha,
        precompute_ref_logps=True,
        f_divergence_type=args.f_divergence_type,
        f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type),
        beta=args.beta,
        label_smoothing=args.label_smoothing,
        use_weighting=args.use_weighting,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * (2 * B)),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    assert args.loss_type == ["sigmoid"] and args.f_divergence_type == "reverse_kl"  # the standard DPO
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_and_rewards_match_trl(tmp_path, beta):
    generator = torch.Generator().manual_seed(0)
    logps = [-torch.rand(6, generator=generator, dtype=torch.float64) * 40 for _ in range(4)]
    loss, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta=beta)
    trl_loss, metrics = _trl_dpo(*logps, beta=beta, tmp_path=tmp_path)
    torch.testing.assert_close(loss, trl_loss.float(), rtol=1e-6, atol=1e-6)
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][0], rel=1e-6)
    assert rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][0], rel=1e-6)
    margins = (chosen_rewards - rejected_rewards).mean().item()
    assert margins == pytest.approx(metrics["rewards/margins"][0], rel=1e-6)
    accuracy = (chosen_rewards > rejected_rewards).float().mean().item()
    assert accuracy == pytest.approx(metrics["rewards/accuracies"][0])
    for i in range(2):  # per example: trl on a batch of one pair logs that pair's rewards themselves
        _, single = _trl_dpo(*(x[i : i + 1] for x in logps), beta=beta, tmp_path=tmp_path)
        assert chosen_rewards[i].item() == pytest.approx(single["rewards/chosen"][0], rel=1e-6)
        assert rejected_rewards[i].item() == pytest.approx(single["rewards/rejected"][0], rel=1e-6)


def test_sequence_logprobs_match_trl_selective_log_softmax():
    """trl: labels = input_ids with -100 outside the completion; per-token log-probs of input_ids[:, 1:]
    from logits[:, :-1], summed where the shifted completion mask is 1."""
    generator = torch.Generator().manual_seed(1)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=generator)
    input_ids = torch.randint(0, V, (B, T), generator=generator)
    completion_mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    shift_mask = completion_mask[:, 1:]
    theirs = (selective_log_softmax(logits[:, :-1], input_ids[:, 1:]) * shift_mask).sum(dim=1)
    targets = input_ids[:, 1:].masked_fill(shift_mask == 0, -100)  # masked targets may be anything
    ours = sequence_logprobs(logits[:, :-1], targets, shift_mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
