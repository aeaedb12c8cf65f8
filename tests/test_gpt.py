"""The GPT model: loss at init, overfitting, every option combination, KV cache == full recompute
(incl. left-padded batches), checkpoints, config validation and cost formulas. Parity with
transformers lives in tests/parity/test_gpt_hf.py."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from lmforge.errors import ConfigError, FormatError
from lmforge.models import GPT, GPTConfig, checkpoint_meta


def _tiny(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", **{"vocab_size": 101, "block_size": 32, "n_head": 4, **overrides})


def test_untrained_loss_is_ln_vocab():
    """Small init (std 0.02) keeps logits near 0, so the prediction is ~uniform and loss ~ ln V = 6.21.
    Logits of std s add about s^2/2 nats; with |h| ~ sqrt(C) = 8 after the final norm s ~ 0.16, and the
    residual path lets the input token's own logit stand out a little: a few hundredths, well under 0.1."""
    torch.manual_seed(0)
    model = GPT(_tiny(vocab_size=500))
    idx, targets = torch.randint(0, 500, (2, 4, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(500)) < 0.1


def test_ignore_index_excludes_positions():
    torch.manual_seed(0)
    model = GPT(_tiny())
    idx = torch.randint(0, 101, (1, 8))
    targets = torch.randint(0, 101, (1, 8))
    masked = targets.clone()
    masked[0, 4:] = -100
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], targets[0, :4])
    torch.testing.assert_close(loss, expected)


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = GPT(_tiny())
    idx = torch.randint(0, 101, (2, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(80):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


COMBINATIONS = list(
    itertools.product(
        ["learned", "sinusoidal", "rope"],  # pos_encoding
        ["layernorm", "rmsnorm"],  # norm
        ["pre", "post"],  # norm_placement
        ["gelu", "swiglu", "relu2"],  # mlp
        [4, 2],  # n_kv_head (4 = MHA, 2 = GQA)
        [True, False],  # tie_embeddings
        [True, False],  # bias
    )
)


@pytest.mark.parametrize("pos,norm,placement,mlp,n_kv_head,tie,bias", COMBINATIONS)
def test_every_option_combination_trains(pos, norm, placement, mlp, n_kv_head, tie, bias):
    config = GPTConfig(
        vocab_size=37,
        block_size=8,
        n_layer=1,
        n_head=4,
        n_embd=16,
        n_kv_head=n_kv_head,
        dropout=0.1,
        bias=bias,
        pos_encoding=pos,
        norm=norm,
        norm_placement=placement,
        mlp=mlp,
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, 37, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, 37)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_kv_cache_decode_equals_full_recompute(pos, n_kv_head):
    torch.manual_seed(0)
    model = GPT(_tiny(pos_encoding=pos, n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2, max_length=20)
        pieces = [
            model(idx[:, :6], kv_cache=cache)[0],
            model(idx[:, 6:9], kv_cache=cache)[0],
        ]  # chunked prefill
        pieces += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(9, 20)]  # one token per step
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    with pytest.raises(ConfigError, match="overflow"):
        model(idx[:, :1], kv_cache=cache)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "alibi"])
def test_left_padded_batch_decodes_like_each_prompt_alone(pos):
    """Prompts of lengths 7, 3 and 5 left-padded to 7, prefilled together, then 5 greedy steps: every
    row's logits at every step equal a full recompute of that row alone (the pad id 0 must not matter)."""
    torch.manual_seed(0)
    model = GPT(_tiny(pos_encoding=pos, n_kv_head=2)).eval()
    prompts = [torch.randint(1, 101, (n,)) for n in (7, 3, 5)]
    padding = [7 - len(p) for p in prompts]
    batch = torch.stack(
        [torch.cat([torch.zeros(pad, dtype=torch.long), p]) for p, pad in zip(prompts, padding, strict=True)]
    )
    cache = model.new_kv_cache(3, left_padding=padding)
    sequences = [p.tolist() for p in prompts]
    with torch.no_grad():
        logits, _ = model(batch, kv_cache=cache, last_only=True)
        for _ in range(5):
            for row, seq in enumerate(sequences):
                alone, _ = model(torch.tensor([seq]))
                torch.testing.assert_close(logits[row, -1], alone[0, -1], rtol=1e-5, atol=1e-5)
            next_ids = logits[:, -1].argmax(-1)
            for row, token in enumerate(next_ids.tolist()):
                sequences[row].append(token)
            logits, _ = model(next_ids[:, None], kv_cache=cache)


