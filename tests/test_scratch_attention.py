"""lmforge.scratch.attention against torch: SDPA, nn.MultiheadAttention, layer norm, one block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.scratch.attention import (
    AttentionParams,
    init_block,
    layer_norm,
    multi_head_attention,
    scaled_dot_product_attention,
    transformer_block,
)


def test_attention_by_hand():
    """T = 2, d = 1 (so √d = 1): q = [[1], [2]], k = [[0], [1]], v = [[10], [20]].

    scores = q kᵀ = [[0, 1], [0, 2]]
    no mask: row 0 = softmax([0, 1]) = [1/(1+e), e/(1+e)] = [0.268941, 0.731059]
             -> out[0] = 10·0.268941 + 20·0.731059
    causal:  row 0 = [1, 0] -> out 10;  row 1 = softmax([0, 2]) = [0.119203, 0.880797] -> out 18.807971
    """
    q, k, v = np.array([[1.0], [2.0]]), np.array([[0.0], [1.0]]), np.array([[10.0], [20.0]])
    out, weights = scaled_dot_product_attention(q, k, v)
    e = math.e
    np.testing.assert_allclose(weights[0], [1 / (1 + e), e / (1 + e)], atol=1e-12)
    assert out[0, 0] == pytest.approx(10 / (1 + e) + 20 * e / (1 + e), abs=1e-12)
    out, weights = scaled_dot_product_attention(q, k, v, causal=True)
    np.testing.assert_allclose(weights, [[1.0, 0.0], [1 / (1 + e**2), e**2 / (1 + e**2)]], atol=1e-12)
    np.testing.assert_allclose(out[:, 0], [10.0, 18.807971], atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T, S", [(5, 5), (3, 6)])
def test_sdpa_matches_torch(causal, T, S):
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, T, 4)), rng.normal(size=(2, 3, S, 4)), rng.normal(size=(2, 3, S, 5))
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    expected = F.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), is_causal=causal
    )
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-12)
    if causal:
        assert np.all(weights[..., np.triu_indices(T, k=1, m=S)[0], np.triu_indices(T, k=1, m=S)[1]] == 0)


def test_softmax_inside_attention_is_stable():
    q = np.full((2, 3), 300.0)  # scores ~ 1e5: exp would overflow without subtracting the max
    out, weights = scaled_dot_product_attention(q, q, np.eye(2), causal=True)
    assert np.isfinite(out).all() and np.isfinite(weights).all()


def _random_attention(rng: np.random.Generator, C: int) -> AttentionParams:
    return AttentionParams(
        w_qkv=rng.normal(size=(C, 3 * C)) * 0.5,
        b_qkv=rng.normal(size=3 * C) * 0.1,
        w_proj=rng.normal(size=(C, C)) * 0.5,
        b_proj=rng.normal(size=C) * 0.1,
    )


@pytest.mark.parametrize("causal", [True, False])
def test_multi_head_matches_torch_multihead_attention(causal):
    rng = np.random.default_rng(1)
    B, T, C, n_head = 2, 5, 8, 4
    params = _random_attention(rng, C)
    x = rng.normal(size=(B, T, C))
    out, weights = multi_head_attention(x, params, n_head=n_head, causal=causal)

    mha = torch.nn.MultiheadAttention(C, n_head, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # torch stores weights (out, in): the transpose of ours
        mha.in_proj_weight.copy_(torch.tensor(params.w_qkv.T))
        mha.in_proj_bias.copy_(torch.tensor(params.b_qkv))
        mha.out_proj.weight.copy_(torch.tensor(params.w_proj.T))
        mha.out_proj.bias.copy_(torch.tensor(params.b_proj))
    xt = torch.tensor(x)
    mask = ~torch.tril(torch.ones(T, T, dtype=torch.bool)) if causal else None  # True = may not attend
    expected, expected_weights = mha(
        xt, xt, xt, attn_mask=mask, need_weights=True, average_attn_weights=False
    )
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_matches_torch():
    rng = np.random.default_rng(2)
    x, gamma, beta = rng.normal(size=(2, 3, 6)) * 3 + 1, rng.normal(size=6), rng.normal(size=6)
    expected = F.layer_norm(torch.tensor(x), (6,), torch.tensor(gamma), torch.tensor(beta), eps=1e-5)
    np.testing.assert_allclose(layer_norm(x, gamma, beta), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_by_hand():
    """x = [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9)/4 = 3.5 -> (x - 3)/√(3.5 + eps)."""
    out = layer_norm(np.array([1.0, 2.0, 3.0, 6.0]), np.ones(4), np.zeros(4), eps=0.0)
    np.testing.assert_allclose(out, np.array([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(3.5), atol=1e-12)


def test_transformer_block_matches_hand_written_torch():
    rng = np.random.default_rng(3)
    B, T, C, n_head = 2, 4, 8, 2
    p = init_block(C, rng=rng, std=0.3)
    for name in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta", "b_fc", "b_out"):
        setattr(p, name, getattr(p, name) + rng.normal(size=getattr(p, name).shape) * 0.1)
    x = rng.normal(size=(B, T, C))
    out = transformer_block(x, p, n_head=n_head)

    t = lambda a: torch.tensor(a)
    mha = torch.nn.MultiheadAttention(C, n_head, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(t(p.attn.w_qkv.T))
        mha.in_proj_bias.copy_(t(p.attn.b_qkv))
        mha.out_proj.weight.copy_(t(p.attn.w_proj.T))
        mha.out_proj.bias.copy_(t(p.attn.b_proj))
    xt = t(x)
    h = F.layer_norm(xt, (C,), t(p.ln1_gamma), t(p.ln1_beta))
    xt = xt + mha(h, h, h, attn_mask=~torch.tril(torch.ones(T, T, dtype=torch.bool)), need_weights=False)[0]
    h = F.layer_norm(xt, (C,), t(p.ln2_gamma), t(p.ln2_beta))
    xt = xt + F.gelu(h @ t(p.w_fc) + t(p.b_fc)) @ t(p.w_out) + t(p.b_out)
    np.testing.assert_allclose(out, xt.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_causal_block_ignores_the_future():
    """Changing the last token must not change the block's output at earlier positions."""
    rng = np.random.default_rng(4)
    p = init_block(8, rng=rng, std=0.3)
    x = rng.normal(size=(1, 5, 8))
    y = x.copy()
    y[0, -1] += 1.0
    a, b = transformer_block(x, p, n_head=2), transformer_block(y, p, n_head=2)
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-12)
    assert not np.allclose(a[0, -1], b[0, -1])


def test_n_head_must_divide_n_embd():
    rng = np.random.default_rng(5)
    with pytest.raises(ConfigError, match="n_head"):
        multi_head_attention(rng.normal(size=(1, 2, 6)), _random_attention(rng, 6), n_head=4)
