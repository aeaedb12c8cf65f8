"""Train/val/test assignment of the kept documents, by a seeded hash of each document's content.

Every kept document gets a key `BLAKE2b(seed, digest)`; documents are ranked by key and the first
`round(n * test)` go to test, the next `round(n * val)` to val, the rest to train. So the assignment
depends only on the documents' contents and the seed (not on their order or on the number of workers),
the fractions hold within rounding of one document, and it runs after deduplication: the kept
representative of a near-duplicate cluster is the only member that reaches a split, so a cluster can
never straddle two splits. A non-zero fraction always gets at least one document.

Deliberately not here: splitting by tokens rather than documents, and stratification by source.
"""

from __future__ import annotations

import hashlib
import math
from array import array

import numpy as np

from lmforge.errors import ConfigError, DataError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def check_fractions(val: float, test: float) -> None:
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ConfigError(f"--val and --test must be in [0, 1) with a sum < 1, got val={val}, test={test}")


def split_key(digest: bytes, *, seed: int) -> int:
    """64-bit ranking key of one document for a given seed."""
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, salt=_salt(seed)).digest(), "little")


def _salt(seed: int) -> bytes:
    return hashlib.blake2b(str(seed).encode(), digest_size=16).digest()  # any int seed -> 16-byte salt


def _count(n: int, fraction: float) -> int:
    """round(n * fraction), half up, and at least 1 document when the fraction is non-zero."""
    return 0 if fraction == 0 else max(1, math.floor(n * fraction + 0.5))


def assign_splits(keys: array, *, val: float, test: float) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) for each document, given its key, in the same order.

    Example: 10 documents, val=0.2, test=0.1 -> the 1 lowest key goes to test, the next 2 to val.
    """
    check_fractions(val, test)
    n = len(keys)
    n_test, n_val = _count(n, test), _count(n, val)
    if n - n_test - n_val < 1:
        raise DataError(
            f"only {n} document(s) after filtering and deduplication: too few for a train split plus "
            f"{n_val} val and {n_test} test document(s); add data or lower --val/--test"
        )
    order = np.argsort(np.frombuffer(keys, dtype=np.uint64), kind="stable")
    codes = np.zeros(n, dtype=np.uint8)
    codes[order[:n_test]] = SPLIT_CODES["test"]
    codes[order[n_test : n_test + n_val]] = SPLIT_CODES["val"]
    return codes
