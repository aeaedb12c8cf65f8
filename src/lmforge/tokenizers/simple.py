"""A character-level tokenizer for tiny experiments (the `Tokenizer` protocol of base.py, like BPE).

One id per distinct character seen in training (sorted by code point, so the ids do not depend on
corpus order), then the special tokens. Encoding a character outside the vocabulary raises
`TokenizerError` naming it: there is no unknown-token fallback, because silently dropping text would
corrupt bits-per-byte figures. Deliberately no byte fallback and no normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.tokenizers.base import FORMAT_VERSION, fingerprint, read_training_text, save_tokenizer_dict
from lmforge.tokenizers.special import (
    ENDOFTEXT,
    AllowedSpecial,
    check_disallowed,
    resolve_allowed,
    split_on_special,
)


class CharTokenizer:
    """Example: CharTokenizer("abc").encode("cab") -> [2, 0, 1]; the special "<|endoftext|>" gets id 3."""

    kind = "char"

    def __init__(self, chars: str, *, special_tokens: Sequence[str] = (ENDOFTEXT,)):
        if len(set(chars)) != len(chars):
            raise ConfigError("CharTokenizer: the characters of the vocabulary must be distinct")
        specials = tuple(special_tokens)
        if len(set(specials)) != len(specials) or not all(isinstance(t, str) and t for t in specials):
            raise ConfigError(f"special_tokens must be distinct non-empty strings, got {specials!r}")
        self.chars = chars
        self._char_ids = {c: i for i, c in enumerate(chars)}
        self.special_tokens: dict[str, int] = {t: len(chars) + i for i, t in enumerate(specials)}
        self._id_to_text = [*chars, *specials]
        self.vocab_size: int = len(self._id_to_text)

    @classmethod
    def train(
        cls, texts: Iterable[str | Path], *, special_tokens: Sequence[str] = (ENDOFTEXT,)
    ) -> CharTokenizer:
        """The vocabulary is every character of the texts (strings, or Paths of UTF-8 files), special-token
        text excluded."""
        seen: set[str] = set()
        for item in texts:
            text = read_training_text(item)
            for token in special_tokens:
                text = text.replace(token, "")
            seen.update(text)
        if not seen:
            raise DataError("the training corpus is empty (no characters to build a vocabulary from)")
        return cls("".join(sorted(seen)), special_tokens=special_tokens)

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self._char_ids[c] for c in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this character vocabulary") from None

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        check_disallowed(text, self.special_tokens, allowed)
        ids: list[int] = []
        for piece, is_special in split_on_special(text, allowed):
            ids.extend([self.special_tokens[piece]] if is_special else self.encode_ordinary(piece))
        return ids

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none_raise", num_threads: int = 8
    ) -> list[list[int]]:
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(
                f"token id {bad} is not in this tokenizer's vocabulary (size {self.vocab_size})"
            )
        return "".join([self._id_to_text[i] for i in ids])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "chars": self.chars,
            "special_tokens": dict(self.special_tokens),
        }

    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    def save(self, path: str | Path) -> None:
        save_tokenizer_dict(self.to_dict(), path)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"
