"""Reading tokenizers back: `load_tokenizer` for a tokenizer.json of any kind (ours, or a Hugging Face
byte-level BPE one), and `tokenizer_from_dict` for the `to_dict()` that datasets and checkpoints embed.

Our file's layout is described in base.py (which writes it); merge i creates id 256 + i (see bpe.py).
Every way a file can be broken (missing, truncated, not JSON, wrong version or kind, inconsistent
vocabulary) raises `FormatError` naming the file. It dispatches on the tokenizer kind, so it sits above
every tokenizer module (bpe.py and simple.py never import it) and a new kind adds one branch here.
Deliberately not here: GPT-2, tiktoken and Hugging Face files (foreign.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, FormatError, TokenizerError
from lmforge.fileio import read_json
from lmforge.tokenizers.base import FORMAT_VERSION, Tokenizer
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.foreign import from_hf_dict
from lmforge.tokenizers.simple import CharTokenizer
from lmforge.tokenizers.wordpiece import WordPieceTokenizer

WHAT = "tokenizer file"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json written by `save()`, of any kind, or a Hugging Face byte-level BPE or
    WordPiece one.

    The two are told apart by their fields: ours has "format_version" and "kind", HF's has "model".
    """
    d = read_json(path, what=WHAT)
    if isinstance(d, dict) and "model" in d and "kind" not in d and "format_version" not in d:
        if isinstance(d["model"], dict) and d["model"].get("type") == "WordPiece":
            return WordPieceTokenizer.from_hf_dict(d, source=path)
        return from_hf_dict(d, source=path)
    return tokenizer_from_dict(d, source=path)


def _field(d: dict, name: str, kind: type | tuple[type, ...], source: str | Path) -> Any:
    if name not in d:
        raise FormatError(source, f"{WHAT} has no {name!r} field")
    if not isinstance(d[name], kind):
        raise FormatError(source, f"field {name!r} has the wrong type ({type(d[name]).__name__})")
    return d[name]


def tokenizer_from_dict(d: Any, *, source: str | Path = "<tokenizer dict>") -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output (e.g. embedded in a dataset or checkpoint meta.json)."""
    if not isinstance(d, dict):
        raise FormatError(source, f"{WHAT} must hold a JSON object, found {type(d).__name__}")
    version = _field(d, "format_version", int, source)
    if version != FORMAT_VERSION:
        raise FormatError(
            source, f"format_version {version} is not supported (this lmforge reads version {FORMAT_VERSION})"
        )
    kind = _field(d, "kind", str, source)
    specials = _field(d, "special_tokens", dict, source)
    try:
        if kind == "char":
            chars = _field(d, "chars", str, source)
            ordered = sorted(specials, key=specials.__getitem__)
            tokenizer = CharTokenizer(chars, special_tokens=ordered)
            if tokenizer.special_tokens != specials:
                raise FormatError(source, "special token ids must follow the characters, in order")
            return tokenizer
        if kind == "wordpiece":
            return WordPieceTokenizer.from_dict(d, source=source)
        if kind == "bpe":
            pattern = _field(d, "pattern", dict, source)
            merges = _field(d, "merges", list, source)
            if not all(
                isinstance(m, list) and len(m) == 2 and all(type(i) is int for i in m) for m in merges
            ):
                raise FormatError(
                    source, "field 'merges' must be a list of [left_id, right_id] integer pairs"
                )
            return BPETokenizer(
                merges=[tuple(m) for m in merges],
                pattern=_field(pattern, "name", str, source),
                pattern_regex=_field(pattern, "regex", str, source),
                byte_ids=_field(d, "byte_ids", list, source),
                special_tokens=specials,
            )
    except (TokenizerError, ConfigError, TypeError) as e:
        raise FormatError(source, f"inconsistent tokenizer: {e}") from None
    raise FormatError(source, f"unknown tokenizer kind {kind!r} (expected 'bpe', 'wordpiece' or 'char')")
