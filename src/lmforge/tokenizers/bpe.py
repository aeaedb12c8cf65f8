"""Byte-level BPE: an efficient trainer, a readable pure-Python reference encoder and a tiktoken fast path.

Token ids: the 256 single bytes first (`byte_ids[b]` is the id of byte b; the identity for tokenizers
we train, GPT-2's own order for GPT-2), then one id per merge in the order the merges were learned
(merge i creates id 256 + i), then the special tokens. Imported vocabularies may shift that layout:
some (SmolLM2's) put their special tokens first and lack the bytes that never occur in their training
text, so `byte_ids[b]` may be None and merge i creates id `first_merge_id + i`, one past the last byte
id; ids below it that are no byte must be special tokens. Text with a byte the vocabulary lacks cannot
be encoded (TokenizerError). A merge's id is also its priority, so
"apply the earliest-learned merge first" (the reference encoder, GPT-2's original `bpe()`) and
"merge the adjacent pair whose concatenated bytes have the lowest rank" (tiktoken) rank candidate
merges identically. They could still disagree if two ids had the same bytes (tiktoken would see only
one of them), so the trainer never creates a token whose bytes already exist and `BPETokenizer`
refuses such a vocabulary; `tests/test_tokenizers_bpe.py` and `tests/parity/` check on real text
(Shakespeare and stdlib, trained vocabularies and GPT-2) that both encoders give identical ids.

Training (`train_merges`), the algorithm HF `tokenizers` and rustbpe use:
1. pre-tokenize every text with the split pattern and count each distinct chunk once (multiprocessing
   for large corpora): a 31.5 MB corpus becomes ~120k distinct chunks with their frequencies;
2. count adjacent pairs over the distinct chunks, weighted by frequency, and index which chunks
   contain each pair;
3. repeatedly pop the most frequent pair from a max-heap with lazy invalidation (an entry whose count
   is stale is re-pushed with its current count), rewrite only the chunks that contain it, and update
   the pair counts of those chunks.
Tie-break: among pairs with equal counts, the smallest (left id, right id) wins — deterministic and
independent of input order. A pair whose concatenation is already a token (e.g. "a"+"bc" after "ab"+"c")
is skipped for good and the next pair is taken. Training stops early when no pair occurs
`min_frequency` times.

Decoding ids that split a UTF-8 character yields U+FFFD for the incomplete bytes (`errors="replace"`);
`decode_bytes` gives the exact bytes. Lone surrogates in input text (which have no UTF-8 form) are
encoded as U+FFFD, exactly as tiktoken does, so `decode(encode(s)) == s` for every string without
lone surrogates. Deliberately not here: reading tokenizer files (formats.py), GPT-2 / tiktoken / Hugging
Face files (foreign.py), split patterns (pretokenize.py).

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (byte-level BPE, GPT-2's
encoder.py); tiktoken's `_educational.py`; Karpathy's minbpe.
"""

from __future__ import annotations

import heapq
import itertools
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.tokenizers.base import FORMAT_VERSION, fingerprint, read_training_text, save_tokenizer_dict
from lmforge.tokenizers.pretokenize import compile_pattern, resolve_pattern
from lmforge.tokenizers.special import (
    ENDOFTEXT,
    AllowedSpecial,
    check_disallowed,
    resolve_allowed,
    split_on_special,
    without_surrogates,
)

# Pair (left, right) packed into one int for the trainer's dicts: cheaper to hash than a tuple.
_SHIFT = 21
_MASK = (1 << _SHIFT) - 1
_MAX_VOCAB = 1 << _SHIFT

# Pre-tokenization work is shipped to worker processes in batches of about this many characters.
_BATCH_CHARS = 4_000_000


# ---------------------------------------------------------------------------------------------------
# Training


def _count_batch(texts: list[str], regex_string: str, special_tokens: tuple[str, ...]) -> Counter[str]:
    """Chunk counts of a batch of texts. Special-token text is cut out: merges never reach into it.

    Example (gpt2): ["a cat, a cat"] -> {"a": 1, " cat": 2, ",": 1, " a": 1}.
    """
    pattern = compile_pattern(regex_string)
    specials = frozenset(t for t in special_tokens if any(t in text for text in texts))
    counts: Counter[str] = Counter()
    for text in texts:
        for piece, is_special in split_on_special(without_surrogates(text), specials):
            if not is_special:
                counts.update(pattern.findall(piece))
    return counts


