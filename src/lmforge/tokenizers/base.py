"""What every tokenizer shares: the `Tokenizer` protocol, our tokenizer.json text, its fingerprint, and
reading training text.

Our `tokenizer.json` (format_version 1) is the `to_dict()` of a tokenizer:
  bpe:  {"format_version": 1, "kind": "bpe", "pattern": {"name": "gpt4", "regex": "..."},
         "byte_ids": [256 ids], "merges": [[left, right], ...], "special_tokens": {"<|endoftext|>": 4095}}
  char: {"format_version": 1, "kind": "char", "chars": "...", "special_tokens": {...}}
  wordpiece: {"format_version": 1, "kind": "wordpiece", "lowercase": true, "strip_accents": true,
         "handle_chinese_chars": true, "max_input_chars_per_word": 100, "special_tokens": {"[PAD]": 0, ...},
         "vocab": ["[PAD]", "[UNK]", ..., "##s", ...]}
A tokenizer's fingerprint is the sha256 of that dict's canonical JSON; datasets and checkpoints store it
to tell whether two tokenizers are the same. Deliberately not here: reading these files back
(formats.py, which knows every kind) and foreign formats (foreign.py). This module imports no tokenizer,
so every tokenizer can import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from lmforge.errors import DataError, TokenizerError
from lmforge.fileio import atomic_write_text
from lmforge.tokenizers.special import AllowedSpecial

FORMAT_VERSION = 1


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of lmforge may use of any tokenizer (BPETokenizer, CharTokenizer, ...).

    Ids run 0..vocab_size-1; `special_tokens` maps each special token's text to its id; `eot_id` is the
    id of "<|endoftext|>" (of "[SEP]" for WordPiece) or None. `to_dict()` is the tokenizer.json content
    (module docstring).
    `encode_ordinary` gives the plain ids of a text for every kind. WordPiece (an encoder's tokenizer)
    departs in `encode` and `encode_batch`, which return BERT model inputs (`WordPieceEncoding`: ids with
    [CLS]/[SEP], token types, attention mask, offsets) rather than a list of ids.
    """

    kind: str  # "bpe", "wordpiece", "char": the "kind" field of tokenizer.json
    vocab_size: int
    special_tokens: dict[str, int]

    @property
    def eot_id(self) -> int | None: ...

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none_raise", num_threads: int = 8
    ) -> list[list[int]]: ...

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def to_dict(self) -> dict: ...

    def fingerprint(self) -> str: ...

    def save(self, path: str | Path) -> None: ...


def fingerprint(d: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a tokenizer's to_dict()."""
    canonical = json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dumps(d: dict) -> str:
    """tokenizer.json text: one top-level key per line and one merge per line, so files diff well and
    are not 50k lines of ints.

    Example: {"kind": "bpe", "merges": [[97, 97], [256, 98]]} ->
    '{\\n  "kind": "bpe",\\n  "merges": [\\n    [97, 97],\\n    [256, 98]\\n  ]\\n}\\n'.
    """
    lines = []
    for key, value in d.items():
        if key == "merges" and value:
            body = ",\n".join("    " + json.dumps(m) for m in value)
            lines.append(f'  "merges": [\n{body}\n  ]')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def save_tokenizer_dict(d: dict, path: str | Path) -> None:
    """Write a tokenizer's to_dict() as tokenizer.json, atomically."""
    atomic_write_text(path, dumps(d))


def read_training_text(item: str | Path) -> str:
    """A training item is text, or a Path to a UTF-8 file."""
    if isinstance(item, str):
        return item
    path = Path(item)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read training file ({e.strerror})") from None


def refuse_special_text(tokenizer: Tokenizer, text: str) -> None:
    """The refusal of `encode_user_text` on its own, for callers that encode by other means (a WordPiece
    model input)."""
    for token in tokenizer.special_tokens:
        if token in text:
            raise TokenizerError(
                f"the text contains the special token {token!r}; pass --allow-special to encode it as that "
                "token (allow_special=True in Python), or remove it"
            )


def encode_user_text(tokenizer: Tokenizer, text: str, *, allow_special: bool = False) -> list[int]:
    """Text a person typed (a prompt, a chat message, `tokenizer encode` input), under one policy for every
    command: special-token text such as "<|endoftext|>" is refused unless `allow_special` (the CLI's
    `--allow-special`), which encodes it as its special id. Never silently either way: a typed control
    token changes what the model sees, so the user says which they mean.
    """
    if allow_special:
        return tokenizer.encode(text, allowed_special="all")
    refuse_special_text(tokenizer, text)
    return tokenizer.encode_ordinary(text)
