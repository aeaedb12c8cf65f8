"""Byte-level BPE: hand-worked training, the reference encoder against the tiktoken fast path on real
text, special tokens, decoding, round trips (hypothesis) and the errors users can trigger."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.builtin import builtin_documents, builtin_text
from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.tokenizers import BPETokenizer, load_gpt2
from lmforge.tokenizers.bpe import count_chunks, train_merges
from lmforge.tokenizers.pretokenize import PATTERNS, split_text
from lmforge.tokenizers.special import split_on_special


@functools.cache
def _stdlib_slice(n_chars: int) -> str:
    parts, size = [], 0
    for doc in builtin_documents("python-stdlib"):
        parts.append(doc.text)
        size += len(doc.text)
        if size >= n_chars:
            break
    return "\n".join(parts)[:n_chars]


@functools.cache
def _trained(pattern: str, corpus: str) -> BPETokenizer:
    text = builtin_text("shakespeare")[:200_000] if corpus == "shakespeare" else _stdlib_slice(300_000)
    return BPETokenizer.train([text], vocab_size=1024, pattern=pattern, progress=False)


_gpt2 = functools.cache(load_gpt2)


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return _trained("gpt4", "shakespeare")


# -- training: hand-worked examples ------------------------------------------------------------------


def test_classic_aaabdaaabac():
    """Wikipedia's example. Pairs of a a a b d a a a b a c: aa 4, ab 2, bd da ba ac 1 -> Z=aa (256).
    Z a b d Z a b a c: Za 2, ab 2 (tie; smaller ids win: (97, 98) < (256, 97)) -> Y=ab (257).
    Z Y d Z Y a c: ZY 2 -> X=ZY (258). Then all pairs occur once: min_frequency=2 stops."""
    assert train_merges({"aaabdaaabac": 1}, n_merges=10, min_frequency=2, progress=False) == [
        (97, 97),
        (97, 98),
        (256, 257),
    ]


def test_tie_break_is_smallest_pair_and_order_independent():
    """gpt2 splits "ab cd" into "ab", " cd": pairs (97,98), (32,99), (99,100) each once. Smallest first:
    (32,99) -> 256; then (97,98) -> 257 and (256,100) -> 258 (" c"+"d") in id order."""
    expected = [(32, 99), (97, 98), (256, 100)]
    for texts in (["ab cd"], [" cd", "ab"]):
        tok = BPETokenizer.train(
            texts, vocab_size=259, pattern="gpt2", special_tokens=(), min_frequency=1, progress=False
        )
        assert tok.merges == expected


def test_counts_are_frequency_weighted():
    """ "ab" x3 and "cd" x2 as chunks: (a,b) has count 3 > (c,d) 2, so it is merged first even though
    (99, 100) would also be learned; min_frequency=3 stops after one merge."""
    counts = count_chunks(["ab ab ab cd cd".replace(" ", "\n")], PATTERNS["gpt2"])
    assert counts["ab"] == 3 and counts["cd"] == 2
    assert train_merges(counts, n_merges=5, min_frequency=3, progress=False) == [(97, 98)]


@pytest.mark.filterwarnings("ignore:BPE training stopped")
def test_special_tokens_are_reserved_and_never_merged():
    text = "hello<|endoftext|>hello<|endoftext|>" * 50
    tok = BPETokenizer.train([text], vocab_size=300, pattern="gpt2", min_frequency=1, progress=False)
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1}
    assert all(b"<|" not in t and b"|>" not in t for t in tok.token_bytes)


@pytest.mark.filterwarnings("ignore:BPE training stopped")
def test_training_reads_files(tmp_path):
    (tmp_path / "a.txt").write_text("low lower lowest " * 20, encoding="utf-8")
    tok = BPETokenizer.train(
        [tmp_path / "a.txt"], vocab_size=270, pattern="gpt2", min_frequency=1, progress=False
    )
    assert tok.decode(tok.encode("lowest")) == "lowest" and len(tok.encode(" lowest")) < 7


def test_more_merges_than_ids_is_refused_before_any_work():
    """Ids are packed in 21 bits: 256 bytes + 2**21 - 255 merges is one id too many."""
    with pytest.raises(TokenizerError, match=r"too many merges \(2096897\); at most 2096896"):
        BPETokenizer(merges=[(97, 98)] * (2**21 - 255))


def test_vocabulary_with_duplicate_bytes_is_refused():
    # (97,98)->256 "ab", (256,99)->257 "abc", (98,99)->258 "bc", (97,258)->259 "abc" again.
    with pytest.raises(TokenizerError, match="same bytes"):
        BPETokenizer(merges=[(97, 98), (256, 99), (98, 99), (97, 258)])


# -- reference encoder == tiktoken fast path on real text ---------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "corpus"), [("gpt4", "shakespeare"), ("code", "stdlib"), ("gpt2", "stdlib")]
)
def test_reference_equals_fast_path_on_real_text(pattern, corpus, shakespeare_text):
    tok = _trained(pattern, corpus)
    for text in (shakespeare_text[1_000_000:1_400_000], _stdlib_slice(700_000)[300_000:]):
        assert tok.encode_ordinary_reference(text) == tok.encode_ordinary(text)


def test_gpt2_reference_equals_fast_path(shakespeare_text):
    gpt2 = _gpt2()
    for text in (shakespeare_text[:300_000], _stdlib_slice(300_000)):
        assert gpt2.encode_ordinary_reference(text) == gpt2.encode_ordinary(text)


def test_split_patterns():
    assert split_text("Hello world!!", PATTERNS["gpt2"]) == ["Hello", " world", "!!"]
    assert split_text("x = 12345", PATTERNS["gpt4"]) == ["x", " =", " ", "123", "45"]
    assert split_text("def max_len2(__x):", PATTERNS["code"]) == ["def", " max_len2", "(__x", "):"]


# -- special tokens ------------------------------------------------------------------------------------


def test_special_token_semantics(trained):
    eot = trained.eot_id
    text = "To be<|endoftext|>or not"
    with pytest.raises(TokenizerError, match=r"<\|endoftext\|>"):
        trained.encode(text)
    with pytest.raises(TokenizerError, match=r"<\|endoftext\|>"):
        trained.encode_reference(text)
    with pytest.raises(TokenizerError, match=r"<\|endoftext\|>"):
        trained.encode_batch(["fine", text])
    for allowed in ("all", {"<|endoftext|>"}):
        ids = trained.encode(text, allowed_special=allowed)
        assert ids == trained.encode_reference(text, allowed_special=allowed)
        assert ids.count(eot) == 1
        assert ids == trained.encode("To be") + [eot] + trained.encode("or not")
    ordinary = trained.encode_ordinary(text)
    assert eot not in ordinary and trained.decode(ordinary) == text
    with pytest.raises(TokenizerError, match="not a special token"):
        trained.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(TokenizerError, match="must be 'none_raise', 'all' or a set"):
        trained.encode(text, allowed_special=["<|endoftext|>"])  # a list is not a set


def test_special_token_that_is_a_prefix_of_another_loses_to_the_longer_one():
    """With `<|a|>` and `<|a|>b` both allowed, "x<|a|>by" holds `<|a|>b` (the longest match, as tiktoken
    matches), not `<|a|>` followed by the byte "b". Bytes only (no merges), so every other id is a byte."""
    tok = BPETokenizer.train(["xy"], vocab_size=258, special_tokens=("<|a|>", "<|a|>b"), progress=False)
    a, ab = tok.special_tokens["<|a|>"], tok.special_tokens["<|a|>b"]
    expected = [ord("x"), ab, ord("y")]
    assert list(split_on_special("x<|a|>by", frozenset({"<|a|>", "<|a|>b"}))) == [
        ("x", False),
        ("<|a|>b", True),
        ("y", False),
    ]
    # the fast path: tiktoken alone would pick between the two in its hash-map order
    assert list(split_on_special("x<|a|>", frozenset({"<|a|>"}))) == [("x", False), ("<|a|>", True)]  # no ""
    assert tok.encode("x<|a|>by", allowed_special="all") == expected
    assert tok.encode_batch(["x<|a|>by", "<|a|>"], allowed_special="all") == [expected, [a]]
    assert tok.encode_reference("x<|a|>by", allowed_special="all") == expected
    assert tok.encode_reference("x<|a|>y", allowed_special="all") == [ord("x"), a, ord("y")]


def test_encode_batch_matches_encode(trained, shakespeare_sample):
    texts = [shakespeare_sample[i : i + 5000] for i in range(0, 50_000, 5000)]
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]
    assert trained.encode_ordinary_batch(texts, num_threads=2) == [trained.encode_ordinary(t) for t in texts]


# -- decoding ------------------------------------------------------------------------------------------


def test_decode_split_utf8_character_gives_replacement(trained):
    ids = trained.encode("é")  # one character, two bytes (0xC3 0xA9): possibly one token
    data = "é".encode()
    first_byte = [trained.byte_ids[data[0]]]
    assert trained.decode_bytes(ids) == data
    assert trained.decode(first_byte) == "\ufffd"
    assert trained.decode(first_byte + [trained.byte_ids[ord("x")]]) == "\ufffdx"


def test_decode_rejects_unknown_ids(trained):
    for bad in ([trained.vocab_size], [-1], [5, 10**9]):
        with pytest.raises(TokenizerError, match="not in this tokenizer's vocabulary"):
            trained.decode(bad)
    assert trained.decode([]) == ""


def test_lone_surrogates_become_replacement_character(trained):
    text = "a\ud800b"
    assert trained.decode(trained.encode(text)) == "a\ufffdb"
    assert trained.encode_reference(text) == trained.encode(text)


# -- round trips (hypothesis) --------------------------------------------------------------------------

_pieces = st.sampled_from(
    [
        "\r\n",
        "\n",
        " " * 17,
        "\t\t",
        "🦀",
        "👩‍👩‍👧",
        "漢字テスト",
        "é",
        "e\u0301",
        "<|endoftext|>",
        "don't",
        "12345",
        "  x",
        "\u200b",
    ]
)
_texts = st.lists(st.one_of(st.text(), _pieces), max_size=8).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_texts)
def test_round_trip_trained(text):
    tok = _trained("gpt4", "shakespeare")
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert tok.encode_ordinary_reference(text) == ids


@settings(max_examples=150, deadline=None)
@given(text=_texts)
def test_round_trip_gpt2(text):
    gpt2 = _gpt2()
    ids = gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text
    assert gpt2.encode_ordinary_reference(text) == ids


# -- user errors ---------------------------------------------------------------------------------------


def test_bad_training_input(tmp_path):
    with pytest.raises(DataError, match="empty"):
        BPETokenizer.train([], vocab_size=300, progress=False)
    with pytest.raises(DataError, match="empty"):
        BPETokenizer.train(["", ""], vocab_size=300, progress=False)
    with pytest.raises(ConfigError, match="at least 256"):
        BPETokenizer.train(["abc"], vocab_size=256, progress=False)  # 256 bytes + 1 special do not fit
    with pytest.raises(ConfigError, match="unknown split pattern 'gpt5'"):
        BPETokenizer.train(["abc"], vocab_size=300, pattern="gpt5", progress=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt: not valid UTF-8"):
        BPETokenizer.train([latin1], vocab_size=300, progress=False)


def test_early_stop_warns():
    with pytest.warns(UserWarning, match="stopped after 1 of"):
        tok = BPETokenizer.train(["ab ab"], vocab_size=300, pattern="gpt2", progress=False)
    assert tok.vocab_size == 256 + 1 + 1
