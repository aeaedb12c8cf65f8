"""Search latency per query (p50 and p95): exact cosine top-k in torch against usearch's HNSW index, over
the index of all Wikipedia leads and over random vectors of its size and 10x that, with HNSW recall@10
against exact, and the time to embed the query itself.

python bench/search_bench.py [--index DIR] [--sizes 10033 100330] [--dim 384] [--queries 200]
                             [--embed-queries 50]

With `--index DIR` (an index written by `lmforge search --index`, e.g. of all leads:
`lmforge search "..." --corpus wiki-leads --index DIR`), its real vectors are searched with real queries:
the first sentences of Wikipedia leads (the retrieval evaluation's queries, docs/search.md), embedded by
the index's model; the first `--embed-queries` of them are timed one at a time through the encoder,
loaded once (the query side of a search). Random unit vectors of MiniLM's width stand in for the
`--sizes` rows (latency does not depend on the values; the recall of HNSW does, so the real index is the
figure to quote for recall). One query at a time, as a user's search runs; after one warm-up query.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmforge.inference.search import ApproximateIndex, SearchIndex, cosine_top_k, recall_against_exact


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def percentiles_ms(times: list[float]) -> str:
    """'p50 / p95' in milliseconds of per-query times in seconds."""
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return f"{p50:.3g} / {p95:.3g}"


def timed(fn: Callable[[Any], np.ndarray], queries: Sequence[Any]) -> tuple[list[float], np.ndarray]:
    """Per-query seconds and the stacked results of `fn` on one query at a time, after a warm-up call."""
    fn(queries[0])
    times, results = [], []
    for query in queries:
        start = time.perf_counter()
        results.append(fn(query))
        times.append(time.perf_counter() - start)
    return times, np.array(results)


def measure(name: str, passages: np.ndarray, queries: np.ndarray, k: int = 10) -> None:
    exact_times, exact_rows = timed(lambda q: cosine_top_k(q[None], passages, k)[1][0], queries)
    start = time.perf_counter()
    index = ApproximateIndex(passages)
    build = time.perf_counter() - start
    ann_times, ann_rows = timed(lambda q: index.search(q[None], k)[0], queries)
    recall = recall_against_exact(ann_rows, exact_rows)
    print(
        f"| {name} | {len(passages):,} | {percentiles_ms(exact_times)} | {percentiles_ms(ann_times)} | "
        f"{build:.1f} | {recall:.3f} |",
        flush=True,
    )


def lead_queries(n: int) -> list[str]:
    """The first sentences of n Wikipedia leads (every lead of 3+ sentences, in corpus order)."""
    from lmforge.evaluation.retrieval import wiki_retrieval_set

    return wiki_retrieval_set("all").queries[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_033, 100_330])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", help="an index directory of 'lmforge search --index'")
    parser.add_argument("--embed-queries", type=int, default=50, help="with --index: queries embedded, timed")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    query_vectors = None
    if args.index:
        from lmforge.inference.encoder import embed_texts, load_encoder

        index = SearchIndex.load(args.index)
        bert, tokenizer, meta = load_encoder(index.model["name"])  # once, as `lmforge search` does

        def embed(texts: list[str]) -> np.ndarray:
            max_length = meta.get("max_length", bert.config.block_size)
            return embed_texts(
                bert, tokenizer, texts, pooling=meta.get("pooling", "mean"), max_length=max_length
            )

        texts = lead_queries(args.queries)
        embed_times, _ = timed(lambda text: embed([text])[0], texts[: args.embed_queries])
        query_vectors = embed(texts)  # (Q, D), in batches
        print(
            f"query embedding ({index.model['name']}, one at a time, {len(embed_times)} first sentences "
            f"of leads): p50 / p95 {percentiles_ms(embed_times)} ms"
        )
    print("| vectors | passages | exact top-10 ms/query p50 / p95 | HNSW ms/query p50 / p95 | HNSW build s | "
          "HNSW recall@10 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    if args.index:
        measure(f"index {args.index}", index.vectors, query_vectors)
    for size in args.sizes:
        measure(
            "random unit",
            unit(rng.normal(size=(size, args.dim))),
            unit(rng.normal(size=(args.queries, args.dim))),
        )


if __name__ == "__main__":
    main()