def _batches(texts: Iterable[str | Path]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for item in texts:
        text = read_training_text(item)
        batch.append(text)
        size += len(text)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_chunks(
    texts: Iterable[str | Path],
    regex_string: str,
    *,
    special_tokens: Sequence[str] = (),
    num_workers: int | None = None,
) -> Counter[str]:
    """Count every distinct pre-tokenized chunk of the corpus; uses worker processes for large corpora."""
    specials = tuple(special_tokens)
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 8)
    batches = _batches(texts)
    first = next(batches, None)
    second = next(batches, None)
    if second is None or workers <= 1:  # small corpus: starting processes would cost more than it saves
        counts: Counter[str] = Counter()
        for batch in itertools.chain([first] if first else [], [second] if second else [], batches):
            counts.update(_count_batch(batch, regex_string, specials))
        return counts

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    counts = Counter()
    # fork where available: "spawn" would re-import the caller's __main__, which breaks scripts without an
    # `if __name__ == "__main__"` guard. The children only run regex and Counter, so no lock they need
    # can be held by another thread of the parent at fork time.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        pending = [pool.submit(_count_batch, b, regex_string, specials) for b in (first, second)]
        for batch in batches:
            if len(pending) >= 2 * workers:  # bound the text in flight
                counts.update(pending.pop(0).result())
            pending.append(pool.submit(_count_batch, batch, regex_string, specials))
        for future in pending:
            counts.update(future.result())
    return counts


def train_merges(
    chunk_counts: dict[str, int], *, n_merges: int, min_frequency: int = 2, progress: bool = True
) -> list[tuple[int, int]]:
    """Learn up to `n_merges` merges from chunk frequencies; merge i creates token id 256 + i.

    Example: {"aaabdaaabac": 1}, n_merges=3 -> [(97, 97), (97, 98), (256, 257)]: "aa" -> 256 (Z),
    "ab" -> 257 (Y), "aaab" = Z+Y -> 258 (X), the classic Wikipedia example with byte-level ids.
    """
    from lmforge.progress import progress_bar

    words: list[list[int]] = []  # each distinct chunk as a list of token ids
    freqs: list[int] = []  # how often that chunk occurs in the corpus
    for chunk, freq in chunk_counts.items():
        data = chunk.encode("utf-8")
        if len(data) >= 2:  # a single byte has no pair to merge
            words.append(list(data))
            freqs.append(freq)

    pair_counts: defaultdict[int, int] = defaultdict(int)  # packed pair -> frequency-weighted count
    where: defaultdict[int, set[int]] = defaultdict(set)  # packed pair -> indices of words that had it
    for index, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for left, right in itertools.pairwise(word):
            key = left << _SHIFT | right
            pair_counts[key] += freq
            where[key].add(index)
    # Max-heap via negated counts; for equal counts the smaller packed key, i.e. the smaller
    # (left, right), pops first: that is the documented tie-break.
    heap = [(-count, key) for key, count in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([b]) for b in range(256)]
    known = set(token_bytes)
    merges: list[tuple[int, int]] = []
    bar = progress_bar(total=n_merges, unit="merge", desc="BPE merges", disable=not progress, mininterval=0.5)
    while len(merges) < n_merges and heap:
        negative_count, key = heapq.heappop(heap)
        count = pair_counts[key]
        if -negative_count != count:  # stale entry: counts only go down between pushes
            if count > 0:
                heapq.heappush(heap, (-count, key))
            continue
        if count < min_frequency:
            break
        left, right = key >> _SHIFT, key & _MASK
        new_bytes = token_bytes[left] + token_bytes[right]
        if new_bytes in known:  # same bytes as an existing token: skip, see the module docstring
            continue
        new_id = 256 + len(merges)
        merges.append((left, right))
        token_bytes.append(new_bytes)
        known.add(new_bytes)

        grown: set[int] = set()  # pairs containing new_id, whose counts went up
        for index in where.pop(key):
            word = words[index]
            positions = _find_pair(word, left, right)
            if not positions:  # stale index: an earlier merge already consumed the pair in this word
                continue
            merged = _replace_at(word, positions, new_id)
            freq = freqs[index]
            # Only the pairs next to a merge site change: (x, left) and (right, y) disappear, (x, new)
            # and (new, y) appear. `last` skips a pair shared by two adjacent sites ("a b a b").
            last = -1
            for p in positions:
                for r in (p - 1, p + 1):
                    if r > last and 0 <= r < len(word) - 1:
                        pair_counts[word[r] << _SHIFT | word[r + 1]] -= freq
                        last = r
            last = -1
            for j, p in enumerate(positions):
                q = p - j  # where this site's new_id sits in the merged word
                for r in (q - 1, q):
                    if r > last and 0 <= r < len(merged) - 1:
                        pair_key = merged[r] << _SHIFT | merged[r + 1]
                        pair_counts[pair_key] += freq
                        where[pair_key].add(index)
                        grown.add(pair_key)
                        last = r
            words[index] = merged
        del pair_counts[key]
        for pair_key in grown:
            heapq.heappush(heap, (-pair_counts[pair_key], pair_key))
        bar.update(1)
    bar.close()
    return merges


