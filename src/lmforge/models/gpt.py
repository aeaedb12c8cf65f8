"""GPT: a decoder-only transformer language model, its cost estimates and checkpoints.

Read top to bottom: `Block` -> `GPT` (embeddings + positions -> blocks -> final norm -> LM head) ->
checkpoint I/O. The config (`GPTConfig` in `config.py`, every option, validated) defaults to GPT-2's
choices (learned positions, LayerNorm before each sub-layer, tanh-GELU MLP, biases, tied embeddings,
N(0, 0.02) init with residual projections scaled by 1/sqrt(2 * n_layer)), so `GPTConfig.preset("gpt2")`
matches Hugging Face's GPT-2 weight for weight (`convert.py` maps the names).

Deliberately not here: sampling/generation (`lmforge.inference`), the training loop, parallelism,
`torch.compile`, LoRA and quantization (all applied from outside), HF weight conversion (`convert.py`).

KV cache API (used by `lmforge.inference`):

    cache = model.new_kv_cache(batch_size, max_length=None, left_padding=None, dtype=None)
        Preallocates keys/values for every layer, (n_layer, B, n_kv_head, max_length, head_dim), on the
        model's device, in `dtype` (default: the model's parameter dtype). max_length defaults to (and
        may not exceed) block_size.
        left_padding: per-row count of pad slots when prompts of different lengths are LEFT-padded to
        one length (e.g. [2, 0] for prompts of 3 and 5 tokens padded to 5); pad ids may be any valid id.
        `cache.reset(left_padding=...)` reuses the memory for a new batch.
    logits, _ = model(prompt_ids, kv_cache=cache, last_only=True)      # prefill: (B, P) -> (B, 1, V)
    logits, _ = model(next_ids[:, None], kv_cache=cache)                # decode one step: (B, 1) -> (B, 1, V)
        Each call writes the new keys/values in place at slots [cache.length, cache.length + T), attends
        over the filled prefix only, then advances `cache.length` by T. Positions come from the cache:
        slot s of row b has position s - left_padding[b], for learned, sinusoidal and rotary encodings
        alike, so every row of a padded batch gives the logits it would give alone. Chunked prefill
        (several calls with T > 1) works too. Writing past max_length raises ConfigError.
    Without `kv_cache` the forward is the ordinary full-sequence causal pass used in training.

References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT (structure); Kaplan et al. 2020 and
Chowdhery et al. 2022, appendix B (6N + attention FLOPs per token). Training memory is planned in
`memory.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.config import GPTConfig
from lmforge.models.layers import (
    MLP,
    CausalSelfAttention,
    KVCache,
    alibi_slopes,
    dropout_layer,
    make_norm,
    rope_tables,
    sinusoidal_table,
)
from lmforge.models.quantized import Int4Linear, Q4Weight

# Targets equal to this are not scored by the loss (torch's default ignore_index): padding, prompt tokens
# under an answer-only or assistant-only loss mask. The one definition; every other module imports it.
IGNORE_INDEX = -100
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what a checkpoint's weights may be stored as
META_FILE = "meta.json"


class Block(nn.Module):
    """One transformer block: attention then MLP, each a residual branch with a norm before or after."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.attn_only = config.attn_only
        norm = dict(bias=config.bias, eps=config.norm_eps)
        self.ln_1 = make_norm(config.norm, config.n_embd, **norm)
        self.attn = CausalSelfAttention(
            n_embd=config.n_embd,
            n_head=config.n_head,
            n_kv_head=config.n_kv_head,
            bias=config.bias,
            dropout=config.dropout,
            layer=layer,
        )
        if config.attn_only:  # no ln_2 and no mlp: the block is x + attn(ln_1(x))
            return
        self.ln_2 = make_norm(config.norm, config.n_embd, **norm)
        self.mlp = MLP(
            n_embd=config.n_embd,
            hidden=config.mlp_hidden,
            activation=config.mlp,
            bias=config.bias,
            dropout=config.dropout,
        )

    def forward(self, x: torch.Tensor, **attention_inputs: Any) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), **attention_inputs)
            return x if self.attn_only else x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, **attention_inputs))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """Decoder-only transformer LM. `model(idx, targets)` -> (logits (B, T, V), mean cross-entropy | None)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=dropout_layer(config.dropout),
                h=nn.ModuleList(Block(config, layer) for layer in range(config.n_layer)),
                # post-norm blocks already end in a norm, so only pre-norm needs a final one
                ln_f=make_norm(config.norm, config.n_embd, bias=config.bias, eps=config.norm_eps)
                if config.norm_placement == "pre"
                else nn.Identity(),
            )
        )
        if config.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":  # fixed tables are buffers, not saved in checkpoints
            table = sinusoidal_table(config.block_size, config.n_embd)  # (block_size, C)
            self.register_buffer("pos_table", table, persistent=False)
        elif config.pos_encoding == "alibi":  # a distance penalty in every attention layer, no table
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)  # (nh,)
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) for matrices and embeddings, zero biases, unit norm gains, and the
        residual output projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance does
        not grow with depth."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        # an untied head was initialised above as a Linear; a tied one is wte, initialised as an Embedding

    # --- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) with last_only) and the mean cross-entropy
        against targets (B, T), skipping IGNORE_INDEX (None without targets). See the module docstring
        for `kv_cache`."""
        x = self.hidden_states(idx, kv_cache=kv_cache)  # (B, T, C)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            # fp32 loss whatever the weight dtype: bf16 log-softmax over 50k entries loses digits
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, C), after the last norm and before the LM head
        (what a classifier head or a probe reads)."""
        B, T = idx.shape
        if kv_cache is None:
            if T > self.config.block_size:
                raise ConfigError(f"sequence length {T} exceeds block_size {self.config.block_size}")
            positions: torch.Tensor | slice = slice(0, T)
            mask = None
        else:
            positions = kv_cache.positions(T)  # a slice, or (B, T) for left-padded rows
            mask = kv_cache.attention_mask(T)

        x = self.transformer.wte(idx)  # (B, T, C)
        rope, alibi = None, None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe.weight[positions]  # (T, C) broadcast, or (B, T, C)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions]
        elif self.config.pos_encoding == "alibi":
            alibi = self.alibi_slopes
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (T, hd/2) or (B, T, hd/2)
            if cos.dim() == 3:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd/2) to broadcast over heads
            rope = (cos, sin)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope=rope, alibi=alibi, kv_cache=kv_cache, mask=mask)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def new_kv_cache(
        self,
        batch_size: int,
        *,
        max_length: int | None = None,
        left_padding: Sequence[int] | torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Preallocate a KV cache for `batch_size` rows of up to `max_length` (default block_size) slots,
        in `dtype` (default: the weights')."""
        max_length = self.config.block_size if max_length is None else max_length
        if not 1 <= max_length <= self.config.block_size:
            raise ConfigError(f"KV cache max_length must be in [1, block_size={self.config.block_size}]")
        weight = self.lm_head.weight
        return KVCache(
            n_layer=self.config.n_layer,
            batch_size=batch_size,
            n_kv_head=self.config.n_kv_head,
            head_dim=self.config.head_dim,
            max_length=max_length,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device,
            left_padding=left_padding,
        )

    # --- sizes and costs ----------------------------------------------------------------------------

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (a tied head counts once). With exclude_embeddings, the token
        and learned position tables are left out (the head stays if untied)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, *, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6 N + 12 n_layer n_embd T.

        N counts the parameters used in matmuls: all but the embedding tables, plus the LM head (which
        is a matmul even when tied). Per layer and token, attention scores q.k and the weighted sum of
        values cost 2 * T * n_embd multiply-adds each forward = 4 T n_embd FLOPs, times 3 for forward +
        backward = 12 T n_embd (PaLM, appendix B; causal masking is not subtracted, as there).
        Example (gpt2, T=1024): N = 85.0M + 38.6M = 123.6M -> 741.7M + 12*12*768*1024 = 113.2M -> 855M.
        A frozen weight (LoRA's base, a linear probe's backbone) costs 4 per token, not 6: the forward
        and the gradient of its input, no gradient of its own (the layers below the first trained one
        need no input gradient either; that is not subtracted).
        """
        c = self.config
        seq_len = c.block_size if seq_len is None else seq_len
        matmul_params = self.num_params(exclude_embeddings=True)
        embeddings = {id(self.transformer.wte.weight)} | (
            {id(self.transformer.wpe.weight)} if "wpe" in self.transformer else set()
        )
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad and id(p) not in embeddings)
        if c.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()
            frozen += 0 if self.lm_head.weight.requires_grad else self.lm_head.weight.numel()
        return 6 * matmul_params - 2 * frozen + 12 * c.n_layer * c.n_embd * seq_len

    # --- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(
        self,
        directory: str | Path,
        *,
        meta: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write `model.safetensors` and `meta.json` (format version, "model": "gpt", config, **meta)
        atomically. A tied LM head is stored once (as the token embedding). `state_dict` replaces this
        module's own tensors, for a model whose parameters are shards (the gathered full state)."""
        directory = Path(directory)
        if any(isinstance(m, Int4Linear) for m in self.modules()):
            raise ConfigError(
                "a model with 4-bit layers (from_gguf(keep_4bit=True)) is not saved as a checkpoint: "
                "load the GGUF file without keep_4bit to convert it"
            )
        tensors = dict(self.state_dict() if state_dict is None else state_dict)
        if self.config.tie_embeddings:
            del tensors["lm_head.weight"]  # safetensors refuses shared storage; rebuilt by tying on load
        save_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        extra = dict(meta or {})
        clash = {"format_version", "model", "config"} & set(extra)
        if clash:
            raise ConfigError(f"checkpoint meta may not override {', '.join(sorted(clash))}")
        record = {"format_version": CHECKPOINT_FORMAT_VERSION, "model": "gpt"}
        record["config"] = self.config.to_dict()
        atomic_write_json(directory / META_FILE, record | extra)

    @classmethod
    def from_gguf(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, keep_4bit: bool = False
    ) -> GPT:
        """A GPT from a llama.cpp GGUF file (architecture llama or gpt2), every tensor dequantized to
        `dtype`, in eval mode; with `keep_4bit`, linear layers stored as Q4_0/Q4_1 become `Int4Linear`s
        that keep the file's 4-bit weights (CPU, bfloat16 math, inference only). The file's tokenizer and
        chat template are not part of a model: `lmforge.models.checkpoints.load_gguf` returns them too."""
        from lmforge.models.gguf import read_gguf

        contents = read_gguf(path, dtype=dtype, keep_4bit=keep_4bit)
        return cls.from_tensors(contents.config, contents.tensors, dtype=dtype, source=path)

    @classmethod
    def from_tensors(
        cls,
        config: GPTConfig,
        tensors: Iterable[tuple[str, torch.Tensor | Q4Weight]],
        *,
        dtype: torch.dtype = torch.float32,
        source: str | Path = "<tensors>",
    ) -> GPT:
        """A GPT of `config` in `dtype`, eval mode, with every parameter copied from `tensors` (name,
        tensor) pairs; the tied head is left out. A `Q4Weight` replaces its Linear by an `Int4Linear`.
        A tensor of the wrong shape is a FormatError naming `source` (the file the tensors came from)."""
        model = cls(config).to(dtype)  # built and cast before the weights are read: the lower peak of memory
        parameters = model.state_dict()  # name -> the parameter's tensor, filled in place
        with torch.no_grad():
            for name, tensor in tensors:
                if name not in parameters:
                    raise FormatError(source, f"{name}: no such parameter in a GPT of this config")
                expected = tuple(parameters[name].shape)
                if tuple(tensor.shape) != expected:
                    raise FormatError(
                        source, f"{name}: shape {tuple(tensor.shape)} does not fit the config {expected}"
                    )
                if isinstance(tensor, Q4Weight):
                    parent, _, child = name.removesuffix(".weight").rpartition(".")
                    layer = model.get_submodule(parent)
                    setattr(layer, child, Int4Linear(tensor, bias=getattr(layer, child).bias))
                else:
                    parameters[name].copy_(tensor)
        return model.eval()

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> GPT:
        """Rebuild a model from `save_checkpoint` output; any missing, corrupt, truncated or mismatched
        file raises FormatError naming it. The model takes the dtype the weights were saved in."""
        directory = Path(directory)
        meta = checkpoint_meta(directory)
        try:
            config = GPTConfig.from_dict(meta["config"])
        except (ConfigError, TypeError) as e:
            raise FormatError(directory / META_FILE, f"invalid model config: {e}") from None
        model = load_weights(
            cls(config), directory / WEIGHTS_FILE, tied=("lm_head.weight",) * config.tie_embeddings
        )
        return model.to(map_location)


