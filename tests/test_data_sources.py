"""Sources: every kind of input streams documents, and every kind of bad input gives a clear message."""

from __future__ import annotations

import json

import pytest

from lmforge.data.sources import SourceReader, decode_utf8
from lmforge.errors import DataError, FormatError


def read(spec, **kwargs):
    reader = SourceReader(str(spec), **kwargs)
    return [doc.text for doc in reader], reader.stats


def test_text_file_directory_and_glob(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b" / "c.md").write_text("second")
    (tmp_path / "b" / ".hidden.txt").write_text("never")
    assert read(tmp_path / "a.txt")[0] == ["first"]
    texts, stats = read(tmp_path)  # recursive, sorted, hidden files skipped
    assert texts == ["first", "second"] and stats.files == 2
    assert read(f"{tmp_path}/**/*.md")[0] == ["second"]


def test_jsonl_text_field_and_byte_count(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"body": "héllo", "id": 1}), "", json.dumps({"body": "world"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts, stats = read(path, text_field="body")
    assert texts == ["héllo", "world"]
    assert stats.documents == 2 and stats.bad_records == 0


def test_parquet_streams_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table({"content": [f"row {i}" for i in range(2500)], "n": list(range(2500))})
    pq.write_table(table, path, row_group_size=1000)  # 3 row groups
    texts, stats = read(path, text_field="content")
    assert texts == [f"row {i}" for i in range(2500)]


def test_builtin_corpus():
    texts, stats = read("shakespeare")
    assert stats.kind == "builtin" and len(texts) == 38  # 38 plays, per builtin.py


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    """b"caf\\xe9 \\xff\\xfe ok \\xef\\xbf\\xbd": \\xe9 (a Latin-1 é) is one invalid sequence, \\xff and \\xfe
    are one each (neither can start UTF-8), the last three bytes are a valid U+FFFD: 3 replaced."""
    data = b"caf\xe9 \xff\xfe ok \xef\xbf\xbd"
    assert decode_utf8(data) == ("caf\ufffd \ufffd\ufffd ok \ufffd", 3)
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    texts, stats = read(path)
    assert stats.replaced == 3 and stats.documents_with_replacements == 1


def write_bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = ['{"text": "good one"}', '{"text": "trunc', "[1, 2]", '{"other": "x"}', '{"text": null}']
    lines.append('{"text": "two"}')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_jsonl_records_are_skipped_with_file_and_line(tmp_path):
    path = write_bad_jsonl(tmp_path)
    texts, stats = read(path)
    assert texts == ["good one", "two"]
    assert stats.bad_records == 4
    assert [e.split(": ", 1)[0] for e in stats.bad_record_examples] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "malformed JSON" in stats.bad_record_examples[0]
    assert "no field 'text' (fields: other)" in stats.bad_record_examples[2]


def test_bad_jsonl_record_is_fatal_on_request(tmp_path):
    path = write_bad_jsonl(tmp_path)
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON .*--on-bad-record skip"):
        read(path, on_bad_record="fail")


def test_missing_field_everywhere_is_an_error_not_an_empty_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "a"}\n{"content": "b"}\n')
    with pytest.raises(DataError, match=r"is empty.*all 2 records were bad.*no field 'text'"):
        read(path)


def test_empty_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="is empty"):
        read(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="is empty: 0 documents"):
        read(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="contains no files"):
        read(tmp_path / "nothing")
    with pytest.raises(DataError, match="matches no files"):
        read(f"{tmp_path}/*.csv")
    with pytest.raises(DataError, match="no such file or directory"):
        read(tmp_path / "missing.txt")


def test_unreadable_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(FormatError, match="not a readable Parquet file"):
        read(broken)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"body": ["x"]}), good)
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\).*--text-field"):
        read(good)
