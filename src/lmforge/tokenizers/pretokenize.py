"""Named regex split patterns: how text is cut into chunks before byte-level BPE sees it.

BPE never merges across a chunk boundary, so the pattern decides what a token can be: with `gpt2`,
" the" and "the" are different chunks and "don't" splits before "'t"; with `gpt4` digits come in
groups of at most three and a space sticks to the following word but not to punctuation runs.

- `gpt2`: OpenAI's GPT-2 pattern, in tiktoken's faster but equivalent form (possessive quantifiers).
- `gpt4`: the cl100k_base pattern (case-insensitive contractions, 1-3 digit numbers, newlines kept
  apart from other whitespace).
- `code`: our choice for source code: `gpt4` except that a word is an identifier — letters, digits and
  underscores after a first letter or underscore, so `max_len2` and `__init__` are single chunks and
  merges can learn whole names. Everything else (numbers, operators, indentation runs) is as in `gpt4`.

Every pattern is written so that Python's `regex` module (our reference encoder and trainer) and
tiktoken's Rust `fancy-regex` (the fast path) split identically; the parity tests check that on
real text. Deliberately no Unicode normalisation: byte-level BPE is lossless without it.
"""

from __future__ import annotations

import functools

import regex

from lmforge.errors import ConfigError

PATTERNS: dict[str, str] = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "code": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}_]?+[\p{L}_][\p{L}\p{N}_]*+|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}_]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
}

# Name used in tokenizer.json for a pattern that came from a foreign file and has no name of ours.
CUSTOM = "custom"


def resolve_pattern(name: str, regex_string: str | None = None) -> tuple[str, str]:
    """(name, regex) for a named pattern, or for a custom regex given explicitly.

    Example: resolve_pattern("gpt2") -> ("gpt2", PATTERNS["gpt2"]);
    resolve_pattern("custom", r"\\S+|\\s+") -> ("custom", r"\\S+|\\s+").
    """
    if regex_string is not None and name not in PATTERNS:
        # compiling fails early on a broken regex; an empty match would cut text into empty chunks
        if compile_pattern(regex_string).match("") is not None:
            raise ConfigError(
                f"split pattern regex {regex_string!r} matches the empty string, so it would cut text into "
                "empty chunks; make every alternative consume at least one character"
            )
        return name, regex_string
    if name not in PATTERNS:
        raise ConfigError(f"unknown split pattern {name!r}; choose one of: {', '.join(PATTERNS)}")
    if regex_string is not None and regex_string != PATTERNS[name]:
        raise ConfigError(f"split pattern {name!r} does not match its stored regex; name it {CUSTOM!r}")
    return name, PATTERNS[name]


@functools.lru_cache(maxsize=16)
def compile_pattern(regex_string: str) -> regex.Pattern:
    try:
        return regex.compile(regex_string)
    except regex.error as e:
        raise ConfigError(f"invalid split pattern regex {regex_string!r}: {e}") from None


def split_text(text: str, regex_string: str) -> list[str]:
    """Cut text into chunks. Example (gpt2): "Hello world!!" -> ["Hello", " world", "!!"]."""
    return compile_pattern(regex_string).findall(text)