def test_bf16_weights_run_with_cache():
    model = GPT(_tiny(pos_encoding="rope")).to(torch.bfloat16).eval()
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        logits, _ = model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        logits, loss = model(torch.tensor([[4]]), torch.tensor([[5]]), kv_cache=cache)
    assert cache.k.dtype == logits.dtype == torch.bfloat16 and loss.dtype == torch.float32


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(_tiny(pos_encoding="rope", tie_embeddings=True)).eval()
    model.save_checkpoint(tmp_path, meta={"step": 7, "tokenizer": {"kind": "char"}})
    meta = checkpoint_meta(tmp_path)
    assert meta["format_version"] == 1 and meta["model"] == "gpt" and meta["step"] == 7
    assert meta["config"] == model.config.to_dict()
    loaded = GPT.from_checkpoint(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    idx = torch.randint(0, 101, (2, 10))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_bf16_checkpoint_stays_bf16(tmp_path):
    GPT(_tiny(tie_embeddings=False)).to(torch.bfloat16).save_checkpoint(tmp_path)
    assert GPT.from_checkpoint(tmp_path).lm_head.weight.dtype == torch.bfloat16


def test_corrupt_or_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        GPT.from_checkpoint(tmp_path / "nowhere")
    GPT(_tiny()).save_checkpoint(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(FormatError, match="model.safetensors"):
        GPT.from_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(FormatError, match="model.safetensors.*not found"):
        GPT.from_checkpoint(tmp_path)
    weights.write_bytes(good)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta)[:30])
    with pytest.raises(FormatError, match="meta.json"):
        GPT.from_checkpoint(tmp_path)
    meta["config"]["n_embd"] = 128  # weights no longer fit the config
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="model.safetensors.*shape"):
        GPT.from_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_embd": 65},  # not divisible by n_head=4
        {"n_kv_head": 3},  # does not divide n_head
        {"pos_encoding": "relative"},  # not one of learned, sinusoidal, rope, alibi
        {"mlp": "geglu"},
        {"dropout": 1.0},
        {"vocab_size": 0},
    ],
)
def test_invalid_config_is_rejected(overrides):
    with pytest.raises(ConfigError):
        _tiny(**overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown model preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(ConfigError, match="n_embed"):
        GPTConfig.from_dict({"n_embed": 3})


def test_flops_worked_by_hand():
    """L=2, C=64, V=256, T=64, tied, learned positions, biases.
    Per layer: c_attn 3C^2+3C, attn c_proj C^2+C, c_fc 4C^2+4C, mlp c_proj 4C^2+C, two LayerNorms 4C
    = 12C^2 + 13C = 49,152 + 832 = 49,984; two layers 99,968; ln_f 128 -> 100,096 non-embedding.
    Matmul params add the (tied) head 256*64 = 16,384 -> 116,480; 6N = 698,880;
    attention 12 * L * C * T = 12*2*64*64 = 98,304; total 797,184 FLOPs per token.
    All params: 100,096 + wte 16,384 + wpe 64*64 = 4,096 -> 120,576."""
    model = GPT(GPTConfig.preset("tiny"))
    assert model.num_params() == 120_576
    assert model.num_params(exclude_embeddings=True) == 100_096
    assert model.flops_per_token() == 797_184


def test_model_info_cli(capsys):
    """Figures for the "tiny" preset as worked out in test_flops_worked_by_hand."""
    from lmforge.cli import main

    assert main(["model", "info", "tiny", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "120,576" in out and "0.8 M" in out
    assert main(["model", "info", "tiny", "--set", "n_kv_head=3"]) == 2  # invalid: clean error, exit 2


def test_rope_rotates_by_position_times_frequency_counterclockwise():
    """head_dim 4, theta 100: channel pairs (0, 2) and (1, 3) turn at 1 and 100^(-2/4) = 0.1 rad per
    position. [1, 0] in pair (0, 2) at position 1 becomes [cos 1, sin 1]; at position 0 it is unchanged;
    [1, 0] in pair (1, 3) at position 2 becomes [cos 0.2, sin 0.2]."""
    from lmforge.models.layers import apply_rope, rope_tables

    cos, sin = rope_tables(3, 4, theta=100.0)  # (3, 2) each
    x = torch.zeros(1, 1, 3, 4)  # (B, nh, T, hd)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = x[0, 0, 2, 1] = 1.0
    y = apply_rope(x, cos, sin)[0, 0]
    expected = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [math.cos(1.0), 0.0, math.sin(1.0), 0.0],
            [0.0, math.cos(0.2), 0.0, math.sin(0.2)],
        ]
    )
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_grouped_query_head_h_reads_key_value_head_h_over_group(explicit):
    """4 query heads, 2 key/value heads (group 2): query head h attends with key/value head h // 2, as
    in Llama. Reference: each head's causal softmax attention written out from the fused projection."""
    from lmforge.models.layers import CausalSelfAttention

    torch.manual_seed(0)
    attn = CausalSelfAttention(n_embd=16, n_head=4, n_kv_head=2, bias=False, dropout=0.0, layer=0)
    attn.explicit_pattern = explicit
    x = torch.randn(1, 5, 16)

    def reference(kv_head_of) -> torch.Tensor:
        q, k, v = attn.c_attn(x)[0].split([16, 8, 8], dim=-1)  # (T, 16), (T, 8), (T, 8); head_dim 4
        heads = []
        for h in range(4):
            g = kv_head_of(h)
            qh, kh, vh = q[:, 4 * h : 4 * h + 4], k[:, 4 * g : 4 * g + 4], v[:, 4 * g : 4 * g + 4]
            scores = (qh @ kh.T / 2.0).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf)
            heads.append(scores.softmax(-1) @ vh)
        return attn.c_proj(torch.cat(heads, dim=-1))[None]

    with torch.no_grad():
        expected, wrong = reference(lambda h: h // 2), reference(lambda h: h % 2)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, wrong, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 5, 48), (3, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-5, None])
def test_rmsnorm_inference_path_equals_torchs_rmsnorm(shape, dtype, eps):
    """Without gradients on the CPU, `RMSNorm` computes LayerNorm([x, -x]) (one fused kernel); it must give
    nn.RMSNorm's values (bf16: within one rounding step), a contiguous result, and the same state dict."""
    from lmforge.models.layers import RMSNorm

    torch.manual_seed(0)
    ours, theirs = RMSNorm(48, eps=eps), torch.nn.RMSNorm(48, eps=eps)
    with torch.no_grad():
        theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    with torch.no_grad():
        got, expected = ours(x), theirs(x)
    assert got.is_contiguous() and got.dtype == dtype and got.shape == x.shape
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.02, rtol=0.01)
    torch.testing.assert_close(got.float(), expected.float(), **tolerance)
    # with gradients it is nn.RMSNorm's own path
    assert torch.equal(ours(x), theirs(x))


