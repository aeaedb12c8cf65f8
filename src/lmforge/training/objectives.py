"""Training objectives: what a batch is scored by, shared by pretraining, the recipes and fine-tuning.

An objective maps (model, x, y) to the mean loss over the scored targets of y; `count_targets(y)` says
how many there are, which lets the trainer weight micro-batches and evaluation average over tokens
instead of batches (see `trainer.accumulate_gradients`). Targets equal to `IGNORE_INDEX` are not
scored, which is how a loss mask is written: padding, the operands of an arithmetic problem, the prompt
of an instruction pair.

- `causal_lm`: next-token cross-entropy; the model computes it (`GPT.forward(x, y)`), so that the
  fp32 log-softmax and `torch.compile` of the forward cover it.
- `mask_tokens` and `masked_lm`: BERT's masked-LM pretraining. Of the positions that are not special
  tokens, each is chosen with probability 0.15; a chosen token is replaced by [MASK] (80%), by a
  uniformly random id (10%) or kept (10%), and only chosen positions are scored. `masked_lm` draws the
  choice from torch's global RNG, which `seed_everything(train.seed)` seeds and every checkpoint saves,
  so a run and its resumption mask the same positions. Under gradient accumulation the trainer weights
  micro-batches by their `count_targets(y)` (the window's tokens), i.e. in proportion to their expected,
  not their drawn, number of chosen positions; with equal windows (RandomWindows) these differ by the
  sampling noise of 15% of a batch only.
- `count_targets`: the scored positions of a target tensor.
- `sequence_logprobs`, `dpo_loss`, `distillation_loss`: the post-training losses. They take tensors
  (logits or log-probabilities) and return tensors; none runs a model. Their numerics are fp32 whatever
  the input dtype (a bf16 log-softmax over a large vocabulary loses digits).

Deliberately not here: building preference batches (`lmforge.data`) or the loops that call these.
References: Devlin et al. 2019, BERT (section 3.1, the 80/10/10 rule, and appendix A.1);
Rafailov et al. 2023, Direct Preference Optimization (eq. 7); trl's `DPOTrainer` (loss type
"sigmoid": mean loss, per-example rewards beta * (policy - reference) log-ratios, detached); Hinton et
al. 2015, Distilling the Knowledge in a Neural Network (the T^2 factor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.gpt import IGNORE_INDEX

# (model, x, y) -> mean loss over the scored targets of y (a scalar tensor to backpropagate)
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def count_targets(targets: torch.Tensor) -> int:
    """Positions that the loss scores. Example: [[5, -100, 7], [-100, -100, 2]] -> 3."""
    return int((targets != IGNORE_INDEX).sum())


def causal_lm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, as `model(x, y) -> (logits, mean loss)` computes it."""
    return model(x, y)[1]


MLM_PROBABILITY = 0.15  # share of (non-special) positions chosen for prediction (BERT)


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    probability: float = MLM_PROBABILITY,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of token ids (B, T) -> (inputs, targets), both (B, T).

    Every position whose id is not in `special_ids` is chosen with `probability`; a chosen position's
    input becomes `mask_id` with probability 0.8, a uniform random id in [0, vocab_size) with 0.1, and
    stays itself with 0.1 (so the model cannot learn that only [MASK] positions matter). `targets` holds
    the original id at chosen positions and IGNORE_INDEX elsewhere. If nothing is chosen, the first
    non-special position is (a batch without targets has no loss). `generator` None draws from torch's
    global RNG. Expected shares of all non-special tokens: 12% [MASK], 1.5% random, 1.5% kept and
    scored, 85% untouched and unscored.
    """
    maskable = ~torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype, device=ids.device))
    chosen = (torch.rand(ids.shape, generator=generator, device=ids.device) < probability) & maskable
    if not chosen.any() and maskable.any():
        chosen.view(-1)[maskable.view(-1).nonzero()[0]] = True
    action = torch.rand(ids.shape, generator=generator, device=ids.device)  # which of the 80/10/10
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = torch.where(chosen, ids, IGNORE_INDEX)
    return inputs, targets


def masked_lm(*, mask_id: int, vocab_size: int, special_ids: Sequence[int] = ()) -> Objective:
    """The masked-LM objective for a BERT: `(model, x, y)` masks the token windows x (y, the next-token
    targets of the batch source, is not used) with `mask_tokens` on torch's global RNG and returns the
    mean cross-entropy over the chosen positions."""

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inputs, targets = mask_tokens(x, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids)
        return model(inputs, targets)[1]

    return objective


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over the masked positions of each sequence: (B, T, V), (B, T), (B, T) -> (B,).

    `targets[b, t]` is the token that `logits[b, t]` predicts (already shifted), `loss_mask` is 1 on
    response tokens and 0 on prompt and padding; masked-out targets may hold any value (e.g. -100).
    Example: V=2, logits [[0, 0], [ln 3, 0]], targets [1, 0], mask [1, 1] -> ln 1/2 + ln 3/4 = -0.98083.
    """
    mask = loss_mask.to(torch.bool)
    safe_targets = targets.masked_fill(~mask, 0)  # any valid index; its log-prob is zeroed below
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logprobs.gather(-1, safe_targets[..., None]).squeeze(-1)  # (B, T)
    return (picked * mask).sum(dim=-1)  # (B,)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss over a batch of preference pairs, each argument (B,) sequence log-probabilities.

    loss = mean_b -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]); returns (loss, chosen_rewards,
    rejected_rewards) with rewards beta * (pi - ref) per example, detached (they are for logging).
    Example: all log-probs 0 -> loss ln 2 = 0.693147; pi_c - ref_c = 2, pi_r - ref_r = -3, beta = 0.1 ->
    -log sigmoid(0.5) = 0.474077, rewards 0.2 and -0.3.
    """
    chosen_logratios = policy_chosen_logps.float() - ref_chosen_logps.float()  # (B,)
    rejected_logratios = policy_rejected_logps.float() - ref_rejected_logps.float()  # (B,)
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over token positions.

    Logits are (..., V) (e.g. (B, T, V)); `mask` (...) selects the positions that count (1/True = count,
    e.g. 0 on prompt or padding); None counts all. Reduction: the sum of per-position KLs divided by the
    number of counted positions, i.e. `F.kl_div(..., reduction="batchmean")` on the counted rows. The
    T^2 factor keeps the gradient's scale independent of T (Hinton et al.). The teacher gets no gradient.
    Example: V=2, student [0, 0], teacher [2 ln 3, 0], T=2 -> p_t = (3/4, 1/4), p_s = (1/2, 1/2),
    KL = 3/4 ln 3/2 + 1/4 ln 1/2 = 0.130812, loss = 4 * 0.130812 = 0.523248.
    """
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be positive, got {temperature}")
    student_logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    teacher_logp = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (..., V)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)  # (...) per position
    if mask is None:
        return kl.mean() * temperature**2
    counted = mask.to(torch.bool)
    return (kl * counted).sum() / counted.sum().clamp(min=1) * temperature**2
