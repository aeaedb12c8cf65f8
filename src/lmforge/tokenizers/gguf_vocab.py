"""A GGUF file's tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys) <-> an lmforge `BPETokenizer`.

Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is understood. Its metadata is GPT-2's
vocabulary in Hugging Face's spelling: `tokens` (id -> token string, bytes spelt with GPT-2's
byte-to-unicode map), `merges` ("left right", best first), `token_type` (1 normal, 3 control, 4 user
defined, 5 unused, ...), the bos/eos/pad ids, and `pre`, the name of llama.cpp's split pattern. Control
and user-defined tokens become lmforge special tokens (matched whole only when allowed, as lmforge
always does); unused ones (padding rows) are left out. The ids stay the file's: SmolLM2 puts its 17
control tokens at 0..16, then its bytes, then its merges, which `BPETokenizer` accepts.

`pre` names are mapped to a split regex that gives llama.cpp's chunks (llama.cpp applies several
regexes one after the other; one regex here does the same):
  gpt-2                 lmforge's `gpt2` pattern
  smollm                single digits first (llama.cpp's "\\p{N}" step, HF's Digits(individual_digits)),
                        then GPT-2's pattern, in which a run of spaces also ends before a digit
  llama-bpe (llama3)    Llama 3's pattern (cl100k-like: contractions, letters, 1-3 digits)
An unknown `pre` is a FormatError listing these. Writing maps lmforge's `gpt2` pattern to "gpt-2", the
patterns above to their names, and `gpt4` (cl100k) to "llama-bpe", its nearest llama.cpp relative;
`code` has none.

Deliberately not here: reading the file (`lmforge.models.gguf`), SentencePiece/Unigram vocabularies
(`tokenizer.ggml.model` "llama", "t5"), chat templates (`lmforge.inference.chat_template`).
References: llama.cpp `src/llama-vocab.cpp` (pre-tokenizer regexes), `gguf-py/gguf/constants.py`
(key names, token types), transformers `integrations/gguf/gguf_tokenizer_mapping.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, FormatError, TokenizerError
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.foreign import bytes_to_unicode
from lmforge.tokenizers.pretokenize import CUSTOM

# llama.cpp token types (gguf-py's TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

SMOLLM_REGEX = r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?![^\s\p{N}])|\s"""
LLAMA3_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# tokenizer.ggml.pre -> (lmforge pattern name, regex for a custom pattern or None)
PRE_PATTERNS: dict[str, tuple[str, str | None]] = {
    "gpt-2": ("gpt2", None),
    "smollm": (CUSTOM, SMOLLM_REGEX),
    "llama-bpe": (CUSTOM, LLAMA3_REGEX),
    "llama3": (CUSTOM, LLAMA3_REGEX),
    "llama-v3": (CUSTOM, LLAMA3_REGEX),
}

# special-token roles kept in a checkpoint's meta.json, and their GGUF id keys
ROLES = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id"}


def _get(metadata: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str | Path) -> Any:
    full = f"tokenizer.ggml.{key}"
    if full not in metadata:
        raise FormatError(source, f"GGUF tokenizer: missing key {full!r}")
    value = metadata[full]
    if not isinstance(value, kind):
        raise FormatError(source, f"GGUF tokenizer: {full!r} has the wrong type ({type(value).__name__})")
    return value


