"""GPTClassifier: a GPT backbone with a classification head on a pooled hidden state, and the choice of
which parts to train.

`GPTClassifier(config, num_classes, pooling="last")` holds a whole `GPT` as `backbone` (so its weights keep
the names of an LM checkpoint and the backbone can be saved as one) and `head: nn.Linear(n_embd,
num_classes)`. The forward reads the backbone's final hidden states (B, T, C), never its LM head, and
pools one vector per sequence:

    "last"  the hidden state of the last non-padding token: in a causal model it is the only position
            that has seen the whole text (Raschka, "Build a Large Language Model from Scratch", ch. 6)
    "mean"  the mean over the non-padding tokens

Sequences are RIGHT-padded; `attention_mask` (B, T) is 1 on real tokens and 0 on padding. Right padding
needs no attention mask inside the model: causal attention never lets a real token see a later pad.

`set_trainable(model, trainable)` picks what a fine-tune updates: "head" (linear probe), "last-k" (head,
the last k blocks and the final norm, as Raschka trains the last block), "all", or "lora" (LoRA on the
attention and MLP projections, head trained in full, as peft's `modules_to_save` does for a classifier).

Deliberately not here: the training loop, datasets and metrics (`lmforge.training`, `lmforge.data`,
`lmforge.evaluation`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.lora import apply_lora

POOLINGS = ("last", "mean")
TRAINABLE = ("head", "last-k", "all", "lora")


class GPTClassifier(nn.Module):
    """A GPT backbone + `head`. `model(idx, targets, attention_mask=...)` -> (logits (B, K), loss | None)."""

    def __init__(self, config: GPTConfig, num_classes: int, pooling: str = "last"):
        super().__init__()
        self._check(num_classes, pooling)
        self.pooling = pooling
        self.backbone = GPT(config)
        self.head = _new_head(config, num_classes, like=self.backbone.transformer.wte.weight)

    @staticmethod
    def _check(num_classes: int, pooling: str) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")

    @classmethod
    def from_lm(cls, gpt: GPT, num_classes: int, pooling: str = "last") -> GPTClassifier:
        """A classifier whose backbone IS `gpt` (no copy: training the classifier changes `gpt`) with a
        fresh head on the GPT's device and dtype."""
        with torch.device("meta"):  # build the shell without allocating a second backbone
            model = cls(gpt.config, num_classes, pooling)
        model.backbone = gpt
        model.head = _new_head(gpt.config, num_classes, like=gpt.transformer.wte.weight)
        return model

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T), right-padded, with attention_mask (B, T) (1 = token, 0 = pad; None = no padding)
        -> class logits (B, num_classes) and the mean cross-entropy against targets (B,) (None without)."""
        h = self.backbone.hidden_states(idx)  # (B, T, C)
        pooled = self.pool(h, attention_mask)  # (B, C)
        logits = self.head(pooled)  # (B, K)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss

    def flops_per_token(self, *, seq_len: int | None = None) -> int:
        """Training FLOPs per token as `GPT.flops_per_token` counts them, for what this model runs: the
        backbone without its LM head (never used here) and the head once per sequence, spread over its
        T tokens: backbone - lm_head + head / T, rounded, each at 6 per value (4 when frozen).
        Example (1 layer, n_embd 16, vocab 100, tied, 2 classes, T=16): 6 * (3280 + 32) + 12 * 16 * 16 +
        6 * 34 / 16 = 19872 + 3072 + 12.75 -> 22957."""
        seq_len = self.backbone.config.block_size if seq_len is None else seq_len
        lm_head = self.backbone.lm_head.weight
        backbone = (
            self.backbone.flops_per_token(seq_len=seq_len)
            - (6 if lm_head.requires_grad else 4) * lm_head.numel()
        )
        head = sum((6 if p.requires_grad else 4) * p.numel() for p in self.head.parameters())
        return round(backbone + head / seq_len)

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, C) hidden states -> (B, C) by `self.pooling`, ignoring padding.

        Example: mask rows [1, 1, 0] and [1, 1, 1]: "last" takes positions 1 and 2; "mean" averages
        positions 0..1 and 0..2.
        """
        if attention_mask is None:
            return h[:, -1] if self.pooling == "last" else h.mean(dim=1)
        mask = attention_mask.to(torch.bool)  # (B, T)
        if mask.shape != h.shape[:2]:
            raise ConfigError(f"attention_mask has shape {tuple(mask.shape)}, the input {tuple(h.shape[:2])}")
        lengths = mask.sum(dim=1)  # (B,)
        # right padding: each row is some ones then only zeros, i.e. mask[t] == (t < length)
        positions = torch.arange(mask.size(1), device=mask.device)
        if bool((lengths == 0).any()) or not torch.equal(mask, positions[None, :] < lengths[:, None]):
            raise ConfigError("attention_mask must mark right padding (1s then 0s) with >= 1 token per row")
        if self.pooling == "last":
            return h[torch.arange(h.size(0), device=h.device), lengths - 1]  # (B, C)
        weights = mask.to(h.dtype)[:, :, None]  # (B, T, 1)
        return (h * weights).sum(dim=1) / lengths[:, None].to(h.dtype)


def _new_head(config: GPTConfig, num_classes: int, *, like: torch.Tensor) -> nn.Linear:
    """Linear(n_embd, num_classes) initialised as the GPT's Linears: N(0, init_std), zero bias."""
    head = nn.Linear(config.n_embd, num_classes, device=like.device, dtype=like.dtype)
    nn.init.normal_(head.weight, std=config.init_std)
    nn.init.zeros_(head.bias)
    return head


def set_trainable(
    model: GPTClassifier,
    trainable: str,
    *,
    k: int = 1,
    rank: int = 8,
    alpha: float = 8,
    dropout: float = 0.0,
) -> GPTClassifier:
    """Choose what fine-tuning updates, in place; returns `model`. See the module docstring for the
    modes; `k` is the number of last blocks for "last-k", rank/alpha/dropout configure "lora"."""
    if trainable not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {', '.join(TRAINABLE)}; got {trainable!r}")
    if trainable == "lora":
        apply_lora(model, rank=rank, alpha=alpha, targets=["attn", "mlp"], dropout=dropout)
        model.head.requires_grad_(True)
        return model
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    transformer = model.backbone.transformer
    if trainable == "all":
        transformer.requires_grad_(True)  # not an untied LM head: the classifier never uses it
    elif trainable == "last-k":
        n_layer = len(transformer.h)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_layer:
            raise ConfigError(f"k must be an integer in [1, n_layer={n_layer}], got {k!r}")
        for block in transformer.h[n_layer - k :]:
            block.requires_grad_(True)
        transformer.ln_f.requires_grad_(True)
    return model