def load_weights(model: nn.Module, weights_path: Path, *, tied: Sequence[str] = ()) -> Any:
    """Load a checkpoint's `model.safetensors` into `model` after checking it (any model class: GPT, BERT).

    Every tensor of `model.state_dict()` except the `tied` names (stored once, re-tied by the model) must
    be there with its shape, float32/float16/bfloat16 and finite; anything else is a FormatError naming
    the file. The model takes the dtype the weights were saved in.
    """
    tensors = load_safetensors(weights_path, what="model weights")
    expected = model.state_dict()
    for name in tied:
        del expected[name]
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise FormatError(
            weights_path,
            f"weights do not match the config (missing: {missing[:5]}, unexpected: {unexpected[:5]})",
        )
    if wrong := sorted(name for name, t in tensors.items() if t.dtype not in WEIGHT_DTYPES):
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise FormatError(
            weights_path,
            f"{wrong[0]} is stored as {str(tensors[wrong[0]].dtype).removeprefix('torch.')}{more}; model "
            "weights must be float32, float16 or bfloat16",
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise FormatError(
                weights_path,
                f"{name} has shape {tuple(tensor.shape)}, config expects {tuple(expected[name].shape)}",
            )
        if not torch.isfinite(tensor).all():
            raise FormatError(weights_path, f"{name} contains NaN or infinite values")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:
        model.to(dtype=dtypes.pop())
    model.load_state_dict(tensors, strict=False)  # strict=False only for the tied tensors, checked above
    return model


# meta.json's "model" -> what it is and what uses it (for the message when a command gets the other one)
ARCHITECTURES = {
    "gpt": "a GPT (decoder-only language model: generate, chat, eval, finetune)",
    "bert": "a BERT (encoder: fill-mask, embed)",
}


def checkpoint_meta(directory: str | Path, *, architecture: str | None = "gpt") -> dict[str, Any]:
    """Read and validate a model checkpoint's `meta.json` (FormatError naming the file if anything is off).

    `architecture` is the "model" the caller needs ("gpt", "bert"), or None for any lmforge architecture;
    a checkpoint of another one is a FormatError saying what it is and what it is for."""
    path = Path(directory) / META_FILE
    if not Path(directory).is_dir():
        raise FormatError(directory, "checkpoint directory not found")
    meta = read_json(path, what="checkpoint meta")
    if not isinstance(meta, dict):
        raise FormatError(path, "checkpoint meta must be a JSON object")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise FormatError(
            path,
            f"unsupported checkpoint format_version {meta.get('format_version')!r} "
            f"(this lmforge reads {CHECKPOINT_FORMAT_VERSION})",
        )
    kind = meta.get("model")
    if kind not in ARCHITECTURES:
        raise FormatError(path, f"not an lmforge model checkpoint (model = {kind!r}; expected gpt or bert)")
    if architecture is not None and kind != architecture:
        raise FormatError(
            path, f"is {ARCHITECTURES[kind]}, but this needs {ARCHITECTURES[architecture].split(' (')[0]}"
        )
    if not isinstance(meta.get("config"), dict):
        raise FormatError(path, "missing the model 'config' object")
    return meta
