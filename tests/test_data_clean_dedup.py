"""Cleaning, quality filters, deduplication and the split assignment, with hand-worked expectations."""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from lmforge.data.clean import CleanConfig, alpha_fraction, dup_line_fraction, failed_filter, normalize_text
from lmforge.data.dedup import DedupConfig, Deduplicator, shingle_hashes, word_hashes
from lmforge.data.split import assign_splits, split_key
from lmforge.errors import ConfigError, DataError


def test_normalize_text():
    # "e" + combining acute (U+0301) composes to "é" (U+00E9) under NFC; "\r\n" and a lone "\r" become
    # "\n"; the BEL (U+0007), NUL and C1 control U+0085 go; the tab stays.
    assert normalize_text("\ufeffCafe\u0301\r\nok\x07\x00\rx\ty\u0085") == "Caf\u00e9\nok\nx\ty"
    assert normalize_text("ÀB", lowercase=True) == "àb"


def test_filter_measures_by_hand():
    assert alpha_fraction("ab 12!") == pytest.approx(2 / 5)  # letters a, b of 5 non-space characters
    assert dup_line_fraction("a\nb\na\n\n a ") == pytest.approx(2 / 4)  # a, b, a, a: two repeats of 4 lines


def test_each_filter_and_its_name():
    config = CleanConfig(
        min_chars=5, max_chars=20, min_alpha_fraction=0.5, max_dup_line_fraction=0.3, max_line_length=10
    )
    assert failed_filter(" \n ", config) == "empty"
    assert failed_filter("abcd", config) == "min_chars"
    assert failed_filter("a" * 21, config) == "max_chars"
    assert failed_filter("12345 678", config) == "alpha_fraction"
    assert failed_filter("ab\nab\nab", config) == "dup_line_fraction"  # 2 of 3 lines repeat: 0.67 > 0.3
    assert failed_filter("abcdefghijk", config) == "max_line_length"  # 11 > 10
    assert failed_filter("abc\ndefgh", config) is None
    with pytest.raises(ConfigError, match="min_alpha_fraction"):
        CleanConfig(min_alpha_fraction=1.5)


VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu") for b in range(200)]


def paragraph(rng: random.Random, n_words: int = 200) -> list[str]:
    return rng.sample(VOCAB, n_words)  # distinct words, so every 3-word shingle is distinct too


def planted_corpus(seed: int = 0):
    """40 distinct paragraphs, then 5 exact copies (re-spaced) and 5 near copies with 3 words changed.

    Near copy: 200 distinct words -> 198 shingles; each changed word (far apart) alters 3 shingles, so
    189 are shared and 9 differ on each side: Jaccard = 189 / (189 + 9 + 9) = 0.91, above 0.8 by 4
    standard deviations of a 128-permutation estimate (sqrt(0.91 * 0.09 / 128) = 0.025). A "half" copy
    (first 100 words kept, 100 new) shares only the 98 shingles inside the first half: 98 / 298 = 0.33.
    """
    rng = random.Random(seed)
    originals = [paragraph(rng) for _ in range(40)]
    docs = [" ".join(words) for words in originals]
    exact = ["  ".join(originals[i]) + "\n" for i in range(5)]
    near = []
    for i in range(5, 10):
        words = list(originals[i])
        for position in (20, 100, 180):
            words[position] = "changed"
        near.append(" ".join(words))
    half = " ".join(originals[10][:100] + paragraph(rng, 100))
    return docs, exact, near, half


def test_planted_exact_and_near_duplicates_are_removed_distinct_kept():
    docs, exact, near, half = planted_corpus()
    dedup = Deduplicator(DedupConfig(mode="near", threshold=0.8))
    verdicts = [dedup.check(text)[0] for text in docs + exact + near + [half]]
    assert verdicts == [None] * 40 + ["exact"] * 5 + ["near"] * 5 + [None]
    assert (dedup.exact_removed, dedup.near_removed) == (5, 5)

    exact_only = Deduplicator(DedupConfig(mode="exact"))
    assert [exact_only.check(t)[0] for t in docs + exact + near] == [None] * 40 + ["exact"] * 5 + [None] * 5
    nothing = Deduplicator(DedupConfig(mode="none"))
    assert all(nothing.check(t)[0] is None for t in docs + exact)


def test_word_hashes_by_hand():
    # "ab" -> (ord("a") + 1) + (ord("b") + 1) * P with P the FNV prime 0x100000001B3, mod 2**64.
    assert int(word_hashes("ab")[0]) == (98 + 99 * 0x100000001B3) % 2**64
    hashes = word_hashes("Hi, hi! héllo_2")
    assert len(hashes) == 3 and hashes[0] == hashes[1] and hashes[2] == word_hashes("HÉLLO_2")[0]


