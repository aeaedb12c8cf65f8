"""WordPiece: hand-worked encoding and training, the fast trainer against the readable one, model inputs,
files and their validation. Parity with Hugging Face is in tests/parity/test_wordpiece_parity.py."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import ConfigError, DataError, FormatError, TokenizerError
from lmforge.tokenizers import Tokenizer, WordPieceTokenizer, load_tokenizer
from lmforge.tokenizers.wordpiece import BertNormalizer, count_words, train_vocab, train_vocab_fast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# ids:        0        1        2        3        4
SMALL = [*SPECIALS, "hu", "##gg", "##ing", "##i", "##n", "##g", "a", ",", "!", "北", "é"]
#               5      6       7        8      9      10     11   12   13   14   15


@pytest.fixture
def small() -> WordPieceTokenizer:
    return WordPieceTokenizer(SMALL)


def test_greedy_longest_match_first_by_hand(small):
    # "hugging": longest prefix in vocab "hu"; then from "gging": "##gg" (no "##ggi..."); then "##ing".
    assert small.tokenize("Hugging") == ["hu", "##gg", "##ing"]
    # "hugi": "hu", then for "gi" there is no "##gi", so "##g", then "##i".
    assert small.tokenize("hugi") == ["hu", "##g", "##i"]
    # "hux": after "hu", nothing matches "x" or "##x": the whole word is [UNK], not "hu [UNK]".
    assert small.tokenize("hux a") == ["[UNK]", "a"]
    # Punctuation and CJK are words of their own. Lowercasing strips accents: "É" -> "e", not in vocab.
    assert small.tokenize("a,a!北a") == ["a", ",", "a", "!", "北", "a"]
    assert small.tokenize("É") == ["[UNK]"]
    assert WordPieceTokenizer(SMALL, lowercase=False).tokenize("é") == ["é"]


def test_encode_pair_types_mask_offsets_by_hand(small):
    e = small.encode("hugging!", pair="a")
    assert e.tokens == ["[CLS]", "hu", "##gg", "##ing", "!", "[SEP]", "a", "[SEP]"]
    assert e.ids == [2, 5, 6, 7, 13, 3, 11, 3]
    assert e.token_type_ids == [0, 0, 0, 0, 0, 0, 1, 1]
    assert e.attention_mask == [1] * 8
    assert e.offsets == [(0, 0), (0, 2), (2, 4), (4, 7), (7, 8), (0, 0), (0, 1), (0, 0)]
    padded = small.encode("a", max_length=5, padding=True)
    assert padded.ids == [2, 11, 3, 0, 0] and padded.attention_mask == [1, 1, 1, 0, 0]
    assert padded.offsets[-1] == (0, 0) and padded.token_type_ids == [0] * 5
    # max_length 5 leaves 2 tokens besides [CLS] [SEP] [SEP]: "a" fits in half, "a a a" gets the other 1.
    truncated = small.encode("a a a", pair="a", max_length=5, truncation=True)
    assert truncated.ids == [2, 11, 3, 11, 3]


def test_offsets_point_into_the_original_text_after_normalization(small):
    # \x00 is dropped and the text lowercased: offsets still index the input string.
    text = "\x00HUGging, a"
    e = small.encode(text, add_special_tokens=False)
    assert [text[s:t] for s, t in e.offsets] == ["HU", "Gg", "ing", ",", "a"]


def test_special_token_text_follows_the_house_policy(small):
    with pytest.raises(TokenizerError, match=r"\[MASK\]"):
        small.encode("a [MASK]")
    assert small.encode("a [MASK]", allowed_special={"[MASK]"}).ids == [2, 11, 4, 3]
    assert small.encode_ordinary("[MASK]") == [1, 1, 1]  # "[", "mask", "]": all unknown to this vocab


def test_normalizer_by_hand():
    words = BertNormalizer(lowercase=True, strip_accents=True).words("Héllo,\tWORLD\u00a0北京\x07!")
    assert words == [
        ("hello", 0, 5),
        (",", 5, 6),
        ("world", 7, 12),
        ("北", 13, 14),
        ("京", 14, 15),
        ("!", 16, 17),
    ]


def test_protocol_and_decode(small):
    assert isinstance(small, Tokenizer)
    assert small.eot_id == 3  # [SEP] separates documents in prepared shards
    assert small.decode(small.encode("hugging, a!").ids) == "[CLS] hugging, a! [SEP]"
    assert small.decode(small.encode("hugging, a!").ids, skip_special_tokens=True) == "hugging, a!"
    with pytest.raises(TokenizerError, match="not in this tokenizer"):
        small.decode([99])


def test_hand_worked_training_example():
    """The example worked in `train_vocab`'s docstring: hu (4-way tie at 0.05, first met), then pu
    (5/(5*5) = 0.2), then hug (3-way tie at 0.05, first met)."""
    words = {"hug": 10, "pug": 5, "hugs": 5}
    expected = ["[UNK]", "##g", "##s", "##u", "h", "p", "hu", "pu", "hug"]
    assert train_vocab(words, 9, ["[UNK]"]) == expected
    assert train_vocab_fast(words, 9, ["[UNK]"]) == expected


def test_ties_go_to_the_first_pair_met():
    """{"ab": 1, "cd": 1}: both pairs score 1/(1*1) = 1; "ab" is met first. With the words swapped, "cd"."""
    assert train_vocab({"ab": 1, "cd": 1}, 6, ["[UNK]"])[-1] == "ab"
    assert train_vocab({"cd": 1, "ab": 1}, 6, ["[UNK]"])[-1] == "cd"
    assert train_vocab_fast({"cd": 1, "ab": 1}, 6, ["[UNK]"])[-1] == "cd"


def test_fast_trainer_gives_the_readable_vocabulary(shakespeare_sample):
    counts = count_words([shakespeare_sample[:20_000]], BertNormalizer())
    readable = train_vocab(counts, 300, SPECIALS)
    assert len(readable) == 300
    assert train_vocab_fast(counts, 300, SPECIALS) == readable
    # An accented, mixed corpus where merges can rebuild an existing token.
    counts = count_words(["aab aba abab baab ab-ba naïve café über " * 3, "abba ba ab a b"], BertNormalizer())
    alphabet = {w[0] for w in counts} | {"##" + c for w in counts for c in w[1:]}
    for size in range(len(alphabet) + 1, len(train_vocab(counts, 10**6, ["[UNK]"])) + 2):
        assert train_vocab_fast(counts, size, ["[UNK]"]) == train_vocab(counts, size, ["[UNK]"])


def test_train_api_and_round_trips(tmp_path, shakespeare_sample):
    tok = WordPieceTokenizer.train([shakespeare_sample[:30_000]], 300)
    assert tok.vocab[:5] == SPECIALS and tok.vocab_size == 300 == len(tok.vocab)
    assert "[UNK]" not in tok.tokenize(shakespeare_sample[:2_000])
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, WordPieceTokenizer)
    assert again.to_dict() == tok.to_dict() and again.fingerprint() == tok.fingerprint()
    tok.save_vocab(tmp_path / "vocab.txt")
    from_txt = WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    assert from_txt.vocab == tok.vocab
    sample = shakespeare_sample[5_000:7_000]
    assert from_txt.encode(sample).ids == tok.encode(sample).ids
    with pytest.raises(ConfigError, match="smaller than the special tokens plus the alphabet"):
        WordPieceTokenizer.train(["abcdef"], 8)
    with pytest.raises(DataError, match="empty"):
        WordPieceTokenizer.train(["  \n"], 100)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[PAD]\nhello\n", r"no \[UNK\] line"),
        ("[PAD]\n\n[UNK]\n", "line 2 is empty"),
        ("[UNK]\na\nb\na\n", "line 4 repeats 'a' from line 2"),
        ("", "vocab file is empty"),
    ],
)
def test_bad_vocab_files(tmp_path, content, problem):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FormatError, match=problem) as info:
        WordPieceTokenizer.from_vocab_file(path)
    assert str(path) in str(info.value)


def test_bad_vocab_file_paths(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"[UNK]\n\xff\n")
    with pytest.raises(FormatError, match="not valid UTF-8"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "bin.txt")


def test_bad_tokenizer_json(tmp_path, small):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "WordPiece", "vocab": {"a": 0', encoding="utf-8")
    with pytest.raises(FormatError, match="invalid JSON"):
        load_tokenizer(path)
    hf = small.to_hf_dict()
    hf["model"]["vocab"] = {"[UNK]": 0, "a": 2}
    path.write_text(json.dumps(hf), encoding="utf-8")
    with pytest.raises(FormatError, match="without gaps"):
        load_tokenizer(path)
    hf = small.to_hf_dict()
    del hf["model"]["vocab"]["[UNK]"]
    hf["model"]["vocab"] = {t: i for i, t in enumerate(hf["model"]["vocab"])}
    path.write_text(json.dumps(hf), encoding="utf-8")
    with pytest.raises(FormatError, match=r"no \[UNK\] token"):
        load_tokenizer(path)
    ours = small.to_dict() | {"vocab": ["[UNK]", "a", "a"]}
    path.write_text(json.dumps(ours), encoding="utf-8")
    with pytest.raises(FormatError, match="lists 'a' twice"):
        load_tokenizer(path)
    ours = small.to_dict() | {"special_tokens": {"[UNK]": 3}}
    path.write_text(json.dumps(ours), encoding="utf-8")
    with pytest.raises(FormatError, match="special_tokens"):
        load_tokenizer(path)


def test_truncation_and_padding_need_a_length(small):
    with pytest.raises(ConfigError, match="max_length"):
        small.encode("a", truncation=True)
    with pytest.raises(ConfigError, match="no room"):
        small.encode("a", pair="a", max_length=2, truncation=True)
    batch = small.encode_batch(["a", "a a a"], padding="longest")
    assert [len(e) for e in batch] == [5, 5] and batch[0].attention_mask == [1, 1, 1, 0, 0]


def test_cli_train_encode_decode_inspect(tmp_path, capsys, shakespeare_sample):
    from lmforge.cli import main

    corpus = tmp_path / "a.txt"
    corpus.write_text(shakespeare_sample[:20_000], encoding="utf-8")
    out, hf, vocab = tmp_path / "wp.json", tmp_path / "hf.json", tmp_path / "vocab.txt"
    argv = ["tokenizer", "train", "--kind", "wordpiece", "--input", str(corpus), "--vocab-size", "200"]
    assert main([*argv, "--out", str(out), "--hf-out", str(hf), "--vocab-out", str(vocab)]) == 0
    assert "vocabulary of 200" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert load_tokenizer(hf).vocab == tok.vocab == WordPieceTokenizer.from_vocab_file(vocab).vocab

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "To be,", "--pair", "or not"]) == 0
    printed = [int(i) for i in capsys.readouterr().out.split()]
    assert printed == tok.encode("To be,", "or not").ids and printed[0] == tok.special_tokens["[CLS]"]
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "To be", "--details"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = tok.encode("To be").ids[1]  # "t" or "to", depending on what 200 entries hold
    assert len(lines) == 1 + len(tok.encode("To be")) and lines[2].split()[:3] == [str(first), "type", "0"]
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", " ".join(map(str, printed))]) == 0
    assert capsys.readouterr().out == "[CLS] to be, [SEP] or not [SEP]"
    assert (
        main(["tokenizer", "inspect", "--tokenizer", str(out), "--text-file", str(corpus), "--no-color"]) == 0
    )
    report = capsys.readouterr().out
    assert "kind wordpiece, vocab_size 200" in report and "are [UNK]" in report

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "a [MASK]"]) == 2
    assert "--allow-special" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("[PAD]\nhello\n", encoding="utf-8")
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "bad.txt"), "--text", "a"]) == 2
    assert "no [UNK] line" in capsys.readouterr().err


def test_word_counts_equal_the_pre_tokenizer_words():
    """count_words counts whitespace chunks first and splits each distinct chunk once: the counts and
    their order of first appearance must equal a plain pass of the pre-tokenizer over every text."""
    texts = ["Hello, world! hello (world)... naïve 北京北京 tab\there", "x\x00y don't world, HELLO!", "  "]
    normalizer = BertNormalizer()
    plain: dict[str, int] = {}
    for text in texts:
        for word, _, _ in normalizer.words(text):
            plain[word] = plain.get(word, 0) + 1
    counted = count_words(texts, normalizer)
    assert list(counted.items()) == list(plain.items())
