"""Semantic search: a bi-encoder index over a corpus, exact cosine top-k, an approximate index, re-ranking.

    index = build_index(passages, model="all-minilm-l6-v2")     # every passage embedded once
    scores, rows = index.search(embed([query]), k=10)            # exact: one matrix product in torch
    order = rerank(cross_encoder, tokenizer, query, [passages[i] for i in rows[0]])

Retrieve-then-rerank: a bi-encoder embeds query and passages separately, so the passages' vectors are
computed once and a query costs one (1, D) x (D, P) product; a cross-encoder reads query and passage
together ([CLS] query [SEP] passage [SEP] -> one relevance logit) and so is more accurate but must run
once per pair; it re-orders the bi-encoder's top candidates only.

Vectors are L2-normalised, so the cosine is a dot product. `cosine_top_k` takes the top k of each row of
Q x P scores with `torch.topk`, in chunks of queries so that memory stays (chunk, P).

`SearchIndex` saves as `index.safetensors` (the (P, D) vectors) and `index.json` (format, the model that
made them, its width and tokenizer fingerprint, the passages and their ids); loading checks that the
query model is the one that built the index, since vectors of two models share no space.

`ApproximateIndex` wraps an HNSW graph from PyPI `usearch` (an optional extra): sub-linear search for
large corpora at the price of sometimes missing a true neighbour; `recall_against_exact` measures that
price as the share of the exact top k that the approximate search also returns.

Deliberately not here: the encoder and pooling (`inference/encoder.py`), training the cross-encoder
(`training/rerank.py`), retrieval metrics and BM25 (`evaluation/retrieval.py`).
References: Reimers & Gurevych 2019 (bi-encoders); Nogueira & Cho 2019, "Passage Re-ranking with BERT"
(cross-encoders); Malkov & Yashunin 2018 (HNSW).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import ConfigError, DataError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors

INDEX_VECTORS = "index.safetensors"
INDEX_INFO = "index.json"
INDEX_FORMAT = "lmforge-search-index"


def cosine_top_k(
    queries: np.ndarray | torch.Tensor, passages: np.ndarray | torch.Tensor, k: int, *, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """queries (Q, D), passages (P, D), both L2-normalised -> (scores (Q, k), indices (Q, k)), best first."""
    queries, passages = (
        torch.as_tensor(queries, dtype=torch.float32),
        torch.as_tensor(passages, dtype=torch.float32),
    )
    if queries.ndim != 2 or passages.ndim != 2 or queries.shape[1] != passages.shape[1]:
        raise DataError(
            f"query vectors {tuple(queries.shape)} and passage vectors {tuple(passages.shape)} do not match"
        )
    if len(passages) == 0:
        raise DataError("the index holds no passages")
    k = min(k, len(passages))
    scores, indices = [], []
    for start in range(0, len(queries), chunk):
        top = torch.topk(queries[start : start + chunk] @ passages.T, k, dim=1)  # (chunk, P) -> (chunk, k)
        scores.append(top.values)
        indices.append(top.indices)
    return torch.cat(scores).numpy(), torch.cat(indices).numpy()


@dataclass
class SearchIndex:
    """Passages and their normalised vectors, and the model that made them."""

    passages: list[str]
    ids: list[str]  # a name per passage (e.g. the article title); printed with the results
    vectors: np.ndarray  # (P, D) float32
    model: dict[str, Any] = field(default_factory=dict)  # {"name", "width", "tokenizer_fingerprint"}

    def search(self, query_vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-k of each query vector: (scores (Q, k), passage rows (Q, k))."""
        return cosine_top_k(query_vectors, self.vectors, k)

    def check_model(self, model: dict[str, Any], *, path: Path | None = None) -> None:
        """FormatError unless `model` (as `encoder_identity` describes it) built this index."""
        if model != self.model:
            where = path / INDEX_INFO if path else Path(INDEX_INFO)
            raise FormatError(
                where,
                f"the index was built with model {self.model.get('name')!r} "
                f"(width {self.model.get('width')}), "
                f"not {model.get('name')!r} (width {model.get('width')}); search with that model or rebuild "
                "the index (delete the directory)",
            )

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(directory / INDEX_VECTORS, {"vectors": torch.from_numpy(self.vectors)})
        info = {"format": INDEX_FORMAT, "model": self.model, "ids": self.ids, "passages": self.passages}
        atomic_write_json(directory / INDEX_INFO, info, indent=None)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SearchIndex:
        directory = Path(directory)
        info = read_json(directory / INDEX_INFO, what="search index")
        if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
            raise FormatError(
                directory / INDEX_INFO,
                f"not an {INDEX_FORMAT!r} file (build one with 'lmforge search --index')",
            )
        passages, ids, model = info.get("passages"), info.get("ids"), info.get("model")
        if (
            not isinstance(passages, list)
            or not isinstance(ids, list)
            or len(ids) != len(passages)
            or not isinstance(model, dict)
        ):
            raise FormatError(
                directory / INDEX_INFO, "expected 'passages' and 'ids' of the same length and a 'model'"
            )
        vectors = load_safetensors(directory / INDEX_VECTORS, what="index vectors").get("vectors")
        if vectors is None or vectors.ndim != 2 or vectors.shape != (len(passages), model.get("width")):
            shape = None if vectors is None else tuple(vectors.shape)
            raise FormatError(
                directory / INDEX_VECTORS,
                f"expected 'vectors' of shape ({len(passages)}, {model.get('width')}), found {shape}",
            )
        return cls(passages, ids, vectors.float().numpy(), model)