def _find_pair(word: list[int], left: int, right: int) -> list[int]:
    """Start positions of the non-overlapping (left, right) pairs, left to right.

    Example: [1, 1, 1, 2, 1, 1], (1, 1) -> [0, 4]. `list.index` does the scanning in C.
    """
    positions = []
    last = len(word) - 1
    try:
        i = word.index(left)
        while i < last:
            if word[i + 1] == right:
                positions.append(i)
                i = word.index(left, i + 2)
            else:
                i = word.index(left, i + 1)
    except ValueError:  # no further `left`
        pass
    return positions


def _replace_at(word: list[int], positions: list[int], new_id: int) -> list[int]:
    """Example: [5, 1, 2, 1, 2], positions [1, 3], new_id 9 -> [5, 9, 9]."""
    merged: list[int] = []
    start = 0
    for p in positions:
        merged.extend(word[start:p])
        merged.append(new_id)
        start = p + 2
    merged.extend(word[start:])
    return merged


def _merge_word(word: list[int], left: int, right: int, new_id: int) -> list[int]:
    """Replace every non-overlapping (left, right), left to right. Example: [1, 1, 1], (1, 1), 9 -> [9, 1]."""
    return _replace_at(word, _find_pair(word, left, right), new_id)


# ---------------------------------------------------------------------------------------------------
# The tokenizer