def test_dropout_modules_only_where_there_is_dropout():
    """p = 0 builds no dropout module (a no-op that still costs a call per layer when decoding)."""
    plain = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=16, dropout=0.0))
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    dropped = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=16, dropout=0.5))
    assert sum(isinstance(m, torch.nn.Dropout) for m in dropped.modules()) == 3  # embeddings, attention, MLP
    assert plain.state_dict().keys() == dropped.state_dict().keys()


@pytest.mark.parametrize("n_head", [4, 6, 1])
def test_alibi_slopes_equal_bloom(n_head):
    """Our slopes against transformers' BLOOM (`build_alibi_tensor`: slope[h] * key position, so its
    entry at key 1 is the slope), including a head count that is not a power of two."""
    build_alibi_tensor = pytest.importorskip("transformers.models.bloom.modeling_bloom").build_alibi_tensor
    from lmforge.models.layers import alibi_slopes

    bloom = build_alibi_tensor(torch.ones(1, 3), n_head, torch.float32)  # (n_head, 1, 3)
    torch.testing.assert_close(alibi_slopes(n_head), bloom[:, 0, 1], rtol=0, atol=0)


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_alibi_attention_is_softmax_of_scores_minus_slope_times_distance(explicit):
    """One head (slope 2^-8 = 1/256 for n_head = 1), q = k = 0 by zero weights, so the scores are the
    ALiBi penalty alone: query 2 weighs keys 0, 1, 2 as softmax(-2/256, -1/256, 0); the output is that
    mix of the values (the rows of v = x, with c_attn's value block and c_proj set to identities)."""
    from lmforge.models.layers import CausalSelfAttention, alibi_slopes

    attn = CausalSelfAttention(n_embd=2, n_head=1, n_kv_head=1, bias=False, dropout=0.0, layer=0)
    attn.explicit_pattern = explicit
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        attn.c_attn.weight[4:6] = torch.eye(2)  # v = x
        attn.c_proj.weight.copy_(torch.eye(2))
        x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
        y = attn(x, alibi=alibi_slopes(1))
    e = [math.exp(-2 / 256), math.exp(-1 / 256), 1.0]
    expected_2 = torch.tensor([e[0], e[1]]) / sum(e)  # query 2: value rows 0 and 1 weighted, row 2 is 0
    expected_1 = torch.tensor([e[1], e[2]]) / (e[1] + e[2])  # query 1: keys 0 and 1
    torch.testing.assert_close(y[0, 2], expected_2, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[0, 1], expected_1, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[0, 0], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
