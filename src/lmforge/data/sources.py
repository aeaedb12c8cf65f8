"""Sources: turn `--source` arguments into a stream of documents, one at a time.

A source is a built-in corpus name (`shakespeare`, `python-stdlib`), a file, a directory (every
non-hidden file below it, recursively, in sorted order) or a glob pattern (`data/**/*.md`). Files are
read by suffix: `.jsonl`/`.ndjson` one record per line, `.parquet` one row per record (streamed batch by
batch with pyarrow), anything else one document per file. Nothing holds more than one file (text), one
line (JSONL) or one record batch (Parquet) in memory, so a corpus larger than RAM streams through.

Messy input is counted, not hidden: bytes that are not UTF-8 become U+FFFD and are counted; a bad record
(malformed JSON, a missing or non-string text field, a null Parquet value) is skipped and reported
with `file:line`, or raises `DataError` when `on_bad_record="fail"`; a source that yields no text at all
is an error. Deliberately not here: cleaning (clean.py), compressed files, remote URLs.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmforge.data.builtin import BUILTIN_NAMES, Document, builtin_documents, stdlib_paths
from lmforge.errors import ConfigError, DataError, FormatError

OnBadRecord = Literal["skip", "fail"]
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
MAX_EXAMPLES = 5  # bad-record messages kept per source for the report
_GLOB_CHARS = set("*?[")


@dataclass
class SourceStats:
    """What reading one source produced, for the report and meta.json."""

    spec: str  # the --source argument as given
    kind: str  # "builtin", "text", "jsonl", "parquet" or "mixed" (a directory of several kinds)
    files: int = 0
    documents: int = 0
    bytes: int = 0  # raw bytes read (for MB/s); UTF-8 bytes of the text for built-ins
    characters: int = 0
    bad_records: int = 0
    replaced: int = 0  # invalid UTF-8 sequences replaced by U+FFFD
    documents_with_replacements: int = 0
    bad_record_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid sequences with U+FFFD; returns (text, number replaced).

    Example: b"caf\\xe9!" -> ("caf\\ufffd!", 1). U+FFFD characters that were validly encoded in the input
    (b"\\xef\\xbf\\xbd") are not counted: the strict decoder would have produced them too.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count(b"\xef\xbf\xbd")


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def resolve_source(spec: str) -> tuple[str, list[Path]]:
    """Check a source before any work starts: (kind, files). Built-ins have no files listed here."""
    if spec in BUILTIN_NAMES:
        return "builtin", []
    if _GLOB_CHARS.intersection(spec):
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError(f"source {spec!r}: the pattern matches no files")
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(
                f"source {spec!r}: no such file or directory (built-in corpora: {', '.join(BUILTIN_NAMES)})"
            )
        if path.is_dir():
            paths = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not paths:
                raise DataError(f"source {spec!r}: the directory contains no files")
        else:
            paths = [path]
    kinds = {_kind_of(p) for p in paths}
    return (kinds.pop() if len(kinds) == 1 else "mixed"), paths


class SourceReader:
    """Streams the documents of one source and fills its `SourceStats` as it goes."""

    def __init__(self, spec: str, *, text_field: str = "text", on_bad_record: OnBadRecord = "skip"):
        if on_bad_record not in ("skip", "fail"):
            raise ConfigError(f"on_bad_record must be 'skip' or 'fail', got {on_bad_record!r}")
        self.spec = spec
        self.text_field = text_field
        self.on_bad_record = on_bad_record
        kind, self.paths = resolve_source(spec)
        self.stats = SourceStats(spec=spec, kind=kind, files=len(self.paths))

    def __iter__(self) -> Iterator[Document]:
        if self.stats.kind == "builtin":
            yield from self._builtin()
        else:
            for path in self.paths:
                kind = _kind_of(path)
                reader = {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text}[kind]
                yield from reader(path)
        if self.stats.characters == 0:
            detail = ""
            if self.stats.bad_records:
                detail = f"; all {self.stats.bad_records:,} records were bad, e.g. "
                detail += self.stats.bad_record_examples[0]
            documents = counted(self.stats.documents, "document")
            raise DataError(f"source {self.spec!r} is empty: {documents} with no text{detail}")

    # -- one reader per kind; each yields Documents and updates self.stats

    def _emit(self, name: str, text: str, replaced: int, n_bytes: int) -> Document:
        s = self.stats
        s.documents += 1
        s.bytes += n_bytes
        s.characters += len(text)
        s.replaced += replaced
        s.documents_with_replacements += replaced > 0
        return Document(name, text)

    def _bad(self, where: str, problem: str) -> None:
        message = f"{where}: {problem}"
        if self.on_bad_record == "fail":
            raise DataError(f"{message} (use --on-bad-record skip to skip such records)")
        self.stats.bad_records += 1
        if len(self.stats.bad_record_examples) < MAX_EXAMPLES:
            self.stats.bad_record_examples.append(message)

    def _builtin(self) -> Iterator[Document]:
        if self.spec == "python-stdlib":
            self.stats.files = len(stdlib_paths())
        for doc in builtin_documents(self.spec):
            yield self._emit(doc.name, doc.text, 0, len(doc.text.encode("utf-8")))

    def _read_bytes(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise FormatError(path, f"cannot read: {e.strerror}") from None

    def _text(self, path: Path) -> Iterator[Document]:
        data = self._read_bytes(path)
        text, replaced = decode_utf8(data)
        yield self._emit(str(path), text, replaced, len(data))

    def _jsonl(self, path: Path) -> Iterator[Document]:
        field_name = self.text_field
        try:
            f = open(path, "rb")
        except OSError as e:
            raise FormatError(path, f"cannot read: {e.strerror}") from None
        with f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                line, replaced = decode_utf8(raw)
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    self._bad(where, f"malformed JSON ({e.msg}; column {e.colno})")
                    continue
                if not isinstance(record, dict):
                    self._bad(where, f"expected a JSON object, got {type(record).__name__}")
                    continue
                if field_name not in record:
                    fields = ", ".join(sorted(record)[:10]) or "none"
                    self._bad(where, f"no field {field_name!r} (fields: {fields}); choose with --text-field")
                    continue
                text = record[field_name]
                if not isinstance(text, str):
                    self._bad(where, f"field {field_name!r} is {type(text).__name__}, not a string")
                    continue
                yield self._emit(where, text, replaced, len(raw))

    def _parquet(self, path: Path) -> Iterator[Document]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise FormatError(path, f"not a readable Parquet file ({e})") from None
        names = parquet.schema_arrow.names
        if self.text_field not in names:
            raise DataError(
                f"{path}: no column {self.text_field!r} (columns: {', '.join(names[:10])}); "
                "choose one with --text-field"
            )
        column_type = parquet.schema_arrow.field(self.text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataError(f"{path}: column {self.text_field!r} has type {column_type}, not string")
        row = 0
        try:
            # One record batch at a time: memory is bounded by the batch, not the file.
            for batch in parquet.iter_batches(batch_size=1024, columns=[self.text_field]):
                for text in batch.column(0).to_pylist():
                    row += 1
                    if text is None:
                        self._bad(f"{path}:row {row}", f"null value in column {self.text_field!r}")
                        continue
                    yield self._emit(f"{path}:row {row}", text, 0, len(text.encode("utf-8")))
        except (pa.ArrowException, OSError) as e:
            raise FormatError(path, f"cannot read Parquet data after row {row} ({e})") from None


def counted(n: int, noun: str) -> str:
    """'1 document', '2 documents', '1,000 documents'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
