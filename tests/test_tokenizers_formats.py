"""tokenizer.json save/load (and its errors), tokenizer_from_dict, tiktoken rank files, the CharTokenizer."""

from __future__ import annotations

import base64
import json

import pytest

from lmforge.errors import FormatError, TokenizerError
from lmforge.tokenizers import BPETokenizer, CharTokenizer, load_gpt2, load_tokenizer, tokenizer_from_dict
from lmforge.tokenizers.formats import gpt2_package_files


@pytest.fixture(scope="module")
def small_bpe(shakespeare_sample) -> BPETokenizer:
    return BPETokenizer.train([shakespeare_sample], vocab_size=400, pattern="gpt2", progress=False)


def test_save_load_round_trip(small_bpe, tmp_path, shakespeare_sample):
    path = tmp_path / "tok.json"
    small_bpe.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and BPETokenizer.load(path).merges == small_bpe.merges
    assert loaded.fingerprint() == small_bpe.fingerprint()
    assert loaded.encode(shakespeare_sample[:20_000]) == small_bpe.encode(shakespeare_sample[:20_000])
    d = json.loads(path.read_text())
    assert d["format_version"] == 1 and d["kind"] == "bpe" and d["pattern"]["name"] == "gpt2"
    assert d["special_tokens"] == {"<|endoftext|>": 399} and len(d["merges"]) == 400 - 256 - 1
    assert (
        tokenizer_from_dict(json.loads(json.dumps(small_bpe.to_dict()))).fingerprint()
        == small_bpe.fingerprint()
    )
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file behind


def test_fingerprint_changes_with_content(small_bpe):
    other = BPETokenizer(merges=small_bpe.merges[:-1], pattern="gpt2", special_tokens={"<|endoftext|>": 398})
    assert other.fingerprint() != small_bpe.fingerprint() and len(small_bpe.fingerprint()) == 64


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "empty"),
        ('{"format_version": 1, "kind": "bpe", "merges": [[97, 98]', "corrupt or truncated"),
        ("[1, 2]", "JSON object"),
        ('{"kind": "bpe"}', "no 'format_version'"),
        ('{"format_version": 99, "kind": "bpe", "special_tokens": {}}', "format_version 99 is not supported"),
        ('{"format_version": 1, "kind": "wordy", "special_tokens": {}}', "unknown tokenizer kind 'wordy'"),
        (
            '{"format_version": 1, "kind": "bpe", "special_tokens": {}, '
            '"pattern": {"name": "gpt2", "regex": "x"}, "byte_ids": [], "merges": []}',
            "inconsistent tokenizer",
        ),
        ('{"model": {"type": "BPE"}}', "Hugging Face"),
    ],
)
def test_broken_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(FormatError, match=message) as info:
        load_tokenizer(path)
    assert "broken.json" in str(info.value)


def test_load_refuses_merges_using_undefined_ids(small_bpe, tmp_path):
    d = small_bpe.to_dict()
    d["merges"][0] = [97, 5000]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(FormatError, match="bad.json: inconsistent tokenizer: merge 0"):
        load_tokenizer(path)


def test_tiktoken_file_import_equals_gpt2(tmp_path, shakespeare_sample):
    """Write GPT-2's ranks as a .tiktoken file (base64 bytes, rank); the merges recovered from it must be
    exactly GPT-2's vocab.bpe merges."""
    gpt2 = load_gpt2()
    path = tmp_path / "gpt2.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(gpt2.token_bytes)))
    imported = BPETokenizer.from_tiktoken(path, pattern="gpt2", special_tokens={"<|endoftext|>": 50256})
    assert imported.merges == gpt2.merges and imported.byte_ids == gpt2.byte_ids
    assert imported.encode(shakespeare_sample) == gpt2.encode(shakespeare_sample)
    (tmp_path / "bad.tiktoken").write_text("not-base64!! x\n")
    with pytest.raises(FormatError, match="bad.tiktoken: line 1"):
        BPETokenizer.from_tiktoken(tmp_path / "bad.tiktoken")


def test_gpt2_import_errors(tmp_path):
    encoder_json, vocab_bpe = gpt2_package_files()
    assert BPETokenizer.from_gpt2(encoder_json, vocab_bpe).vocab_size == 50257
    truncated = tmp_path / "encoder.json"
    truncated.write_text(encoder_json.read_text()[:1000])
    with pytest.raises(FormatError, match="encoder.json: .*corrupt or truncated"):
        BPETokenizer.from_gpt2(truncated, vocab_bpe)
    bad_bpe = tmp_path / "vocab.bpe"
    bad_bpe.write_text("#version: 0.2\nĠ t\nthis line is bad\n")
    with pytest.raises(FormatError, match="vocab.bpe: line 3"):
        BPETokenizer.from_gpt2(encoder_json, bad_bpe)


# -- CharTokenizer -------------------------------------------------------------------------------------


def test_char_tokenizer(tmp_path):
    """Vocabulary "abc" sorted by code point: a=0, b=1, c=2, then <|endoftext|>=3."""
    tok = CharTokenizer.train(["cab", "ba<|endoftext|>"])
    assert tok.chars == "abc" and tok.vocab_size == 4 and tok.eot_id == 3
    assert tok.encode("cab") == [2, 0, 1]
    assert tok.encode("ab<|endoftext|>c", allowed_special="all") == [0, 1, 3, 2]
    with pytest.raises(TokenizerError, match="special token"):
        tok.encode("a<|endoftext|>")
    with pytest.raises(TokenizerError, match="'<' is not in this character vocabulary"):
        tok.encode_ordinary("a<|endoftext|>")
    with pytest.raises(TokenizerError, match="token id 4"):
        tok.decode([0, 4])
    assert tok.decode([2, 0, 3]) == "ca<|endoftext|>" and tok.decode_bytes([0]) == b"a"
    assert tok.encode_batch(["ab", "c"]) == [[0, 1], [2]]
    tok.save(tmp_path / "char.json")
    loaded = load_tokenizer(tmp_path / "char.json")
    assert isinstance(loaded, CharTokenizer) and loaded.fingerprint() == tok.fingerprint()
    assert loaded.special_tokens == {"<|endoftext|>": 3}
