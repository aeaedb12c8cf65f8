"""BERT: a bidirectional transformer encoder, its config, heads, sentence pooling and checkpoints.

Read top to bottom: `BERTConfig` -> `Block` (post-LN: x = LN(x + attn(x)); x = LN(x + mlp(x))) ->
`MLMHead` -> `BERT` (token + position + token-type embeddings -> LayerNorm -> blocks; pooler; masked-LM
head tied to the token embeddings; sequence-classification head) -> `pool` (mean / [CLS] sentence
vectors) -> checkpoint I/O. Attention is `layers.CausalSelfAttention` with `causal=False` and a padding
mask, the MLP `layers.MLP` with the exact (erf) GELU, so that `convert.py` maps Hugging Face's
`BertModel` / `BertForMaskedLM` / `BertForSequenceClassification` weight for weight.

    model(ids)                                -> (MLM logits (B, T, V), None)
    model(ids, targets)                       -> (MLM logits (N, V) of the N scored targets, their loss)
    model.hidden_states(ids, attention_mask=) -> (B, T, C), what sentence embeddings pool
    model.classify(ids, labels)               -> (class logits (B, num_labels), cross-entropy)

Deliberately not here: which tokens to mask for pretraining (`training/objectives.py`), tokenization
(`lmforge.tokenizers`), text in / vectors out (`lmforge.inference.embed`), HF names (`convert.py`).
References: Devlin et al. 2019, BERT; Reimers & Gurevych 2019, Sentence-BERT (mean pooling);
transformers/models/bert/modeling_bert.py (the layout of the weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError, check, is_int, is_number
from lmforge.fileio import atomic_write_json, save_safetensors
from lmforge.models.gpt import (
    CHECKPOINT_FORMAT_VERSION,
    IGNORE_INDEX,
    META_FILE,
    WEIGHTS_FILE,
    checkpoint_meta,
    load_weights,
)
from lmforge.models.layers import MLP, CausalSelfAttention

POOLINGS = ("mean", "cls")


@dataclass
class BERTConfig:
    """Every architectural choice of a BERT; the defaults are BERT-base (uncased, 110M)."""

    vocab_size: int = 30522  # number of token ids (BERT's uncased WordPiece vocab.txt)
    block_size: int = 512  # longest sequence: rows of the position table (HF max_position_embeddings)
    type_vocab_size: int = 2  # token types (segment A / B of a sentence pair)
    n_layer: int = 12  # encoder blocks
    n_head: int = 12  # attention heads; head_dim = n_embd // n_head
    n_embd: int = 768  # hidden width (HF hidden_size)
    n_inner: int | None = None  # MLP hidden width; None: 4 * n_embd (HF intermediate_size)
    dropout: float = 0.1  # on embeddings, attention weights and residual branches (training only)
    norm_eps: float = 1e-12  # LayerNorm epsilon (BERT: 1e-12)
    activation: str = "gelu_exact"  # MLP and MLM-head activation: "gelu_exact" (erf, BERT) | "gelu" (tanh)
    init_std: float = 0.02  # std of the normal init of matrices and embeddings
    pooler: bool = True  # tanh(dense([CLS])) layer that the classification head reads
    mlm_head: bool = True  # masked-LM head (dense, activation, LayerNorm, decoder tied to the embeddings)
    num_labels: int = 0  # classes of the sequence-classification head on the pooler; 0: no such head
    # what the classification head reads: "cls" (the pooler, tanh(dense(h[CLS])), as BERT and HF) or
    # "mean" (the mean of the last hidden states over real tokens, what a sentence-embedding model such
    # as all-MiniLM-L6-v2 was trained to make meaningful; its pooler never was)
    classifier_pooling: str = "cls"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "type_vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            check(is_int(value, 1), f"BERTConfig.{name}", value, "use a positive integer")
        check(
            self.n_embd % self.n_head == 0,
            "BERTConfig.n_embd",
            self.n_embd,
            f"use a multiple of n_head ({self.n_head})",
        )
        check(
            self.n_inner is None or is_int(self.n_inner, 1),
            "BERTConfig.n_inner",
            self.n_inner,
            "use a positive integer, or leave it unset",
        )
        for name in ("dropout", "norm_eps", "init_std"):
            check(is_number(getattr(self, name)), f"BERTConfig.{name}", getattr(self, name), "use a number")
        check(0.0 <= self.dropout < 1.0, "BERTConfig.dropout", self.dropout, "use a number in [0, 1)")
        for name in ("norm_eps", "init_std"):
            check(getattr(self, name) > 0, f"BERTConfig.{name}", getattr(self, name), "use a positive number")
        check(
            self.activation in ("gelu_exact", "gelu"),
            "BERTConfig.activation",
            self.activation,
            "choose gelu_exact or gelu",
        )
        for name in ("pooler", "mlm_head"):
            check(
                isinstance(getattr(self, name), bool), f"BERTConfig.{name}", getattr(self, name), "true/false"
            )
        check(is_int(self.num_labels, 0), "BERTConfig.num_labels", self.num_labels, "use an integer >= 0")
        check(
            self.classifier_pooling in POOLINGS,
            "BERTConfig.classifier_pooling",
            self.classifier_pooling,
            f"choose one of {', '.join(POOLINGS)}",
        )
        check(
            self.num_labels == 0 or self.pooler or self.classifier_pooling == "mean",
            "BERTConfig.num_labels",
            self.num_labels,
            "the classification head reads the pooler: set pooler = true (or classifier_pooling = mean)",
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BERTConfig:
        """Build from `to_dict()` output; unknown keys are an error naming them."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown BERTConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BERTConfig:
        """A named size (see `PRESETS`) with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown BERT preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Named sizes: Google's BERT-base, the all-MiniLM-L6-v2 shape, and a small one for CPU pretraining.
PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768),
    "minilm-l6": dict(n_layer=6, n_head=12, n_embd=384, n_inner=1536),
    "bert-cpu-small": dict(n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.1),
}


class Block(nn.Module):
    """One post-LN encoder block: x = LN(x + attn(x)); x = LN(x + mlp(x)) (BERT's order)."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(
            n_embd=config.n_embd,
            n_head=config.n_head,
            n_kv_head=config.n_head,
            bias=True,
            dropout=config.dropout,
            layer=0,  # no KV cache in an encoder
            causal=False,
        )
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(
            n_embd=config.n_embd,
            hidden=config.n_inner or 4 * config.n_embd,
            activation=config.activation,
            bias=True,
            dropout=config.dropout,
        )
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, mask=mask))
        return self.ln_2(x + self.mlp(x))


