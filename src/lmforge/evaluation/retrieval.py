"""Retrieval evaluation on the built-in Wikipedia leads: queries, passages, recall@k, MRR, and BM25.

The task (`wiki_retrieval_set`): for every lead with at least three sentences, the first sentence is a
query and the rest of the lead (title and first sentence removed) its one relevant passage; every other
lead's passage is a negative. The query is therefore never a substring of its passage: a retriever
must match a definition ("Paris is the capital and largest city of France.") to the text that follows
it, not find the same words twice. Articles are split into a train part (for training a re-ranker) and a
test part by a hash of the title, so the split does not move when the corpus grows; every passage stays
in the corpus searched, whichever part its query is in.

Metrics over a ranking (passage indices, best first) per query, `positives[q]` the relevant passage:
    recall@k   share of queries whose passage is among the first k
    MRR@k      mean over queries of 1 / (rank of the passage), 0 when it is not in the first k
Example: rankings [[3, 1], [2, 0]] with positives [1, 5]: recall@1 = 0, recall@2 = 1/2,
MRR@2 = (1/2 + 0) / 2 = 0.25.

BM25 (`bm25_rankings`) is the baseline a practitioner tries first: Okapi BM25 from PyPI `rank-bm25`
(k1 = 1.5, b = 0.75, its defaults) over lowercase word tokens.

Deliberately not here: embedding, searching and re-ranking (`lmforge.inference.search`); the experiment
that runs them all (`lmforge.recipes.retrieval`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import regex

from lmforge.data.builtin import wiki_documents
from lmforge.errors import ConfigError, DataError

# A sentence ends at . ! or ? followed by a space and a capital letter or digit, not after a single
# capital ("J. R. R. Tolkien") or a common abbreviation.
_SENTENCE_END = regex.compile(
    r"(?<!\b(?:\p{Lu}|[Mm]rs?|Dr|St|Jr|Sr|vs|ca|c|e\.g|i\.e|U\.S|No)\.)(?<=[.!?])\s+(?=[\p{Lu}\d\"“(])"
)
_WORD = regex.compile(r"[\p{L}\p{N}]+")


@dataclass(frozen=True)
class RetrievalSet:
    """Queries and the passages they are searched in; `positives[q]` is query q's one relevant passage."""

    queries: list[str]
    positives: list[int]  # index into passages, one per query
    passages: list[str]
    titles: list[str]  # the article of each passage


def split_sentences(text: str) -> list[str]:
    """Sentences of a lead. Example: "Paris is a city. It is in France." -> ["Paris is a city.", "It is in
    France."]."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def in_test_split(title: str, test_fraction: float) -> bool:
    """Whether an article is held out: the first 8 bytes of sha256(title), as a fraction of 2^64, fall
    below test_fraction."""
    digest = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return digest / 2**64 < test_fraction


def wiki_retrieval_set(
    split: str = "test", *, test_fraction: float = 0.2, min_sentences: int = 3, split_passages: bool = False
) -> RetrievalSet:
    """The query/passage task above, with the queries of one split ("train", "test", "all").

    Every usable lead gives a passage (with `split_passages`, only the split's leads: a smaller corpus
    for a machine that cannot embed them all); only the split's articles give queries.
    """
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split={split!r} is invalid; use train, test or all")
    queries, positives, passages, titles = [], [], [], []
    for doc in wiki_documents():
        title, _, lead = doc.text.partition("\n")
        sentences = split_sentences(lead.replace("\n", " "))
        if len(sentences) < min_sentences:
            continue
        in_split = split == "all" or in_test_split(title, test_fraction) == (split == "test")
        if in_split:
            queries.append(sentences[0])
            positives.append(len(passages))
        elif split_passages:
            continue
        passages.append(" ".join(sentences[1:]))
        titles.append(title)
    return RetrievalSet(queries, positives, passages, titles)


def check_rankings(rankings: np.ndarray, positives: Sequence[int]) -> np.ndarray:
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or len(rankings) != len(positives) or len(positives) == 0:
        raise DataError(
            f"rankings must be (queries, k) for {len(positives)} queries, got shape {rankings.shape}"
        )
    return rankings


def positive_ranks(rankings: np.ndarray, positives: Sequence[int]) -> np.ndarray:
    """1-based rank of each query's passage in its ranking; 0 where it is absent."""
    rankings = check_rankings(rankings, positives)
    hits = rankings == np.asarray(positives)[:, None]  # (Q, k)
    return np.where(hits.any(1), hits.argmax(1) + 1, 0)


def retrieval_metrics(
    rankings: np.ndarray, positives: Sequence[int], *, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """recall@k for each k and MRR@(largest k) (module docstring). rankings (Q, >= max k) passage indices."""
    ranks = positive_ranks(check_rankings(rankings, positives)[:, : max(ks)], positives)
    metrics = {f"recall@{k}": float(((ranks >= 1) & (ranks <= k)).mean()) for k in ks}
    metrics[f"mrr@{max(ks)}"] = float(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0).mean())
    return metrics


def words(text: str) -> list[str]:
    """BM25's tokens: lowercase runs of letters and digits. Example: "Paris, France!" -> ["paris",
    "france"]."""
    return _WORD.findall(text.lower())


def bm25_rankings(queries: Sequence[str], passages: Sequence[str], k: int) -> np.ndarray:
    """(Q, k) passage indices, best first, by Okapi BM25 (PyPI `rank-bm25`, an optional dependency)."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise ConfigError(
            "the BM25 baseline needs the PyPI package 'rank-bm25' (pip install rank-bm25)"
        ) from None
    if not passages or not queries:
        raise DataError("BM25 needs at least one query and one passage")
    index = BM25Okapi([words(p) for p in passages])
    k = min(k, len(passages))
    rankings = np.empty((len(queries), k), dtype=np.int64)
    for q, query in enumerate(queries):
        scores = index.get_scores(words(query))  # (P,)
        top = np.argpartition(-scores, k - 1)[:k]
        rankings[q] = top[np.argsort(-scores[top], kind="stable")]
    return rankings
