"""Byte-level BPE training, the naive way: count every pair, merge the best one, start again.

What it does: cuts the texts into chunks exactly as the fast trainer does (special tokens cut out, lone
surrogates replaced, the same regex split pattern from lmforge.tokenizers.pretokenize), turns each chunk
into its UTF-8 bytes (ids 0..255), then repeats: count all adjacent pairs in all chunks, take the most
frequent pair, give it the next id (256, 257, ...), replace it everywhere. The rules are those of the
fast trainer, `lmforge.tokenizers.bpe.train_merges`, so that both learn the same merges:
- ties between equally frequent pairs go to the smallest (left id, right id);
- a pair whose concatenated bytes are already a token is skipped for good (no two ids share bytes);
- training stops when the best pair occurs fewer than `min_frequency` times.

What it deliberately does not do: no distinct-chunk counting, no pair index, no heap — every merge
recounts every pair of every chunk occurrence, O(merges × corpus). That is the point: it is short
enough to check by eye, and the fast trainer is tested against it. Use it on kilobytes, not megabytes.

References: Sennrich, Haddow & Birch, "Neural Machine Translation of Rare Words with Subword Units"
(2016), Algorithm 1; Karpathy's minbpe `basic.py`; tiktoken's `_educational.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lmforge.errors import ConfigError
from lmforge.scratch.dense import Trace
from lmforge.tokenizers.pretokenize import resolve_pattern, split_text
from lmforge.tokenizers.special import ENDOFTEXT, split_on_special, without_surrogates


def pair_counts(chunks: list[list[int]]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs.

    Example: [[1, 2, 3, 1, 2]] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}.
    """
    counts: dict[tuple[int, int], int] = {}
    for ids in chunks:
        for pair in zip(ids, ids[1:], strict=False):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair`, left to right, without overlaps.

    Example: [1, 1, 1], (1, 1), 9 -> [9, 1].
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (ENDOFTEXT,),
    min_frequency: int = 2,
    trace: Trace | None = None,
) -> list[tuple[int, int]]:
    """Learn merges (merge i creates id 256 + i) for a vocabulary of `vocab_size` ids including the
    special tokens, with the same arguments and defaults as `BPETokenizer.train`. With `trace`, prints
    each merge as `merge 256: (104, 101) b'he' count 123`."""
    if vocab_size < 256 + len(special_tokens) or min_frequency < 1:
        raise ConfigError(f"need vocab_size >= {256 + len(special_tokens)} and min_frequency >= 1")
    _, regex_string = resolve_pattern(pattern)
    chunks: list[list[int]] = []  # every chunk occurrence of the corpus, as byte ids
    for text in texts:
        for piece, is_special in split_on_special(without_surrogates(text), frozenset(special_tokens)):
            if not is_special:  # merges never reach into special tokens
                chunks.extend(list(chunk.encode("utf-8")) for chunk in split_text(piece, regex_string))

    token_bytes = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
    merges: list[tuple[int, int]] = []
    skipped: set[tuple[int, int]] = set()  # pairs whose bytes were already a token
    n_merges = vocab_size - 256 - len(special_tokens)
    while len(merges) < n_merges:
        counts = {pair: count for pair, count in pair_counts(chunks).items() if pair not in skipped}
        if not counts:
            break
        # The most frequent pair; among equals, the smallest (left, right).
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        if counts[best] < min_frequency:
            break
        new_bytes = token_bytes[best[0]] + token_bytes[best[1]]
        if new_bytes in token_bytes:
            skipped.add(best)
            continue
        new_id = 256 + len(merges)
        merges.append(best)
        token_bytes.append(new_bytes)
        chunks = [merge(ids, best, new_id) for ids in chunks]
        if trace:
            trace(f"merge {new_id}: {best} {new_bytes!r} count {counts[best]}")
    return merges
