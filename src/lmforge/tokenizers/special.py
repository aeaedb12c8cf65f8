"""Special tokens (`<|endoftext|>` and friends): which ones an `encode` call may produce, tiktoken-style.

`allowed_special` is "none_raise" (the default: special-token text in the input raises
`TokenizerError` naming the token, so user text can never smuggle in a control token), "all", or a set
of token strings (any other special token found in the text raises). `encode_ordinary` bypasses all of
this and encodes special-token text as plain text. Deliberately no chat templates here yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Set

import regex

from lmforge.errors import TokenizerError

AllowedSpecial = str | Set[str]

ENDOFTEXT = "<|endoftext|>"


def resolve_allowed(allowed_special: AllowedSpecial, special_tokens: dict[str, int]) -> frozenset[str]:
    """The set of special tokens an encode call may emit; unknown names are an error."""
    if allowed_special == "all":
        return frozenset(special_tokens)
    if allowed_special == "none_raise":
        return frozenset()
    if isinstance(allowed_special, str) or not isinstance(allowed_special, Set):
        raise TokenizerError(
            f"allowed_special must be 'none_raise', 'all' or a set of token strings, got {allowed_special!r}"
        )
    unknown = sorted(set(allowed_special) - set(special_tokens))
    if unknown:
        raise TokenizerError(
            f"allowed_special names {unknown[0]!r}, which is not a special token of this tokenizer "
            f"(it has: {', '.join(special_tokens) or 'none'})"
        )
    return frozenset(allowed_special)


def check_disallowed(text: str, special_tokens: dict[str, int], allowed: frozenset[str]) -> None:
    """Raise if `text` contains a special token that this call may not produce."""
    for token in special_tokens:
        if token not in allowed and token in text:
            raise TokenizerError(
                f"the text contains the special token {token!r}, which this call does not allow; pass "
                f"allowed_special={{{token!r}}} (or 'all') to encode it as one special id, or use "
                "encode_ordinary() to encode it as plain text"
            )


def split_on_special(text: str, allowed: frozenset[str]) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_special) in order.

    Example with {"<|e|>"}: "a<|e|>b" -> ("a", False), ("<|e|>", True), ("b", False).
    """
    if not allowed:
        yield text, False
        return
    # Longest first, so that a special token that is a prefix of another cannot win.
    pattern = regex.compile("|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True)))
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            yield text[start : match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def without_surrogates(text: str) -> str:
    """Replace lone surrogates (which have no UTF-8 form) by U+FFFD, exactly as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
