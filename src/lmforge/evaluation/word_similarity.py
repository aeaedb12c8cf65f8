"""Word-similarity benchmarks: WordSim-353 and SimLex-999, scored by Spearman rank correlation.

Each benchmark is a list of word pairs with a human similarity rating; a model is scored by the Spearman
correlation between the ratings and the cosine similarities of its vectors, over the pairs whose two
words it knows (the share of pairs covered is reported beside it; gensim's
`KeyedVectors.evaluate_word_pairs` scores the same way). WordSim-353 rates relatedness ("coffee", "cup")
as well as similarity; SimLex-999 rates similarity only, and is harder for window-based vectors.

The two files ship as test data inside the PyPI package `gensim` (`gensim/test/test_data/wordsim353.tsv`,
`simlex999.txt`: tab-separated word, word, rating; `#` comment lines). We locate the package with
`importlib.util.find_spec` and read the files; we never import gensim.

Spearman's ρ is the Pearson correlation of the ranks, ties getting the mean of the ranks they span
(as `scipy.stats.spearmanr`). Example: x = [1, 2, 2, 3] has ranks [1, 2.5, 2.5, 4].
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.errors import DataError, FormatError
from lmforge.models.word2vec import WordVectors

BENCHMARKS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


@dataclass(frozen=True)
class SimilarityScore:
    benchmark: str
    spearman: float  # over the covered pairs
    covered: int  # pairs whose two words the model knows
    total: int


def benchmark_path(name: str) -> Path:
    """Where gensim's copy of a benchmark file is, found without importing gensim."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown word-similarity benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {name} benchmark is read from the PyPI package 'gensim' (pip install gensim)")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / BENCHMARKS[name]


def read_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """(word, word, rating) per line of a tab-separated file; '#' lines are comments. Words lowercased."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "word-similarity file not found")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            pairs.append((fields[0].lower(), fields[1].lower(), float(fields[2])))
        except (IndexError, ValueError):
            raise FormatError(path, f"line {number}: expected 'word<TAB>word<TAB>rating'") from None
    if not pairs:
        raise FormatError(path, "no word pairs")
    return pairs


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks. Example: [10, 20, 20, 5] -> [2, 3.5, 3.5, 1]."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # runs of equal values: [start, end) in sorted order; each gets the mean of ranks start+1..end
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    result = np.empty(len(values))
    result[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return result


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length sequences (NaN when either is constant)."""
    if len(x) != len(y) or len(x) < 2:
        raise DataError(f"spearman needs two sequences of the same length >= 2, got {len(x)} and {len(y)}")
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def evaluate_similarity(
    vectors: WordVectors, pairs: list[tuple[str, str, float]], name: str = ""
) -> SimilarityScore:
    """Spearman between human ratings and cosine similarities over the pairs the vectors cover."""
    covered = [(a, b, rating) for a, b, rating in pairs if a in vectors and b in vectors]
    if len(covered) < 2:
        return SimilarityScore(name, float("nan"), len(covered), len(pairs))
    cosines = np.array([vectors.similarity(a, b) for a, b, _ in covered])
    ratings = np.array([rating for _, _, rating in covered])
    return SimilarityScore(name, spearman(ratings, cosines), len(covered), len(pairs))


def evaluate_benchmarks(vectors: WordVectors) -> list[SimilarityScore]:
    """Scores on WordSim-353 and SimLex-999 (gensim's copies)."""
    return [evaluate_similarity(vectors, read_pairs(benchmark_path(n)), n) for n in BENCHMARKS]
