"""Deduplication in one streaming pass: keep the first document of every duplicate cluster.

- Exact: a 128-bit BLAKE2b digest of the text with whitespace runs collapsed, so copies that differ
  only in spacing or trailing newlines are one document.
- Near: MinHash signatures of word shingles (lowercased words, `shingle_size` in a row) indexed
  with LSH (Broder 1997; Leskovec et al., "Mining of Massive Datasets", ch. 3), both from `datasketch`.
  An LSH hit is a candidate only; it counts as a duplicate when the signatures' estimated Jaccard
  similarity is >= `threshold`, which removes most of LSH's false positives.

A later document is compared with the documents kept so far, so the representative of a cluster is
its first member in source order and the result does not depend on anything but the input order.
Memory grows with the number of kept documents (16 bytes each for exact, plus a 4*num_perm-byte
signature and the LSH bands for near), never with their length. Deliberately not here: substring
(suffix-array) deduplication and cross-dataset decontamination.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lmforge.errors import ConfigError

DedupMode = Literal["none", "exact", "near"]
_P = np.uint64(0x100000001B3)  # the 64-bit FNV prime; odd, so it has an inverse mod 2**64
_P_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_WORD_BYTE = np.zeros(256, dtype=bool)  # which UTF-8 bytes belong to words (see word_hashes)
_WORD_BYTE[list(b"abcdefghijklmnopqrstuvwxyz0123456789_")] = True
_WORD_BYTE[0x80:] = True
# Odd 64-bit multipliers (from splitmix64) to combine word hashes into a shingle hash.
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


@dataclass(frozen=True)
class DedupConfig:
    """Which duplicates to remove and how similar "near" is."""

    mode: DedupMode = "near"  # "none", "exact" (same text up to whitespace) or "near" (also MinHash/LSH)
    threshold: float = 0.8  # estimated Jaccard similarity of shingle sets from which documents are duplicates
    num_perm: int = 128  # MinHash permutations: estimate error is about 1/sqrt(num_perm)
    shingle_size: int = 3  # words per shingle; 3 keeps a paragraph with a few words changed above 0.8

    def __post_init__(self):
        if self.mode not in ("none", "exact", "near"):
            raise ConfigError(f"dedup mode must be 'none', 'exact' or 'near', got {self.mode!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16 or self.shingle_size < 1:
            raise ConfigError(
                f"num_perm must be >= 16 and shingle_size >= 1, got {self.num_perm}, {self.shingle_size}"
            )


def exact_digest(text: str) -> bytes:
    """16-byte digest of the text with whitespace collapsed. Example: "a  b\\n" and "a b" share one."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


def word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash of every word of the lowercased text, in order (uint64 array), computed in numpy.

    A word is a maximal run of bytes that are ASCII letters, digits, '_' or any non-ASCII byte (so
    accented and non-Latin words stay whole) in the UTF-8 encoding. Word hash = sum of
    (byte + 1) * P**k over its bytes, k the offset in the word, mod 2**64: the sums over all words come
    from one prefix product and `np.add.reduceat`, then are divided by P**start via the inverse of P.
    Example: "Hi, hi!" -> two equal hashes. No Python-level work per word (unlike a regex plus a hash call).
    """
    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    is_word = _WORD_BYTE[data]
    if not is_word.any():
        return np.zeros(0, dtype=np.uint64)
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around: that is the mod 2**64
        powers = np.cumprod(np.full(len(data), _P, dtype=np.uint64))  # powers[i] = P**(i + 1)
        inverse_powers = np.cumprod(np.full(len(data), _P_INVERSE, dtype=np.uint64))
        values = (data.astype(np.uint64) + np.uint64(1)) * powers
        values[~is_word] = 0
        return np.add.reduceat(values, starts) * inverse_powers[starts]


def shingle_hashes(text: str, *, shingle_size: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word shingles of a text (uint64 array, possibly empty).

    Example with shingle_size=3: "The cat sat on" -> shingles (the, cat, sat), (cat, sat, on). A text of
    1 or 2 words is one shingle. Word hashes are combined by multiply-add and folded to 32 bits.
    """
    words = word_hashes(text)
    if len(words) == 0:
        return words
    k = min(shingle_size, len(words))
    n = len(words) - k + 1
    combined = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(k):
            combined = combined * _MIX[i % 3] + words[i : i + n]
    return np.unique((combined ^ (combined >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


class Deduplicator:
    """Feed documents in order with `check`; it says whether each one is a duplicate of an earlier one."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self.exact_removed = 0
        self.near_removed = 0
        self._digests: set[bytes] = set()
        if config.mode == "near":
            from datasketch import MinHash, MinHashLSH

            self._template = MinHash(num_perm=config.num_perm, seed=1, scheme="affine32")
            # LSH bands tuned to miss few true pairs (weights: 5% false positives, 95% false negatives):
            # every candidate is verified below, so a false positive only costs one comparison. At
            # threshold 0.8 this picks 16 bands of 8 rows: a pair at Jaccard 0.8 is a candidate with
            # probability 1 - (1 - 0.8**8)**16 = 0.95 (the balanced default gives 0.40).
            try:
                self._lsh = MinHashLSH(
                    threshold=config.threshold, num_perm=config.num_perm, weights=(0.05, 0.95)
                )
            except ValueError:
                # Near 1 (always at 1.0; from 0.99 at num_perm=32) datasketch finds no layout of >= 2
                # bands and refuses. Two bands of num_perm // 2 rows: identical signatures always collide.
                self._lsh = MinHashLSH(num_perm=config.num_perm, params=(2, config.num_perm // 2))
            self._signatures: list[np.ndarray] = []  # (num_perm,) uint32 per kept document, by LSH key

    def check(self, text: str) -> tuple[str | None, bytes]:
        """(None, digest) if the document is kept, ("exact" | "near", digest) if it is a duplicate.

        The digest identifies the document (it also decides its split). Kept documents are remembered.
        """
        digest = exact_digest(text)
        if self.config.mode == "none":
            return None, digest
        if digest in self._digests:
            self.exact_removed += 1
            return "exact", digest
        if self.config.mode == "near" and self._is_near_duplicate(text):
            self.near_removed += 1
            return "near", digest
        self._digests.add(digest)
        return None, digest

    def _is_near_duplicate(self, text: str) -> bool:
        from datasketch import MinHash

        hashes = shingle_hashes(text, shingle_size=self.config.shingle_size)
        if len(hashes) == 0:
            return False  # no words: only exact deduplication applies
        signature = MinHash(
            num_perm=self.config.num_perm,
            permutations=self._template.permutations,
            scheme="affine32",
            hashfunc=int,
        )
        signature.update_batch(hashes.tolist())
        for key in self._lsh.query(signature):
            # Estimated Jaccard = fraction of permutations whose minima agree.
            if np.mean(self._signatures[key] == signature.hashvalues) >= self.config.threshold:
                return True
        self._lsh.insert(len(self._signatures), signature, check_duplication=False)
        self._signatures.append(signature.hashvalues.copy())
        return False
