"""`lmforge tokenizer train|encode|decode|inspect` and `lmforge demo`, through the real entry point."""

from __future__ import annotations

import pytest

from lmforge.cli import main


def test_train_encode_decode_inspect(tmp_path, capsys, monkeypatch, shakespeare_sample):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(shakespeare_sample, encoding="utf-8")
    out = tmp_path / "tok.json"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(corpus),
                "--vocab-size",
                "300",
                "--pattern",
                "gpt2",
                "--out",
                str(out),
                "--hf-out",
                str(tmp_path / "hf.json"),
            ]
        )
        == 0
    )
    assert "vocab_size 300" in capsys.readouterr().out and (tmp_path / "hf.json").exists()

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "To be, or not"]) == 0
    ids = capsys.readouterr().out.split()
    assert all(i.isdigit() for i in ids) and len(ids) < len("To be, or not")
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", " ".join(ids)]) == 0
    assert capsys.readouterr().out == "To be, or not"

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("x<|endoftext|>"))
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--allow-special"]) == 0
    assert capsys.readouterr().out.split()[-1] == "299"

    text_file = tmp_path / "t.txt"
    text_file.write_text("HAMLET\nTo be, or not to be", encoding="utf-8")
    assert (
        main(["tokenizer", "inspect", "--tokenizer", str(out), "--text-file", str(text_file), "--no-color"])
        == 0
    )
    report = capsys.readouterr().out
    assert "vocab_size 300" in report and "bytes/token" in report and "HAMLET" in report.replace("|", "")


def test_train_char_kind(tmp_path, capsys):
    """A char tokenizer of "abca" has 3 character ids plus <|endoftext|>, and round-trips."""
    (tmp_path / "a.txt").write_text("abca", encoding="utf-8")
    out = tmp_path / "char.json"
    argv = ["tokenizer", "train", "--kind", "char", "--input", str(tmp_path / "a.txt"), "--out", str(out)]
    assert main(argv) == 0
    assert "4 ids" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "cab"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 3
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", " ".join(ids)]) == 0
    assert capsys.readouterr().out == "cab"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["tokenizer", "encode", "--tokenizer", "missing.json", "--text", "x"],
            "missing.json: tokenizer file not found",
        ),
        (["tokenizer", "decode", "--tokenizer", "gpt2", "--ids", "1 99999"], "token id 99999"),
        (["tokenizer", "decode", "--tokenizer", "gpt2", "--ids", "1 x"], "integer ids"),
        (["tokenizer", "encode", "--tokenizer", "gpt2", "--text", "a<|endoftext|>"], "special token"),
        (
            ["tokenizer", "train", "--builtin", "shakespeare", "--vocab-size", "100", "--out", "t.json"],
            "too small",
        ),
        (
            ["tokenizer", "train", "--input", "nowhere", "--vocab-size", "300", "--out", "t.json"],
            "no such file",
        ),
        (["tokenizer", "train", "--builtin", "shakespeare", "--out", "t.json"], "--vocab-size is required"),
        (
            [
                "tokenizer",
                "train",
                "--builtin",
                "shakespeare",
                "--vocab-size",
                "300",
                "--pattern",
                "bad",
                "--out",
                "t.json",
            ],
            "unknown split pattern",
        ),
    ],
)
def test_user_mistakes_print_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_gpt2_by_name(capsys):
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2", "--text", "Hello world"]) == 0
    assert capsys.readouterr().out.split() == ["15496", "995"]
