"""Attention and one transformer block, forward only, in numpy.

What it does: scaled dot-product attention softmax(q kᵀ / √d + mask) v with an optional causal mask
and the softmax stabilised by subtracting the row max; multi-head self-attention (one fused q/k/v
projection, heads split from the channels, outputs concatenated and projected); layer norm; and one
pre-norm GPT-2-style block, x + attn(ln1(x)) then x + mlp(ln2(x)) with an exact-GELU MLP. With `trace`,
every intermediate matrix is printed to 4 decimals in the order it is computed.

What it deliberately does not do: no backward pass (lmforge.scratch.dense shows backprop; here the
point is the forward arithmetic), no dropout, no KV cache, no rotary embeddings — lmforge.models has
those in torch. Weights are stored (n_in, n_out): y = x @ W + b.

References: Vaswani et al., "Attention Is All You Need" (2017), 3.2; Ba et al., "Layer Normalization"
(2016); Radford et al., GPT-2 (2019) for the pre-norm block; nanoGPT's model.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmforge.errors import ConfigError
from lmforge.scratch.dense import Trace, gelu, softmax

Array = np.ndarray


def emit_matrix(trace: Trace, label: str, m: Array) -> None:
    """Print `label (shape):` then one row per line, 4 decimals; a leading batch/head axis of 1 is dropped."""
    while m.ndim > 1 and m.shape[0] == 1:
        m = m[0]
    trace(f"{label} {tuple(m.shape)}:")
    for idx in np.ndindex(m.shape[:-1]):
        prefix = "" if m.ndim == 1 else str(list(idx)) + " "
        trace("  " + prefix + " ".join(f"{v:8.4f}" for v in m[idx]))


def causal_mask(T: int, S: int | None = None) -> Array:
    """(T, S) bool, True where query t may attend to key s, i.e. s <= t (top-left aligned, as torch).

    Example: causal_mask(3) = [[1,0,0],[1,1,0],[1,1,1]].
    """
    return np.tril(np.ones((T, T if S is None else S), dtype=bool))


def scaled_dot_product_attention(
    q: Array, k: Array, v: Array, *, causal: bool = False, trace: Trace | None = None
) -> tuple[Array, Array]:
    """softmax(q kᵀ / √d) v for q (..., T, d), k (..., S, d), v (..., S, d_v).

    Returns (output (..., T, d_v), attention weights (..., T, S)); each row of the weights sums to 1.
    """
    d = q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)  # (..., T, S)
    if trace:
        emit_matrix(trace, f"scores = q @ kᵀ / √{d}", scores)
    if causal:
        # -inf where a query would see the future: exp(-inf) = 0 after the softmax.
        scores = np.where(causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
        if trace:
            emit_matrix(trace, "masked scores (future = -inf)", scores)
    weights = softmax(scores)  # subtracts the row max first, so exp never overflows
    if trace:
        emit_matrix(trace, "weights = softmax(scores), each row sums to 1", weights)
    out = weights @ v  # (..., T, d_v)
    if trace:
        emit_matrix(trace, "output = weights @ v", out)
    return out, weights


@dataclass
class AttentionParams:
    """Multi-head self-attention weights for n_embd = C channels."""

    w_qkv: Array  # (C, 3C): columns [0:C] make q, [C:2C] k, [2C:3C] v
    b_qkv: Array  # (3C,)
    w_proj: Array  # (C, C): mixes the concatenated heads back into the residual stream
    b_proj: Array  # (C,)

    def __post_init__(self) -> None:
        C = self.w_proj.shape[0]
        if self.w_qkv.shape != (C, 3 * C) or self.b_qkv.shape != (3 * C,) or self.b_proj.shape != (C,):
            raise ConfigError(f"AttentionParams: shapes do not fit n_embd={C}")


def multi_head_attention(
    x: Array, params: AttentionParams, *, n_head: int, causal: bool = True, trace: Trace | None = None
) -> tuple[Array, Array]:
    """Self-attention of x (B, T, C) with n_head heads of size C / n_head.

    Returns (output (B, T, C), weights (B, n_head, T, T)).
    """
    B, T, C = x.shape
    if C % n_head:
        raise ConfigError(f"n_head={n_head} must divide n_embd={C}")
    hs = C // n_head
    qkv = x @ params.w_qkv + params.b_qkv  # (B, T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)  # each (B, T, C)
    # Split channels into heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
    q, k, v = (m.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for m in (q, k, v))
    heads, weights = [], []
    for h in range(n_head):
        if trace:
            trace(f"-- head {h}")
            emit_matrix(trace, f"q (head {h})", q[:, h])
            emit_matrix(trace, f"k (head {h})", k[:, h])
            emit_matrix(trace, f"v (head {h})", v[:, h])
        out_h, weights_h = scaled_dot_product_attention(q[:, h], k[:, h], v[:, h], causal=causal, trace=trace)
        heads.append(out_h)  # (B, T, hs)
        weights.append(weights_h)  # (B, T, T)
    y = np.concatenate(heads, axis=-1)  # (B, T, C): heads side by side
    out = y @ params.w_proj + params.b_proj
    if trace:
        emit_matrix(trace, "heads concatenated", y)
        emit_matrix(trace, "attention output = concat @ w_proj + b_proj", out)
    return out, np.stack(weights, axis=1)


def layer_norm(
    x: Array, gamma: Array, beta: Array, *, eps: float = 1e-5, trace: Trace | None = None
) -> Array:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis; var is the biased (1/C) variance."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + eps)
    if trace:
        emit_matrix(trace, "mean over channels", mean[..., 0])
        emit_matrix(trace, "variance over channels", var[..., 0])
        emit_matrix(trace, "normalised (x - mean) / √(var + eps)", x_hat)
    return x_hat * gamma + beta


@dataclass
class BlockParams:
    """One pre-norm transformer block (GPT-2 layout) for n_embd = C."""

    ln1_gamma: Array  # (C,)
    ln1_beta: Array  # (C,)
    attn: AttentionParams
    ln2_gamma: Array  # (C,)
    ln2_beta: Array  # (C,)
    w_fc: Array  # (C, 4C): MLP expansion
    b_fc: Array  # (4C,)
    w_out: Array  # (4C, C): MLP projection back to the residual stream
    b_out: Array  # (C,)


def init_block(n_embd: int, *, rng: np.random.Generator, std: float = 0.02) -> BlockParams:
    """Random block: matrices ~ N(0, std²) as GPT-2 does, biases 0, layer norms gamma = 1, beta = 0."""
    C = n_embd

    def normal(*shape: int) -> Array:
        return rng.normal(0.0, std, size=shape)

    return BlockParams(
        ln1_gamma=np.ones(C),
        ln1_beta=np.zeros(C),
        attn=AttentionParams(
            w_qkv=normal(C, 3 * C), b_qkv=np.zeros(3 * C), w_proj=normal(C, C), b_proj=np.zeros(C)
        ),
        ln2_gamma=np.ones(C),
        ln2_beta=np.zeros(C),
        w_fc=normal(C, 4 * C),
        b_fc=np.zeros(4 * C),
        w_out=normal(4 * C, C),
        b_out=np.zeros(C),
    )


def transformer_block(x: Array, params: BlockParams, *, n_head: int, trace: Trace | None = None) -> Array:
    """x (B, T, C) -> x + attn(ln1(x)) -> that + mlp(ln2(that)), with causal self-attention."""
    if trace:
        trace("-- ln1")
    h = layer_norm(x, params.ln1_gamma, params.ln1_beta, trace=trace)
    attn_out, _ = multi_head_attention(h, params.attn, n_head=n_head, causal=True, trace=trace)
    x = x + attn_out  # residual connection
    if trace:
        emit_matrix(trace, "x + attention (residual)", x)
        trace("-- ln2")
    h = layer_norm(x, params.ln2_gamma, params.ln2_beta, trace=trace)
    mlp_out = gelu(h @ params.w_fc + params.b_fc) @ params.w_out + params.b_out  # (B, T, 4C) -> (B, T, C)
    if trace:
        emit_matrix(trace, "mlp = gelu(ln2 @ w_fc + b_fc) @ w_out + b_out", mlp_out)
    x = x + mlp_out
    if trace:
        emit_matrix(trace, "block output = x + mlp (residual)", x)
    return x
