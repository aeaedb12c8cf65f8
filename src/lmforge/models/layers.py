"""Building blocks of transformers: attention with a KV cache, MLPs, norms, positions.

What is here: `CausalSelfAttention` (fused q/k/v projection, grouped-query attention, rotary
embeddings or ALiBi distance penalties, `F.scaled_dot_product_attention`; `causal=False` with a
padding mask serves encoders such as BERT and the ViT), `KVCache` (preallocated keys/values of every
layer for one-token-at-a-time decoding, with left padding for batches of prompts of different
lengths), `MLP` (gelu / gelu_exact / swiglu / relu2), `make_norm` (LayerNorm / `RMSNorm`),
`dropout_layer` and the positions (`sinusoidal_table`, `rope_tables`, `apply_rope`, `alibi_slopes`,
`alibi_bias`).

Deliberately not here: the models themselves (`gpt.py`, `bert.py`), sampling and the generation loop
(`lmforge.inference`), parallelism, compilation or quantization (applied from outside).

References: Vaswani et al. 2017 (sinusoidal positions); Su et al. 2021, RoFormer (rotary embeddings,
here in the "rotate half" layout of GPT-NeoX/Llama); Press et al. 2022, "Train Short, Test Long"
(ALiBi); Ainslie et al. 2023, GQA; Shazeer 2020, GLU variants (SwiGLU); So et al. 2021, Primer
(squared ReLU); Zhang & Sennrich 2019 (RMSNorm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# Positions


def sinusoidal_table(length: int, n_embd: int) -> torch.Tensor:
    """The fixed (length, n_embd) table of Vaswani et al.: sin on even channels, cos on odd ones.

    Example (n_embd=2): row p is [sin(p), cos(p)], so row 0 is [0, 1].
    """
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    inv_freq = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float64) * (-math.log(10000.0) / n_embd))
    table = torch.zeros(length, n_embd, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : n_embd // 2]
    return table.float()


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (length, head_dim // 2): angle[p, i] = p * theta^(-2i/hd)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq  # (length, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hd/2) of x (B, nh, T, hd) by the angles of their positions.

    cos/sin are (T, hd/2) when every row has the same positions, or (B, 1, T, hd/2) per row.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """(n_head,) ALiBi slopes (Press et al. 2022): head h adds -slope[h] * (query position - key position)
    to its attention scores, a penalty linear in distance, with no learned parameters.

    For n a power of two the slopes are r, r^2, .., r^n with r = 2^(-8/n); otherwise those of the next
    lower power of two m, then the odd powers r'^1, r'^3, .. of r' = 2^(-4/m) for the n - m others (the
    rule of the paper's code and of BLOOM). Example: n = 4 gives 1/4, 1/16, 1/64, 1/256; n = 6 gives
    those four, then 1/2 and 1/8.
    """
    m = 2 ** math.floor(math.log2(n_head))
    slopes = [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]
    slopes += [2.0 ** (-4.0 * (2 * i + 1) / m) for i in range(n_head - m)]
    return torch.tensor(slopes)


def alibi_bias(
    slopes: torch.Tensor, T: int, S: int, mask: torch.Tensor | None, *, causal: bool
) -> torch.Tensor:
    """The additive mask of T queries (the last T of S key slots) over S keys: -slope * (q - s) where
    the key may be seen, -inf elsewhere. (B or 1, nh, T, S), float32.

    Distances are between cache slots: left padding shifts a row's query and key slots alike, so they
    are the distances between positions. The seen keys are `mask` (boolean, (B or 1, 1, T, S)) if given,
    else s <= q when causal, else all.
    """
    q_slots = torch.arange(S - T, S, device=slopes.device)[:, None]  # (T, 1)
    k_slots = torch.arange(S, device=slopes.device)[None, :]  # (1, S)
    bias = -slopes.float()[:, None, None] * (q_slots - k_slots)  # (nh, T, S)
    if mask is None:
        mask = (k_slots <= q_slots if causal else torch.ones(T, S, dtype=torch.bool, device=slopes.device))[
            None, None
        ]
    return torch.where(mask, bias, float("-inf"))


# ---------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys and values of every layer, filled left to right during generation.

    `k` and `v` are (n_layer, B, n_kv_head, max_length, head_dim). `length` slots are filled; a forward
    pass with T new tokens writes slots [length, length + T) in place and attends over the filled
    prefix only, then `GPT.forward` advances `length` by T.

    Batches of prompts of different lengths are LEFT-padded to a common length; `left_padding[b]` is
    the number of pad slots at the start of row b. Those slots are never attended to by real tokens, and
    the position of slot s in row b is s - left_padding[b], so every row behaves exactly as if it had
    been run alone. The pad token ids themselves are irrelevant (any valid id).
    """

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device | str,
        left_padding: Sequence[int] | torch.Tensor | None = None,
    ):
        shape = (n_layer, batch_size, n_kv_head, max_length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0
        self.left_padding: torch.Tensor | None = None  # (B,) int64, or None when no row is padded
        self.reset(left_padding=left_padding)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def reset(self, *, left_padding: Sequence[int] | torch.Tensor | None = None) -> None:
        """Empty the cache (keeping its memory) for a new batch with the given left padding."""
        self.length = 0
        if left_padding is None:
            self.left_padding = None
            return
        pad = torch.as_tensor(left_padding, dtype=torch.long, device=self.k.device).reshape(-1)
        if pad.numel() != self.batch_size:
            raise ConfigError(f"left_padding has {pad.numel()} entries for a batch of {self.batch_size}")
        if bool((pad < 0).any()) or int(pad.max()) >= self.max_length:
            raise ConfigError(f"left_padding must be in [0, {self.max_length}), got {pad.tolist()}")
        self.left_padding = pad if bool(pad.any()) else None

    def positions(self, T: int) -> slice | torch.Tensor:
        """Positions of the next T slots: a slice when all rows share them (indexing a position table
        with it is a view, no gather), else a (B, T) tensor of per-row positions.

        Pad slots get position 0 (their outputs are never used, the value only has to be valid).
        """
        if self.length + T > self.max_length:
            raise ConfigError(
                f"KV cache overflow: {self.length} filled + {T} new tokens > max_length {self.max_length}"
            )
        if self.left_padding is None:
            return slice(self.length, self.length + T)
        slots = torch.arange(self.length, self.length + T, device=self.k.device)
        return (slots[None, :] - self.left_padding[:, None]).clamp(min=0)

    def attention_mask(self, T: int) -> torch.Tensor | None:
        """Boolean mask (B or 1, 1, T, length + T) for the next T queries; None when plain causal works.

        Query slot q may see key slot s iff s <= q and s is not padding. A pad query also sees itself,
        so that no softmax row is empty (an all-masked row would give NaN, and NaN times a zero weight
        is still NaN in the next layer).
        """
        if self.left_padding is None and (T == 1 or self.length == 0):
            return None  # one new token sees everything; or a fresh prefill: use is_causal
        q_slots = torch.arange(self.length, self.length + T, device=self.k.device)[:, None]  # (T, 1)
        k_slots = torch.arange(self.length + T, device=self.k.device)[None, :]  # (1, S)
        mask = k_slots <= q_slots  # (T, S)
        if self.left_padding is not None:
            real_key = k_slots[None] >= self.left_padding[:, None, None]  # (B, 1, S)
            mask = (mask[None] & real_key) | (k_slots == q_slots)[None]  # (B, T, S)
            return mask[:, None]  # (B, 1, T, S)
        return mask[None, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, hd) of `layer` at the next T slots; return views of the filled
        prefix (B, n_kv_head, length + T, hd). `length` itself is advanced by the model after all layers."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ---------------------------------------------------------------------------------------------------
# Attention


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped-query attention (n_kv_head divides n_head).

    `causal=False` lets every position attend to every other (an encoder, e.g. the ViT in vision.py).
    """

    def __init__(
        self,
        *,
        n_embd: int,
        n_head: int,
        n_kv_head: int,
        bias: bool,
        dropout: float,
        layer: int,
        causal: bool = True,
    ):
        super().__init__()
        self.causal = causal
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.layer = layer  # index into the KV cache
        # q, k, v in one matmul: n_head query heads then n_kv_head key and value heads (GPT-2 layout for MHA)
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = dropout_layer(dropout)
        # Interpretability opt-in: SDPA never materialises the attention weights, so no hook can see them.
        # With `explicit_pattern = True` the weights are computed by hand and passed through `pattern`
        # (an identity, no parameters), where forward hooks can read or replace them (lmforge.interpret).
        # The default path below is SDPA, untouched.
        self.explicit_pattern = False
        self.pattern = nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        alibi: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `rope`: cos/sin tables to rotate q and k; `alibi`: (n_head,) slopes
        of a distance penalty added to the scores (`alibi_slopes`); `mask`: boolean, True where a query
        may see a key (None: causal, or everything in an encoder)."""
        B, T, C = x.shape
        hd = self.head_dim
        heads = self.c_attn(x).view(B, T, -1, hd).transpose(1, 2)  # (B, nh + 2 nkv, T, hd)
        qk, v = heads.split([self.n_head + self.n_kv_head, self.n_kv_head], dim=1)  # v: (B, nkv, T, hd)
        if rope is not None:  # queries and keys rotated together: one set of ops, not two (decode speed)
            qk = apply_rope(qk, *rope)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=1)  # (B, nh, T, hd), (B, nkv, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nkv, S, hd) with S = filled + T
        if alibi is not None:  # the penalty and the mask become one additive float mask
            mask = alibi_bias(alibi, T, k.size(2), mask, causal=self.causal)  # (B or 1, nh, T, S)
        is_causal = self.causal and mask is None and T > 1 and k.size(2) == T
        # One query on the CPU (a decode step) in half precision: PyTorch's CPU attention kernel runs 3-5x
        # slower in bfloat16 than in float32 at T = 1 (bench/gguf_bench.py's notes), so it runs in float32.
        # The inference engine keeps such a model's cache in float32 already, so that the cached keys and
        # values are not upcast at every step; a prefill reads that cache back in q's dtype.
        dtype = q.dtype
        upcast = T == 1 and q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
        if upcast:
            q, k, v = q.float(), k.float(), v.float()  # k and v: no-ops for a float32 cache
        elif k.dtype != dtype:  # only a cache in another dtype makes them differ
            k, v = k.to(dtype), v.to(dtype)
        if self.explicit_pattern:
            y = self._attend_explicitly(q, k, v, mask=mask, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask if mask is None or mask.dtype == torch.bool else mask.to(q.dtype),
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=is_causal,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # (B, nh, T, hd)
        if upcast:
            y = y.to(dtype)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _attend_explicitly(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """What SDPA computes, with the weights (B, nh, T, S) passed through `self.pattern`."""
        T, S = q.size(2), k.size(2)
        if self.n_kv_head != self.n_head:  # each key/value head serves n_head / n_kv_head query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, S, hd)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, S)
        if is_causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:  # additive (ALiBi)
            scores = scores + mask.to(scores.dtype)
        weights = self.pattern(scores.softmax(dim=-1))  # (B, nh, T, S), rows sum to 1
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        return weights @ v  # (B, nh, T, hd)


# ---------------------------------------------------------------------------------------------------
# MLP and norms


class MLP(nn.Module):
    """Position-wise feed-forward: gelu (GPT-2, tanh approximation), gelu_exact (BERT: the erf form),
    swiglu or relu2 (squared ReLU)."""

    def __init__(self, *, n_embd: int, hidden: int, activation: str, bias: bool, dropout: float):
        super().__init__()
        self.activation = activation
        # swiglu: gate and value projections fused in one matmul of width 2 * hidden
        self.c_fc = nn.Linear(n_embd, hidden * (2 if activation == "swiglu" else 1), bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2 * hidden)
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "gelu_exact":
            h = F.gelu(h)
        elif self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:  # relu2
            h = F.relu(h).square()
        return self.dropout(self.c_proj(h))


def dropout_layer(p: float) -> nn.Module:
    """`nn.Dropout(p)`, or an `nn.Identity` when p is 0: a dropout module costs a few microseconds per
    call even when it does nothing, and a one-token decoding step makes about two per layer."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (same parameters, same values), with a faster path for CPU inference.

    RMSNorm(x) is the first half of LayerNorm([x, -x]) (no bias): the mirrored copy makes the mean
    exactly 0, so LayerNorm's variance is the mean square of x. PyTorch's CPU LayerNorm is one fused
    kernel while its RMSNorm is a chain of small ops (6.7 us against 16.8 us at width 576), and a
    decoding step of a 30-layer Llama runs 61 of them. Training and other devices use `nn.RMSNorm` as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        C = x.size(-1)
        weight = None if self.weight is None else self.weight.expand(2, C)
        mirrored = torch.stack((x, -x), dim=-2)  # (..., 2, C)
        return F.layer_norm(mirrored, (2, C), weight, None, eps)[..., 0, :].contiguous()  # a copy if T > 1


def make_norm(kind: str, n_embd: int, *, bias: bool, eps: float) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm (never has a bias)."""
    if kind == "layernorm":
        return nn.LayerNorm(n_embd, eps=eps, bias=bias)
    return RMSNorm(n_embd, eps=eps)
