"""Parity of lmforge's GPT with transformers.GPT2LMHeadModel: logits with weights copied both ways,
parameter counts, and a saved HF directory round trip. Tiny random configs; no network."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError, FormatError  # noqa: E402
from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.convert import from_hf_gpt2, to_hf_gpt2  # noqa: E402


def _hf_config(*, tie: bool = True) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        vocab_size=97,
        n_positions=32,
        n_embd=48,
        n_layer=3,
        n_head=4,
        tie_word_embeddings=tie,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )


def _ours_for(hf_config: transformers.GPT2Config) -> GPTConfig:
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        tie_embeddings=hf_config.tie_word_embeddings,
    )


def _hf_model(*, tie: bool = True) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config(tie=tie)).eval()
    with torch.no_grad():  # HF zero-initialises biases and unit-initialises LayerNorms: randomise all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_hf_to_lmforge_logits_match(tmp_path, tie):
    hf = _hf_model(tie=tie)
    hf.save_pretrained(tmp_path)
    ours = from_hf_gpt2(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-4, atol=1e-4)
        # and the loss: HF shifts labels inside, we take targets already shifted
        ours_loss = ours(idx[:, :-1], idx[:, 1:])[1]
        torch.testing.assert_close(ours_loss, hf(idx, labels=idx).loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_lmforge_to_hf_logits_match(tmp_path, tie):
    torch.manual_seed(1)
    ours = GPT(_ours_for(_hf_config(tie=tie))).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    to_hf_gpt2(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tie


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_hf(tie):
    hf_config = _hf_config(tie=tie)
    assert GPT(_ours_for(hf_config)).num_params() == transformers.GPT2LMHeadModel(hf_config).num_parameters()


def test_gpt2_preset_param_count():
    """GPT-2 small: 124,439,808 parameters with the tied head (the figure HF reports for "gpt2")."""
    with torch.device("meta"):  # shapes only: no memory, no init time
        assert GPT(GPTConfig.preset("gpt2")).num_params() == 124_439_808


def test_export_refuses_what_gpt2_cannot_express(tmp_path):
    model = GPT(GPTConfig.preset("tiny", pos_encoding="rope"))
    with pytest.raises(ConfigError, match="pos_encoding"):
        to_hf_gpt2(model, tmp_path)


def test_import_of_a_truncated_file_names_it(tmp_path):
    _hf_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FormatError, match="model.safetensors"):
        from_hf_gpt2(tmp_path)


def test_convert_cli_round_trip(tmp_path):
    """hf -> lmforge -> hf through the CLI gives back the same logits."""
    from lmforge.cli import main

    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    assert (
        main(["convert", "--from", "hf", "--to", "lmforge", str(tmp_path / "hf"), str(tmp_path / "ours")])
        == 0
    )
    assert (
        main(["convert", "--from", "lmforge", "--to", "hf", str(tmp_path / "ours"), str(tmp_path / "back")])
        == 0
    )
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, rtol=1e-5, atol=1e-5)