class MLMHead(nn.Module):
    """Masked-LM head: dense -> activation -> LayerNorm -> decoder (the token embeddings) + bias."""

    def __init__(self, config: BERTConfig, embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.approximate = "tanh" if config.activation == "gelu" else "none"
        self.ln = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.embeddings = [embeddings]  # a list, so the tied matrix is not registered (or saved) twice
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln(F.gelu(self.dense(x), approximate=self.approximate))  # (..., C)
        return F.linear(x, self.embeddings[0].weight, self.bias)  # (..., V)


class BERT(nn.Module):
    """Bidirectional encoder. `model(ids, targets)` -> (MLM logits, mean cross-entropy | None): `forward`."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)  # token embeddings (tied to the MLM decoder)
        self.wpe = nn.Embedding(config.block_size, C)  # learned absolute positions
        self.wtt = nn.Embedding(config.type_vocab_size, C)  # token types (segments)
        self.ln_emb = nn.LayerNorm(C, eps=config.norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.pooler = nn.Linear(C, C) if config.pooler else None
        self.mlm = MLMHead(config, self.wte) if config.mlm_head else None
        self.classifier = nn.Linear(C, config.num_labels) if config.num_labels else None
        self.classifier_drop = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's init: N(0, init_std) for matrices and embeddings, zero biases, unit LayerNorm gains."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        if self.mlm is not None:
            nn.init.zeros_(self.mlm.bias)

    # --- forward -----------------------------------------------------------------------------------

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> the last layer's hidden states (B, T, C).

        `attention_mask` (B, T) is 1 on real tokens and 0 on padding (HF's convention): no position
        attends to padding, so a padded row's real positions get what the row alone would give them.
        `token_type_ids` (B, T) default to 0 (segment A).
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        types = torch.zeros_like(idx) if token_type_ids is None else token_type_ids
        x = self.wte(idx) + self.wpe.weight[:T] + self.wtt(types)  # (B, T, C)
        x = self.drop(self.ln_emb(x))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T): keys each query may see
        for block in self.h:
            x = block(x, mask)
        return x

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked-LM logits and the mean cross-entropy over targets != IGNORE_INDEX (the chosen positions
        of `training.objectives.mask_tokens`); the trainer's `model(x, y)` contract.

        Without targets: logits at every position, (B, T, V) (fill-mask). With targets: the head runs on
        the N scored positions only and the logits are (N, V), in the row-major order of
        `targets != IGNORE_INDEX` (`logits[i]` predicts `targets[targets != IGNORE_INDEX][i]`). The loss
        is the one of the full (B, T, V) logits with the other positions ignored (what transformers'
        `BertForMaskedLM` computes), but the head's dense layer and its V-wide decoder, the largest
        matmul of a small BERT, run on 15% of the positions instead of all of them.
        """
        if self.mlm is None:
            raise ConfigError(
                "this BERT has no masked-LM head (a sentence encoder such as all-minilm-l6-v2 ships only the "
                "encoder); use it for embeddings, or pretrain a BERT with an MLM head"
            )
        x = self.hidden_states(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if targets is None:
            return self.mlm(x), None  # (B, T, V)
        scored = targets != IGNORE_INDEX  # (B, T)
        logits = self.mlm(x[scored])  # (N, C) -> (N, V)
        return logits, F.cross_entropy(logits.float(), targets[scored])

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler: tanh(dense(h[CLS])), (B, T, C) -> (B, C); what the classification head reads."""
        if self.pooler is None:
            raise ConfigError("this BERT has no pooler (pooler = false)")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(
        self,
        idx: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (B, num_labels) from the pooled [CLS] vector (or, with classifier_pooling = "mean",
        the masked mean of the hidden states); their cross-entropy with labels (B,)."""
        if self.classifier is None:
            raise ConfigError("this BERT has no classification head (num_labels = 0)")
        x = self.hidden_states(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if self.config.classifier_pooling == "mean":
            mask = torch.ones_like(idx) if attention_mask is None else attention_mask
            features = pool(x, mask, pooling="mean")  # (B, C)
        else:
            features = self.pooled(x)  # (B, C)
        logits = self.classifier(self.classifier_drop(features))  # (B, num_labels)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    def num_params(self) -> int:
        """Number of parameters (the tied MLM decoder counts once, as the token embeddings)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, *, seq_len: int | None = None, scored_fraction: float = 0.15) -> int:
        """Training FLOPs (forward + backward) per token of the head training runs, counted as
        `GPT.flops_per_token` counts them: 6 N_pos + 12 n_layer n_embd T + 6 N_seq / T, rounded.

        N_pos: the parameters used at every position: the encoder blocks, and for a model with an MLM head
        (pretraining) that head with its decoder (the V x C token embeddings; the embedding tables are
        otherwise lookups, not matmuls) weighted by `scored_fraction`, the share of positions it runs on
        (`forward` with targets runs it on the scored ones only: 15% in masked-LM pretraining). N_seq:
        parameters used once per sequence, the pooler and classifier of a model without an MLM head (a
        classifier or cross-encoder), spread over the T tokens. A model with both heads is counted as
        pretraining (MLM).
        Example (L=2, C=16, inner 64, V=100, T=32): a block has 816 + 272 + 1088 + 1040 + 2 * 32 = 3280
        parameters; MLM at every position: N_pos = 6560 + (272 + 32 + 100 + 1600) = 8564 -> 51384 +
        12 * 2 * 16 * 32 = 12288 -> 63672 (at 15%: 6 * (6560 + 300.6) + 12288 = 53451.6 -> 53452);
        cross-encoder: 6 * 6560 + 12288 + 6 * (272 + 17) / 32 = 51702.19 -> 51702.
        """
        c = self.config
        seq_len = c.block_size if seq_len is None else seq_len
        per_position = float(sum(p.numel() for p in self.h.parameters()))
        per_sequence = 0
        if self.mlm is not None:
            head = sum(p.numel() for p in self.mlm.parameters()) + self.wte.weight.numel()
            per_position += scored_fraction * head
        else:
            heads = [m for m in (self.pooler, self.classifier) if m is not None]
            per_sequence = sum(p.numel() for m in heads for p in m.parameters())
        return round(6 * per_position + 12 * c.n_layer * c.n_embd * seq_len + 6 * per_sequence / seq_len)

    # --- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write `model.safetensors` and `meta.json` (format version, "model": "bert", config, **meta)."""
        directory = Path(directory)
        save_safetensors(directory / WEIGHTS_FILE, dict(self.state_dict()), metadata={"format": "pt"})
        extra = dict(meta or {})
        clash = {"format_version", "model", "config"} & set(extra)
        if clash:
            raise ConfigError(f"checkpoint meta may not override {', '.join(sorted(clash))}")
        record = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": "bert",
            "config": self.config.to_dict(),
        }
        atomic_write_json(directory / META_FILE, record | extra)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> BERT:
        """Rebuild a model from `save_checkpoint` output (FormatError naming any missing or broken file)."""
        directory = Path(directory)
        meta = checkpoint_meta(directory, architecture="bert")
        try:
            config = BERTConfig.from_dict(meta["config"])
        except (ConfigError, TypeError) as e:
            raise FormatError(directory / META_FILE, f"invalid model config: {e}") from None
        return load_weights(cls(config), directory / WEIGHTS_FILE).to(map_location)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, *, pooling: str = "mean") -> torch.Tensor:
    """Sentence vectors from hidden states (B, T, C) and the attention mask (B, T) -> (B, C).

    "mean": the average over real tokens only (Sentence-BERT), sum_t m_t h_t / sum_t m_t. Example: a row
    [[1, 1], [3, 5], [9, 9]] with mask [1, 1, 0] -> [2, 3] (padding at t=2 is left out). "cls": h[:, 0].
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ConfigError(f"pooling {pooling!r} is unknown; choose one of {', '.join(POOLINGS)}")
    weights = attention_mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
