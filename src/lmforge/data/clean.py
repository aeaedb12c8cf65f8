"""Cleaning one document: normalise its text, then decide whether it passes the quality filters.

Normalisation, in order: Unicode NFC (so "é" is one code point however it was typed), newlines
("\\r\\n" and lone "\\r" become "\\n"), removal of a leading byte-order mark and of control characters
(Unicode category Cc except "\\t" and "\\n"), optional lowercasing. Nothing else is touched: indentation,
trailing spaces and blank lines stay, because code is a corpus too.

The quality filters are the cheap heuristics of the Gopher rules (Rae et al. 2021, appendix A) and
C4, each with a threshold and a name under which it is counted (`FILTER_NAMES`); a document is counted
under the first filter it fails. Deliberately not here: language identification, perplexity or model
based filters, and deduplication (dedup.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from lmforge.errors import ConfigError

# Cc is U+0000-U+001F and U+007F-U+009F; keep tab and newline ("\r" is gone by then).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"\r\n?")
_NON_LETTERS = re.compile(r"[\W\d_]+")  # \w minus digits and '_' leaves letters
_NON_SPACE = re.compile(r"\S+")

FILTER_NAMES = ("empty", "min_chars", "max_chars", "alpha_fraction", "dup_line_fraction", "max_line_length")


@dataclass(frozen=True)
class CleanConfig:
    """Normalisation options and quality-filter thresholds (a filter set to None is off)."""

    lowercase: bool = False  # lowercase everything (after NFC)
    min_chars: int = 1  # drop documents shorter than this many characters after cleaning
    max_chars: int | None = None  # drop documents longer than this (None: no limit)
    min_alpha_fraction: float | None = None  # drop if letters / non-whitespace characters is below this
    max_dup_line_fraction: float | None = None  # drop if more non-blank lines than this repeat an earlier one
    max_line_length: int | None = None  # drop documents with a line longer than this many characters

    def __post_init__(self):
        if self.min_chars < 1:
            raise ConfigError(f"min_chars must be >= 1 (empty ones are always dropped), got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ConfigError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        for name in ("min_alpha_fraction", "max_dup_line_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.max_line_length is not None and self.max_line_length < 1:
            raise ConfigError(f"max_line_length must be >= 1, got {self.max_line_length}")


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """Apply the normalisation steps above. Example: "Cafe\\u0301\\r\\nok\\x07" -> "Café\\nok"."""
    if not unicodedata.is_normalized("NFC", text):  # the check is much cheaper than normalising
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text.removeprefix("\ufeff"))
    return text.lower() if lowercase else text


def alpha_fraction(text: str) -> float:
    """Letters over non-whitespace characters. Example: "ab 12!" -> 2 letters / 5 characters = 0.4."""
    non_space = sum(map(len, _NON_SPACE.findall(text)))
    letters = len(_NON_LETTERS.sub("", text))
    return letters / non_space if non_space else 0.0


def dup_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line (compared after stripping).

    Example: "a\\nb\\na\\n\\na" -> lines a, b, a, a: two repeats of 4 lines = 0.5.
    """
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def failed_filter(text: str, config: CleanConfig) -> str | None:
    """The name of the first quality filter the (already normalised) text fails, or None if it passes."""
    if not text.strip():
        return "empty"
    if len(text) < config.min_chars:
        return "min_chars"
    if config.max_chars is not None and len(text) > config.max_chars:
        return "max_chars"
    if config.min_alpha_fraction is not None and alpha_fraction(text) < config.min_alpha_fraction:
        return "alpha_fraction"
    if config.max_dup_line_fraction is not None and dup_line_fraction(text) > config.max_dup_line_fraction:
        return "dup_line_fraction"
    if config.max_line_length is not None and max(map(len, text.split("\n"))) > config.max_line_length:
        return "max_line_length"
    return None