def encoder_identity(name: str, bert: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What an index records of the model that embedded it (and a query must match)."""
    return {
        "name": str(name),
        "width": int(bert.config.n_embd),
        "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
    }


def build_index(
    passages: Sequence[str],
    *,
    model: str | Path = "all-minilm-l6-v2",
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
) -> SearchIndex:
    """Embed every passage with `model` (a built-in name or a BERT checkpoint) into a `SearchIndex`."""
    from lmforge.inference.encoder import embed_texts, load_encoder

    if len(passages) == 0:
        raise DataError("the corpus has no passages to index")
    ids = [str(i) for i in range(len(passages))] if ids is None else list(ids)
    if len(ids) != len(passages):
        raise DataError(f"{len(ids)} ids for {len(passages)} passages")
    bert, tokenizer, meta = load_encoder(model)
    vectors = embed_texts(
        bert,
        tokenizer,
        list(passages),
        pooling=meta.get("pooling", "mean"),
        batch_size=batch_size,
        max_length=meta.get("max_length", bert.config.block_size),
    )
    return SearchIndex(list(passages), ids, vectors, encoder_identity(str(model), bert, meta))


class ApproximateIndex:
    """An HNSW index over normalised vectors (usearch, inner-product metric): `search` -> passage rows."""

    def __init__(self, vectors: np.ndarray, *, connectivity: int = 16, expansion_search: int = 64):
        try:
            from usearch.index import Index
        except ImportError:
            raise ConfigError(
                "the approximate index needs the PyPI package 'usearch' (pip install usearch)"
            ) from None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise DataError(f"an approximate index needs (P >= 1, D) vectors, got shape {vectors.shape}")
        self.size = len(vectors)
        self.index = Index(
            ndim=vectors.shape[1],
            metric="ip",
            dtype="f32",
            connectivity=connectivity,
            expansion_search=expansion_search,
        )
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=1)

    def search(self, query_vectors: np.ndarray, k: int = 10) -> np.ndarray:
        """(Q, D) -> (Q, k) passage rows, best first (-1 where the graph found fewer than k)."""
        k = min(k, self.size)
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        matches = self.index.search(queries, k, threads=1)
        if len(queries) == 1:  # usearch returns one query's `Matches`, only the keys it found
            found = np.asarray(matches.keys, dtype=np.int64)
            return np.concatenate([found, np.full(k - len(found), -1)])[None, :]
        keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)  # (Q, k)
        keys[np.arange(keys.shape[1])[None, :] >= np.asarray(matches.counts)[:, None]] = -1
        return keys


def recall_against_exact(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top k found by the approximate top k.

    Example: exact [[1, 2]], approximate [[2, 7]] -> 1/2.
    """
    if approximate.shape != exact.shape:
        raise DataError(f"rankings of shapes {approximate.shape} and {exact.shape} cannot be compared")
    found = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(found))


@torch.inference_mode()
def cross_encoder_scores(
    model: Any,
    tokenizer: Any,
    query: str,
    passages: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 16,
) -> np.ndarray:
    """Relevance logits (N,) of [CLS] query [SEP] passage [SEP] for each passage, by a 1-logit BERT."""
    from lmforge.models.cross_encoder import pair_inputs, relevance_logits

    if not query.strip():
        raise DataError("the query is empty")
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(passages), batch_size):
            batch = list(passages[start : start + batch_size])
            ids, types, mask = pair_inputs(tokenizer, [query] * len(batch), batch, max_length=max_length)
            scores.append(relevance_logits(model, ids, types, mask).float())  # (B,)
    finally:
        model.train(was_training)
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def rerank(
    model: Any, tokenizer: Any, query: str, passages: Sequence[str], **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores): positions into `passages` sorted by the cross-encoder's score, and those scores."""
    scores = cross_encoder_scores(model, tokenizer, query, passages, **options)
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]