class BPETokenizer:
    """A byte-level BPE tokenizer. Encodes through tiktoken; `encode_reference` is the readable version."""

    kind = "bpe"

    def __init__(
        self,
        *,
        merges: Sequence[tuple[int, int]],
        pattern: str = "gpt4",
        pattern_regex: str | None = None,
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int] | None = None,
    ):
        """Build from merges (merge i creates id `first_merge_id` + i, 256 when the bytes are 0..255) and
        special tokens (name -> id after the merges, or in the ids below the merges no byte uses).

        Raises TokenizerError for an inconsistent vocabulary (loaders turn it into a FormatError).
        """
        self.pattern_name, self.pattern = resolve_pattern(pattern, pattern_regex)
        self.byte_ids: tuple[int | None, ...] = tuple(range(256)) if byte_ids is None else tuple(byte_ids)
        present = [i for i in self.byte_ids if i is not None]
        if (
            len(self.byte_ids) != 256
            or any(type(i) is not int or i < 0 for i in present)
            or len(set(present)) != len(present)
            or not present
        ):
            raise TokenizerError(
                "byte_ids must give 256 distinct non-negative ids (or None for an absent byte)"
            )
        self.first_merge_id = max(present) + 1  # 256 for the usual layout
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        n_tokens = self.first_merge_id + len(self.merges)
        if n_tokens > _MAX_VOCAB:
            raise TokenizerError(f"too many merges ({len(self.merges)}); at most {_MAX_VOCAB - 256}")

        # token_bytes[id] for ids below n_tokens (b"" for a special token below the merges); a merge may
        # only use ids that exist before it.
        self.token_bytes: list[bytes] = [b""] * self.first_merge_id
        for byte, token_id in enumerate(self.byte_ids):
            if token_id is not None:
                self.token_bytes[token_id] = bytes([byte])
        self._merge_ids: dict[tuple[int, int], int] = {}  # (left id, right id) -> merged id (= priority)
        for new_id, (left, right) in enumerate(self.merges, start=self.first_merge_id):
            if not (
                0 <= left < new_id
                and 0 <= right < new_id
                and self.token_bytes[left]
                and self.token_bytes[right]
            ):
                raise TokenizerError(
                    f"merge {new_id - self.first_merge_id} ({left}, {right}) uses an id not defined before it"
                )
            self._merge_ids[(left, right)] = new_id
            self.token_bytes.append(self.token_bytes[left] + self.token_bytes[right])
        if len(set(self.token_bytes) - {b""}) != len(present) + len(self.merges):
            raise TokenizerError(
                "two tokens have the same bytes; such a vocabulary has no unique BPE encoding"
            )

        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        ids = list(self.special_tokens.values())
        holes = {i for i in range(self.first_merge_id) if not self.token_bytes[i]}
        if len(set(ids)) != len(ids) or any(
            not isinstance(i, int) or (i < n_tokens and i not in holes) for i in ids
        ):
            raise TokenizerError(
                f"special token ids must be distinct integers >= {n_tokens} (after the merges) or ids "
                "below the merges that no byte uses"
            )
        if holes - set(ids):
            raise TokenizerError(f"id {min(holes - set(ids))} is neither a byte nor a special token")
        if any(not isinstance(t, str) or not t for t in self.special_tokens):
            raise TokenizerError("special tokens must be non-empty strings")
        # the bytes that have a token, when some have none (None for the usual layout: all 256 have one)
        absent = any(i is None for i in self.byte_ids)
        self._present_bytes = (
            bytes(b for b, i in enumerate(self.byte_ids) if i is not None) if absent else None
        )
        self.vocab_size: int = max([n_tokens - 1, *ids]) + 1
        # id -> bytes for decoding, specials included; None marks ids that do not exist.
        self._decoder: list[bytes | None] = [
            *(data or None for data in self.token_bytes),
            *[None] * (self.vocab_size - n_tokens),
        ]
        for token, token_id in self.special_tokens.items():
            self._decoder[token_id] = token.encode("utf-8")
        self._chunk_cache: dict[bytes, list[int]] = {}
        self._tiktoken_encoding: Any = None

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    # -- training ------------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str | Path],
        *,
        vocab_size: int,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        min_frequency: int = 2,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> BPETokenizer:
        """Train on texts (strings, or Paths of UTF-8 files). Special tokens take the last ids."""
        pattern_name, regex_string = resolve_pattern(pattern)
        special_tokens = tuple(special_tokens)
        if len(set(special_tokens)) != len(special_tokens) or not all(special_tokens):
            raise ConfigError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ConfigError(
                f"vocab_size={vocab_size!r} is too small: it must be at least 256 (one id per byte) + "
                f"{len(special_tokens)} special token(s) = {256 + len(special_tokens)}"
            )
        if vocab_size > _MAX_VOCAB:
            raise ConfigError(f"vocab_size={vocab_size} is too large (at most {_MAX_VOCAB})")
        if min_frequency < 1:
            raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
        counts = count_chunks(texts, regex_string, special_tokens=special_tokens, num_workers=num_workers)
        if not counts:
            raise DataError("the training corpus is empty (no text to learn merges from)")
        n_merges = vocab_size - 256 - len(special_tokens)
        merges = train_merges(counts, n_merges=n_merges, min_frequency=min_frequency, progress=progress)
        if len(merges) < n_merges:
            warnings.warn(
                f"BPE training stopped after {len(merges)} of {n_merges} merges: no remaining pair occurs "
                f"at least min_frequency={min_frequency} times; vocab_size is "
                f"{256 + len(merges) + len(special_tokens)}",
                stacklevel=2,
            )
        first_special = 256 + len(merges)
        return cls(
            merges=merges,
            pattern=pattern_name,
            special_tokens={t: first_special + i for i, t in enumerate(special_tokens)},
        )

    # -- the reference encoder -----------------------------------------------------------------------

    def _check_bytes(self, text: str) -> None:
        """TokenizerError if `text` holds a byte this vocabulary has no token for (imported ones only)."""
        if self._present_bytes is not None:
            missing = without_surrogates(text).encode("utf-8").translate(None, delete=self._present_bytes)
            if missing:
                raise TokenizerError(
                    f"the text holds byte 0x{missing[0]:02x}, for which this vocabulary has no token"
                )

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        """BPE on one chunk: apply the earliest-learned merge present, repeat until none applies."""
        ids: list[int] = [self.byte_ids[b] for b in chunk]  # type: ignore[misc]  # absent bytes checked before
        while len(ids) >= 2:
            pair = min(itertools.pairwise(ids), key=lambda p: self._merge_ids.get(p, _MAX_VOCAB))
            new_id = self._merge_ids.get(pair)
            if new_id is None:
                break
            ids = _merge_word(ids, pair[0], pair[1], new_id)
        return ids

    def encode_ordinary_reference(self, text: str) -> list[int]:
        """Pure-Python encoding (special-token text is plain text); chunk results are cached."""
        self._check_bytes(text)
        ids: list[int] = []
        cache = self._chunk_cache
        if len(cache) > 500_000:  # bound memory on endless streams of new words
            cache.clear()
        for chunk in compile_pattern(self.pattern).findall(without_surrogates(text)):
            data = chunk.encode("utf-8")
            chunk_ids = cache.get(data)
            if chunk_ids is None:
                chunk_ids = cache[data] = self._encode_chunk(data)
            ids.extend(chunk_ids)
        return ids

    def encode_reference(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        """Pure-Python `encode`, the reference the tiktoken fast path is tested against."""
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        check_disallowed(text, self.special_tokens, allowed)
        ids: list[int] = []
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.encode_ordinary_reference(piece))
        return ids

    # -- the fast path -------------------------------------------------------------------------------

    def tiktoken_encoding(self) -> Any:
        """The same tokenizer as a `tiktoken.Encoding` (built once; ranks = our ids, see module docstring)."""
        if self._tiktoken_encoding is None:
            import tiktoken

            self._tiktoken_encoding = tiktoken.Encoding(
                f"lmforge-{self.fingerprint()[:12]}",
                pat_str=self.pattern,
                mergeable_ranks={data: token_id for token_id, data in enumerate(self.token_bytes) if data},
                special_tokens=self.special_tokens,
            )
        return self._tiktoken_encoding

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        check_disallowed(text, self.special_tokens, allowed)
        self._check_bytes(text)
        if _has_prefix_pair(allowed):
            return self._encode_split(text, allowed)
        return self.tiktoken_encoding().encode(text, allowed_special=allowed, disallowed_special=())

    def _encode_split(self, text: str, allowed: frozenset[str]) -> list[int]:
        """`encode` with the special tokens split off here (longest first), the rest through tiktoken."""
        ids: list[int] = []
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.tiktoken_encoding().encode_ordinary(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        self._check_bytes(text)
        return self.tiktoken_encoding().encode_ordinary(text)

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none_raise", num_threads: int = 8
    ) -> list[list[int]]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        for text in texts:
            check_disallowed(text, self.special_tokens, allowed)
            self._check_bytes(text)
        if _has_prefix_pair(allowed):
            return [self._encode_split(text, allowed) for text in texts]
        return self.tiktoken_encoding().encode_batch(
            list(texts), num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        for text in texts:
            self._check_bytes(text)
        return self.tiktoken_encoding().encode_ordinary_batch(list(texts), num_threads=num_threads)

    # -- decoding ------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        decoder = self._decoder
        try:
            if ids and min(ids) >= 0:
                return b"".join([decoder[i] for i in ids])  # type: ignore[misc]
        except (IndexError, TypeError):  # beyond the vocabulary, or a hole (None) in it
            pass
        else:
            if not ids:
                return b""
        bad = next(i for i in ids if not (0 <= i < self.vocab_size and decoder[i] is not None))
        raise TokenizerError(f"token id {bad} is not in this tokenizer's vocabulary (size {self.vocab_size})")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; bytes that do not form valid UTF-8 (a split character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- persistence ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "pattern": {"name": self.pattern_name, "regex": self.pattern},
            "byte_ids": list(self.byte_ids),
            "merges": [list(m) for m in self.merges],
            "special_tokens": dict(self.special_tokens),
        }

    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    def save(self, path: str | Path) -> None:
        save_tokenizer_dict(self.to_dict(), path)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"pattern={self.pattern_name!r}, special_tokens={self.special_tokens})"
        )


def _has_prefix_pair(allowed: frozenset[str]) -> bool:
    """True when one allowed special token starts another (`<|a|>`, `<|a|>b`): tiktoken then picks between
    them in hash-map order, not the longest, so `encode` splits the special tokens off itself."""
    return any(a != b and b.startswith(a) for a in allowed for b in allowed)
