"""GPTConfig: every architectural choice of a GPT, validated; the named sizes; the block families.

A config is plain data (JSON/TOML-able through `to_dict`/`from_dict`) and knows nothing of tensors, so the
modules that read or write foreign formats (`gguf.py`, `convert.py`) can map a file's hyperparameters onto
it without importing the model. `gpt.py` builds the network from it.

The block families name the option sets that make a GPT a Llama-style or a GPT-2-style network: the
converters use them to decide what a checkpoint can be exported as.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmforge.errors import ConfigError, check, is_int, is_number


@dataclass
class GPTConfig:
    """Every architectural choice of a GPT; the defaults reproduce GPT-2 (124M)."""

    vocab_size: int = 50257  # number of token ids (GPT-2 BPE: 50,000 merges + 256 bytes + <|endoftext|>)
    block_size: int = 1024  # context length: the longest sequence the model can see
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # query heads per attention layer; head_dim = n_embd // n_head
    n_embd: int = 768  # width of the residual stream
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None means n_head (MHA)
    n_inner: int | None = None  # MLP hidden width; None: 4 * n_embd (swiglu: 8/3 * n_embd rounded up to 64)
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (training only)
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: yes; many newer models: no)
    pos_encoding: str = "learned"  # "learned" (GPT-2) | "sinusoidal" (added) | "rope" (rotary) | "alibi"
    rope_theta: float = 10000.0  # base of the rotary frequencies (only for pos_encoding="rope")
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5  # epsilon inside the norms (GPT-2: 1e-5)
    norm_placement: str = "pre"  # "pre": x + f(norm(x)) and a final norm (GPT-2); "post": norm(x + f(x))
    mlp: str = "gelu"  # "gelu" (tanh approximation, as GPT-2) | "swiglu" | "relu2" (squared ReLU)
    tie_embeddings: bool = True  # LM head shares the token-embedding matrix (GPT-2: yes)
    init_std: float = 0.02  # std of the normal init; residual output projections get init_std/sqrt(2*n_layer)
    attn_only: bool = False  # blocks without MLPs (the attention-only models of interpretability studies)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check(
                is_int(getattr(self, name), 1),
                f"GPTConfig.{name}",
                getattr(self, name),
                "use a positive integer",
            )
        check(
            self.n_embd % self.n_head == 0,
            "GPTConfig.n_embd",
            self.n_embd,
            f"use a multiple of n_head ({self.n_head})",
        )
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check(
            is_int(self.n_kv_head, 1) and self.n_head % self.n_kv_head == 0,
            "GPTConfig.n_kv_head",
            self.n_kv_head,
            f"use a positive divisor of n_head ({self.n_head})",
        )
        check(
            self.n_inner is None or is_int(self.n_inner, 1),
            "GPTConfig.n_inner",
            self.n_inner,
            "use a positive integer, or leave it unset",
        )
        for name in ("dropout", "rope_theta", "norm_eps", "init_std"):  # numbers, from TOML or a foreign JSON
            check(is_number(getattr(self, name)), f"GPTConfig.{name}", getattr(self, name), "use a number")
        for name in ("rope_theta", "norm_eps", "init_std"):
            check(getattr(self, name) > 0, f"GPTConfig.{name}", getattr(self, name), "use a positive number")
        for name in ("bias", "tie_embeddings", "attn_only"):
            check(
                isinstance(getattr(self, name), bool),
                f"GPTConfig.{name}",
                getattr(self, name),
                "use true or false",
            )
        check(
            not self.attn_only or self.norm_placement == "pre",
            "GPTConfig.attn_only",
            self.attn_only,
            'attention-only blocks need norm_placement = "pre"',
        )
        check(0.0 <= self.dropout < 1.0, "GPTConfig.dropout", self.dropout, "use a number in [0, 1)")
        choices = {
            "pos_encoding": ("learned", "sinusoidal", "rope", "alibi"),
            "norm": ("layernorm", "rmsnorm"),
            "norm_placement": ("pre", "post"),
            "mlp": ("gelu", "swiglu", "relu2"),
        }
        for name, allowed in choices.items():
            check(
                getattr(self, name) in allowed,
                f"GPTConfig.{name}",
                getattr(self, name),
                f"choose one of {', '.join(allowed)}",
            )
        check(
            self.pos_encoding != "rope" or self.head_dim % 2 == 0,
            "GPTConfig.n_embd",
            self.n_embd,
            f"rotary embeddings need an even head_dim (n_embd / n_head = {self.head_dim})",
        )
        check(
            self.pos_encoding != "sinusoidal" or self.n_embd % 2 == 0,
            "GPTConfig.n_embd",
            self.n_embd,
            "sinusoidal positions need an even n_embd",
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """The MLP hidden width actually used (see `n_inner`)."""
        if self.n_inner is not None:
            return self.n_inner
        if self.mlp == "swiglu":  # 2/3 of 4x keeps the parameter count of a 4x two-matrix MLP
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from `to_dict()` output; unknown keys are an error naming them."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown GPTConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named size (see `PRESETS`) with any field overridden, e.g. preset("tiny", vocab_size=65)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Named sizes. The GPT-2 ones are OpenAI's; the small ones are meant for CPUs (the trainer sets vocab_size
# from the tokenizer). "cpu-small" is the Shakespeare-char benchmark shape, "cpu-medium" the throughput one.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=256),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=256),
    "cpu-medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=4096),
}


# lmforge options that make a block Llama's (rotary positions, RMSNorm before each sub-layer, SwiGLU, no
# biases) or GPT-2's (learned positions, LayerNorm before each sub-layer, tanh-GELU, biases).
LLAMA_BLOCK: dict[str, Any] = {
    "pos_encoding": "rope",
    "norm": "rmsnorm",
    "norm_placement": "pre",
    "mlp": "swiglu",
    "bias": False,
    "attn_only": False,
}
GPT2_BLOCK: dict[str, Any] = {
    "pos_encoding": "learned",
    "norm": "layernorm",
    "norm_placement": "pre",
    "mlp": "gelu",
    "bias": True,
}
