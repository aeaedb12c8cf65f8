"""Parity of lmforge's GPT with RoPE, RMSNorm, SwiGLU and GQA (no biases) against transformers'
LlamaForCausalLM, the well-known reference for that combination. Tiny random configs; no network."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError, FormatError  # noqa: E402
from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.convert import from_hf_llama, to_hf_llama  # noqa: E402

VOCAB, BLOCK, THETA, EPS = 97, 32, 500_000.0, 1e-6  # theta and eps differ from both libraries' defaults


def _ours(*, n_kv_head: int, tie: bool, vocab_size: int = VOCAB) -> GPT:
    config = GPTConfig(
        vocab_size=vocab_size,
        block_size=BLOCK,
        n_layer=2,
        n_head=4,
        n_kv_head=n_kv_head,
        n_embd=64,
        dropout=0.0,
        bias=False,
        pos_encoding="rope",
        rope_theta=THETA,
        norm="rmsnorm",
        norm_eps=EPS,
        mlp="swiglu",
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():  # norm gains start at 1: make every one distinct so a swapped or dropped gain shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model


def _hf_config(config: GPTConfig) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.tie_embeddings,
        attn_implementation="eager",  # an independent attention path: ours uses scaled_dot_product_attention
        bos_token_id=None,
        eos_token_id=None,
    )


def _hf_copy(ours: GPT, directory) -> transformers.LlamaForCausalLM:
    """Our weights in transformers' Llama, through `to_hf_llama` and `from_pretrained` (float32)."""
    to_hf_llama(ours, directory)
    hf = transformers.LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    c = ours.config  # the settings that a default would hide must have reached HF's config
    assert (hf.config.rms_norm_eps, hf.config.rope_parameters["rope_theta"]) == (c.norm_eps, c.rope_theta)
    assert (hf.config.num_key_value_heads, hf.config.tie_word_embeddings) == (c.n_kv_head, c.tie_embeddings)
    return hf


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("n_kv_head", [2, 4], ids=["gqa", "mha"])
def test_logits_and_loss_match_llama(n_kv_head, tie, tmp_path):
    ours = _ours(n_kv_head=n_kv_head, tie=tie)
    hf = _hf_copy(ours, tmp_path)
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tie
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf_logits = hf(idx).logits
        torch.testing.assert_close(ours(idx)[0], hf_logits, rtol=1e-5, atol=1e-5)
        # our targets are the next tokens already; HF's logits are shifted by hand on the same tokens
        ours_loss = ours(idx[:, :-1], idx[:, 1:])[1]
        expected = F.cross_entropy(hf_logits[:, :-1].reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
        torch.testing.assert_close(ours_loss, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours_loss, hf(idx, labels=idx).loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("n_kv_head", [2, 4], ids=["gqa", "mha"])
def test_param_count_matches_llama(n_kv_head, tie):
    ours = _ours(n_kv_head=n_kv_head, tie=tie)
    assert ours.num_params() == transformers.LlamaForCausalLM(_hf_config(ours.config)).num_parameters()


def test_hf_llama_imports_with_equal_logits(tmp_path):
    """A random transformers Llama (GQA, untied, theta and eps off the defaults) -> from_hf_llama."""
    hf_config = _hf_config(_ours(n_kv_head=2, tie=False).config)
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # HF starts norm gains at 1: randomise them so a swapped gain shows
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path)
    ours = from_hf_llama(tmp_path).eval()
    assert ours.config.rope_theta == THETA and ours.config.norm_eps == EPS and ours.config.n_kv_head == 2
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_llama_export_refuses_gpt2_block_and_import_refuses_what_we_lack(tmp_path):
    with pytest.raises(ConfigError, match="cannot export to HF Llama: pos_encoding='learned'"):
        to_hf_llama(GPT(GPTConfig.preset("tiny")), tmp_path / "out")
    to_hf_llama(_ours(n_kv_head=2, tie=True), tmp_path)
    config = tmp_path / "config.json"
    good = json.loads(config.read_text())
    for change, problem in [
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "RoPE scaling"),
        ({"model_type": "mistral"}, "not a Llama config"),
        # wrong types and values that would otherwise crash on arithmetic: one clear line each
        ({"num_attention_heads": 0}, "GPTConfig.n_head=0 is invalid; use a positive integer"),
        ({"hidden_size": "abc"}, "GPTConfig.n_embd='abc' is invalid; use a positive integer"),
        ({"rope_parameters": "x"}, "rope_parameters must be an object, found str"),
        ({"rms_norm_eps": None}, "GPTConfig.norm_eps=None is invalid; use a number"),
        ({"tie_word_embeddings": "yes"}, "GPTConfig.tie_embeddings='yes' is invalid; use true or false"),
        ({"head_dim": 7}, "head_dim * num_attention_heads != hidden_size"),
    ]:
        config.write_text(json.dumps(good | change))
        with pytest.raises(FormatError, match=re.escape(problem)) as info:
            from_hf_llama(tmp_path)
        assert str(config) in str(info.value)
    config.write_text("[1]")
    with pytest.raises(FormatError, match="HF config must hold a JSON object, found list"):
        from_hf_llama(tmp_path)


def test_convert_cli_round_trips_a_llama_style_model_with_its_tokenizer(tmp_path, shakespeare_sample, capsys):
    """lmforge convert picks the architecture from the block: our Llama-style checkpoint becomes a
    LlamaForCausalLM with equal logits, and comes back with the same weights and tokenizer."""
    from lmforge.cli import main
    from lmforge.models import checkpoint_meta
    from lmforge.tokenizers import BPETokenizer

    tokenizer = BPETokenizer.train([shakespeare_sample[:8000]], vocab_size=300, progress=False)
    ours = _ours(n_kv_head=2, tie=False, vocab_size=300)
    ours.save_checkpoint(tmp_path / "ours", meta={"tokenizer": tokenizer.to_dict()})
    assert (
        main(["convert", "--from", "lmforge", "--to", "hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
        == 0
    )
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == tokenizer.eot_id
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (
        main(["convert", "--from", "hf", "--to", "lmforge", str(tmp_path / "hf"), str(tmp_path / "back")])
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote hf Llama (" in out and "wrote lmforge Llama (" in out
    back = GPT.from_checkpoint(tmp_path / "back").eval()
    assert checkpoint_meta(tmp_path / "back")["tokenizer_fingerprint"] == tokenizer.fingerprint()
    idx = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(idx)[0], ours(idx)[0], rtol=0, atol=0)