def test_shingles():
    # "The cat sat on": 2 shingles; case is ignored; a 2-word text is one shingle.
    assert len(shingle_hashes("The cat sat on", shingle_size=3)) == 2
    upper = shingle_hashes("the CAT sat", shingle_size=3)
    assert list(upper) == list(shingle_hashes("The cat SAT", shingle_size=3))
    assert len(shingle_hashes("two words", shingle_size=3)) == 1
    assert len(shingle_hashes("!!! ...", shingle_size=3)) == 0


def test_split_counts_by_hand_and_determinism():
    """10 documents, val=0.2, test=0.1: round(1.0)=1 to test, round(2.0)=2 to val, 7 to train.
    1000 documents, val=0.05, test=0.015: 15 test, 50 val, 935 train."""
    keys = array("Q", [split_key(bytes([i]) * 16, seed=0) for i in range(10)])
    codes = assign_splits(keys, val=0.2, test=0.1)
    assert sorted(codes.tolist()) == [0] * 7 + [1] * 2 + [2]
    big = array("Q", [split_key(i.to_bytes(16, "little"), seed=3) for i in range(1000)])
    counts = assign_splits(big, val=0.05, test=0.015).tolist()
    assert (counts.count(0), counts.count(1), counts.count(2)) == (935, 50, 15)
    # Same keys, same codes; the assignment does not depend on the order documents arrive in.
    reversed_codes = assign_splits(array("Q", reversed(big)), val=0.05, test=0.015).tolist()
    assert reversed_codes[::-1] == counts
    other_seed = [split_key(i.to_bytes(16, "little"), seed=4) for i in range(1000)]
    assert assign_splits(array("Q", other_seed), val=0.05, test=0.015).tolist() != counts


def test_split_needs_enough_documents():
    with pytest.raises(DataError, match="too few for a train split"):
        assign_splits(array("Q", [1]), val=0.05, test=0.0)  # a non-zero val always gets a document
    with pytest.raises(ConfigError):
        assign_splits(array("Q", [1, 2, 3]), val=0.6, test=0.5)


def _estimated_jaccard(a: str, b: str, num_perm: int) -> float:
    """Fraction of MinHash minima two texts share, from datasketch's own MinHash on the same shingles
    and the same seed-1 permutations the deduplicator draws."""
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=1, scheme="affine32")
    signatures = []
    for text in (a, b):
        m = MinHash(num_perm=num_perm, permutations=template.permutations, scheme="affine32", hashfunc=int)
        m.update_batch(shingle_hashes(text, shingle_size=3).tolist())
        signatures.append(m)
    return float(signatures[0].jaccard(signatures[1]))


def test_near_duplicate_at_exactly_the_threshold_counts():
    """A pair whose estimated Jaccard equals the threshold is a duplicate ("similarity >= threshold");
    one permutation's worth (1/num_perm) above it, the same pair is kept."""
    docs, _, near, _ = planted_corpus()
    original, copy = docs[5], near[0]  # 3 of ~200 words changed
    estimate = _estimated_jaccard(original, copy, num_perm=128)
    assert 0.8 < estimate < 1.0
    at = Deduplicator(DedupConfig(mode="near", threshold=estimate))
    assert [at.check(original)[0], at.check(copy)[0]] == [None, "near"]
    above = Deduplicator(DedupConfig(mode="near", threshold=estimate + 1 / 128))
    assert [above.check(original)[0], above.check(copy)[0]] == [None, None]


def test_threshold_one_removes_only_identical_shingle_sets():
    """threshold=1.0 is valid (datasketch has no band layout for it: the deduplicator picks 2 bands):
    the same words up to case and punctuation are a near duplicate, one changed word is not."""
    docs, _, near, _ = planted_corpus()
    dedup = Deduplicator(DedupConfig(mode="near", threshold=1.0))
    same_words = docs[5].upper().replace(" ", ", ")
    assert [dedup.check(t)[0] for t in (docs[5], same_words, near[0])] == [None, "near", None]
    assert Deduplicator(DedupConfig(mode="near", threshold=0.99, num_perm=32)).check("a b c")[0] is None
    for bad in (0.0, 1.01):  # 0 would make every pair of documents duplicates
        with pytest.raises(ConfigError, match="threshold must be in"):
            DedupConfig(threshold=bad)


def test_split_rounds_half_up():
    """10 documents, val=0.25: 10 * 0.25 = 2.5 rounds half up to 3 (Python's round() would give 2);
    test=0.05: 0.5 -> 1; 6 left for train."""
    keys = array("Q", [split_key(bytes([i]) * 16, seed=0) for i in range(10)])
    codes = assign_splits(keys, val=0.25, test=0.05)
    assert sorted(codes.tolist()) == [0] * 6 + [1] * 3 + [2]
    assert codes.dtype == np.uint8  # one byte per document, whatever the corpus size
    assert sorted(assign_splits(keys, val=0.25, test=0.0).tolist()) == [0] * 7 + [1] * 3
