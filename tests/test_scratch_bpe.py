"""The naive BPE trainer (lmforge.scratch.bpe) by hand, and against the fast trainer."""

from __future__ import annotations

import random
import warnings

import pytest

from lmforge.scratch.bpe import merge, pair_counts, train_bpe
from lmforge.tokenizers import BPETokenizer


def test_classic_example_by_hand():
    """ "aaabdaaabac" (one chunk, a=97 b=98 c=99 d=100):
    1. pairs: aa ×4 (two in each "aaa"), ab ×2, bd, da, ba, ac ×1 -> merge (97, 97) -> 256
       ids [256, 97, 98, 100, 256, 97, 98, 97, 99]
    2. pairs: (256, 97) ×2 and (97, 98) ×2 tie; the smaller pair wins -> (97, 98) -> 257
       ids [256, 257, 100, 256, 257, 97, 99]
    3. (256, 257) ×2 -> 258; then every pair occurs once < min_frequency 2: stop."""
    assert pair_counts([[1, 2, 3, 1, 2]]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    merges = train_bpe(["aaabdaaabac"], vocab_size=300, special_tokens=())
    assert merges == [(97, 97), (97, 98), (256, 257)]


def test_same_merges_as_the_fast_trainer_on_shakespeare(shakespeare_sample):
    text = shakespeare_sample[:12_000]
    fast = BPETokenizer.train([text], vocab_size=256 + 120 + 1, progress=False)
    assert train_bpe([text], vocab_size=256 + 120 + 1) == fast.merges


def test_same_merges_with_special_tokens_and_the_gpt2_pattern(shakespeare_sample):
    """Documents joined by <|endoftext|>: the special token's text must not be merged into anything."""
    documents = [shakespeare_sample[i : i + 2000] for i in range(0, 10_000, 2000)]
    texts = ["<|endoftext|>".join(documents)]
    fast = BPETokenizer.train(texts, vocab_size=256 + 100 + 1, pattern="gpt2", progress=False)
    naive = train_bpe(texts, vocab_size=256 + 100 + 1, pattern="gpt2")
    assert naive == fast.merges
    assert b"|>" not in {fast.token_bytes[256 + i] for i in range(len(naive))}


@pytest.mark.parametrize("seed", range(3))
def test_same_merges_under_many_ties(seed):
    """Short random words over {a, b, c}: many pairs have equal counts, so the tie-break decides."""
    rng = random.Random(seed)
    text = "\n".join("".join(rng.choice("abc") for _ in range(rng.randint(2, 7))) for _ in range(40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fast trainer warns when it runs out of pairs
        fast = BPETokenizer.train(
            [text], vocab_size=256 + 60, special_tokens=(), min_frequency=1, progress=False
        )
    assert train_bpe([text], vocab_size=256 + 60, special_tokens=(), min_frequency=1) == fast.merges