def tokenizer_from_gguf(
    metadata: dict[str, Any], *, source: str | Path = "<GGUF metadata>"
) -> tuple[BPETokenizer, dict[str, str]]:
    """(tokenizer, roles) of a GGUF file's metadata (key -> value); roles maps "bos_token", "eos_token",
    "pad_token" to the token strings the file names (absent ones left out).

    FormatError naming `source` for a vocabulary that is not byte-level BPE, an unknown `pre`, a missing
    key, or ids not laid out as [control tokens][bytes][merge i -> first merge id + i][control tokens].
    """
    model = _get(metadata, "model", str, source)
    if model != "gpt2":
        raise FormatError(
            source,
            f"GGUF tokenizer.ggml.model {model!r} is not supported (lmforge reads 'gpt2', byte-level BPE)",
        )
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_PATTERNS:
        raise FormatError(
            source,
            f"GGUF tokenizer.ggml.pre {pre!r} (llama.cpp's split pattern) is not supported; lmforge knows "
            f"{', '.join(PRE_PATTERNS)}",
        )
    tokens: Sequence[str] = _get(metadata, "tokens", list, source)
    raw_merges: Sequence[str] = _get(metadata, "merges", list, source)
    types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise FormatError(source, f"GGUF tokenizer: {len(types)} token types for {len(tokens)} tokens")
    vocab: dict[str, int] = {}
    specials: dict[str, int] = {}
    for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (CONTROL, USER_DEFINED):
            specials[token] = token_id
        elif kind == NORMAL:
            vocab[token] = token_id
        elif kind != UNUSED:
            raise FormatError(source, f"GGUF tokenizer: token {token_id} ({token!r}) has type {kind}, "
                              "which byte-level BPE does not use")  # fmt: skip

    to_unicode = bytes_to_unicode()
    byte_ids = [vocab.get(to_unicode[byte]) for byte in range(256)]
    first_merge_id = max((i for i in byte_ids if i is not None), default=-1) + 1
    merges = []
    for i, merge in enumerate(raw_merges):
        parts = merge.split(" ") if isinstance(merge, str) else None
        if parts is None or len(parts) != 2 or not all(part in vocab for part in parts):
            raise FormatError(source, f"GGUF tokenizer: merge {i} is not two known tokens: {merge!r}")
        merged = vocab.get(parts[0] + parts[1])
        if merged != first_merge_id + i:
            raise FormatError(
                source,
                f"GGUF tokenizer: merge {i} ({merge!r}) makes id {merged}, not {first_merge_id + i}: lmforge "
                "needs the merges' tokens in merge order right after the bytes",
            )
        merges.append((vocab[parts[0]], vocab[parts[1]]))
    if len(vocab) != sum(i is not None for i in byte_ids) + len(merges):
        raise FormatError(
            source, "GGUF tokenizer: some normal tokens are neither single bytes nor made by a merge"
        )
    name, regex_string = PRE_PATTERNS[pre]
    try:
        tokenizer = BPETokenizer(
            merges=merges,
            pattern=name,
            pattern_regex=regex_string,
            byte_ids=byte_ids,
            special_tokens=specials,
        )
    except (TokenizerError, ConfigError) as e:
        raise FormatError(source, f"GGUF tokenizer: inconsistent vocabulary: {e}") from None
    roles = {}
    for role, key in ROLES.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            if not (isinstance(token_id, int) and 0 <= token_id < len(tokens)):
                raise FormatError(source, f"GGUF tokenizer.ggml.{key} = {token_id!r} is not a token id")
            roles[role] = tokens[token_id]
    return tokenizer, roles


def gguf_tokenizer_metadata(
    tokenizer: BPETokenizer, *, vocab_size: int, roles: dict[str, str] | None = None
) -> dict[str, Any]:
    """The `tokenizer.ggml.*` metadata (key -> value) of `tokenizer` for a model of `vocab_size` rows.

    Ids the tokenizer does not use (a vocabulary padded to a round size) become "[PAD<id>]" tokens of
    type unused, since llama.cpp needs one token per row. `roles` (see `tokenizer_from_gguf`) name the
    bos/eos/pad tokens; without them the end-of-text token, if any, is both bos and eos (as GPT-2's).
    """
    pre = {"gpt2": "gpt-2", "gpt4": "llama-bpe"}.get(tokenizer.pattern_name)
    for name, (_, regex_string) in PRE_PATTERNS.items():
        if pre is None and regex_string == tokenizer.pattern:
            pre = name
    if pre is None:
        raise ConfigError(
            f"llama.cpp has no split pattern like lmforge's {tokenizer.pattern_name!r}; GGUF export needs a "
            "tokenizer with the gpt2 or gpt4 pattern"
        )
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's {vocab_size}")
    to_unicode = bytes_to_unicode()
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for token_id, data in enumerate(tokenizer.token_bytes):
        if data:
            tokens[token_id], types[token_id] = "".join(to_unicode[b] for b in data), NORMAL
    for token, token_id in tokenizer.special_tokens.items():
        tokens[token_id], types[token_id] = token, CONTROL
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [f"{tokens[left]} {tokens[right]}" for left, right in tokenizer.merges],
    }
    if roles is None:
        eot = tokenizer.eot_id
        roles = {} if eot is None else {"bos_token": tokens[eot], "eos_token": tokens[eot]}
    for role, token in roles.items():
        if token not in tokenizer.special_tokens:
            raise ConfigError(f"{role} {token!r} is not one of the tokenizer's special tokens")
        metadata[f"tokenizer.ggml.{ROLES[role]}"] = tokenizer.special_tokens[token]
    return metadata
