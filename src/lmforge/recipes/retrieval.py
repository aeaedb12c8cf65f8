"""The retrieval experiment: BM25, a bi-encoder, and the bi-encoder with a cross-encoder re-ranking its
top candidates, scored on the same Wikipedia-lead queries (`evaluation.retrieval`), plus search latency.

`evaluate_retrieval` returns one row per method with recall@1, recall@10 and MRR@10, and the timings
of the bi-encoder path per query: embedding the query, exact cosine top-k over the passage matrix, and
(with `approximate=True`) the usearch HNSW search with its recall@10 against the exact top 10.

Deliberately not here: any mechanism (they live in `evaluation/retrieval.py`, `inference/search.py`,
`models/cross_encoder.py`); this module only runs them in order and times them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import ConfigError
from lmforge.evaluation.retrieval import bm25_rankings, retrieval_metrics, wiki_retrieval_set
from lmforge.inference.search import (
    ApproximateIndex,
    SearchIndex,
    build_index,
    cross_encoder_scores,
    encoder_identity,
    recall_against_exact,
)

K = 10


def evaluate_retrieval(
    *,
    model: str | Path = "all-minilm-l6-v2",
    reranker: str | Path | None = None,
    queries: int = 200,
    rerank_depth: int = 20,
    index_dir: str | Path | None = None,
    approximate: bool = False,
    test_fraction: float = 0.2,
    split_passages: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score BM25, the bi-encoder and (with `reranker`) bi-encoder + re-ranking on `queries` test queries
    (spread evenly over the test split; 0 = all) against every passage (`split_passages`: the test
    articles' passages only). `index_dir` caches the passage
    vectors (built on first use, checked against `model` after)."""
    from lmforge.inference.encoder import embed_texts, load_encoder

    if queries < 0 or rerank_depth < K:
        raise ConfigError(f"queries must be >= 0 and rerank_depth >= {K}")
    data = wiki_retrieval_set("test", test_fraction=test_fraction, split_passages=split_passages)
    chosen = (
        np.linspace(0, len(data.queries) - 1, queries).round().astype(int)
        if queries
        else np.arange(len(data.queries))
    )
    chosen = sorted(set(chosen.tolist()))
    texts, positives = [data.queries[i] for i in chosen], [data.positives[i] for i in chosen]
    log(f"{len(texts)} test queries against {len(data.passages):,} passages")
    rows: dict[str, dict[str, float]] = {}

    start = time.perf_counter()
    rows["BM25 (rank-bm25)"] = retrieval_metrics(bm25_rankings(texts, data.passages, K), positives)
    timings = {"bm25_ms_per_query": 1000 * (time.perf_counter() - start) / len(texts)}

    bert, tokenizer, meta = load_encoder(model)
    identity = encoder_identity(str(model), bert, meta)
    index_path = Path(index_dir) if index_dir else None
    if index_path is not None and (index_path / "index.json").is_file():
        index = SearchIndex.load(index_path)
        index.check_model(identity, path=index_path)
        if index.passages != data.passages:
            raise ConfigError(f"{index_path} indexes another corpus; delete it to rebuild")
    else:
        start = time.perf_counter()
        index = build_index(data.passages, model=model, ids=data.titles)
        timings["index_build_s"] = time.perf_counter() - start
        if index_path is not None:
            index.save(index_path)
    pooling, max_length = meta.get("pooling", "mean"), meta.get("max_length", bert.config.block_size)

    start = time.perf_counter()
    query_vectors = np.concatenate(
        [embed_texts(bert, tokenizer, [t], pooling=pooling, max_length=max_length) for t in texts]
    )
    timings["embed_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(texts)
    start = time.perf_counter()
    for vector in query_vectors:
        index.search(vector[None], rerank_depth)
    timings["exact_search_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(texts)
    _, candidates = index.search(query_vectors, rerank_depth)  # (Q, depth)
    rows[f"bi-encoder ({identity['name']})"] = retrieval_metrics(candidates[:, :K], positives)

    if approximate:
        start = time.perf_counter()
        ann = ApproximateIndex(index.vectors)
        timings["ann_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        found = np.concatenate([ann.search(vector[None], K) for vector in query_vectors])
        timings["ann_search_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(texts)
        timings["ann_recall@10_vs_exact"] = recall_against_exact(found, candidates[:, :K])

    if reranker is not None:
        cross, cross_tokenizer, cross_meta = load_encoder(reranker)
        if cross.config.num_labels != 1:
            raise ConfigError(
                f"{reranker} is not a re-ranker (a BERT with num_labels = 1); "
                "train one with 'lmforge finetune rerank'"
            )
        cross_length = cross_meta.get("reranker", {}).get("max_length", 256)
        start = time.perf_counter()
        reranked = np.empty((len(texts), K), dtype=np.int64)
        for q, text in enumerate(texts):
            scores = cross_encoder_scores(
                cross,
                cross_tokenizer,
                text,
                [data.passages[p] for p in candidates[q]],
                max_length=cross_length,
            )
            reranked[q] = candidates[q][np.argsort(-scores, kind="stable")[:K]]
        timings["rerank_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(texts)
        rows[f"bi-encoder + re-rank top {rerank_depth}"] = retrieval_metrics(reranked, positives)
    return {"queries": len(texts), "passages": len(data.passages), "methods": rows, "timings": timings}


def results_table(results: dict[str, Any]) -> str:
    """The methods as a Markdown table."""
    lines = ["| method | recall@1 | recall@10 | MRR@10 |", "|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['mrr@10']:.3f} |")
    return "\n".join(lines)
