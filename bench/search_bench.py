"""Search latency: exact cosine top-k in torch against usearch's HNSW index, at the size of the Wikipedia
leads (10,033 passages) and 10x that, with the HNSW recall@10 against exact.

python bench/search_bench.py [--sizes 10033 100330] [--dim 384] [--queries 200]

With `--index DIR` (an index written by `lmforge search --index`), its real vectors are searched with
queries drawn from its own rows; otherwise random unit vectors of MiniLM's width stand in (latency does
not depend on the values; the recall of HNSW does, so the real index is the figure to quote for recall).
One query at a time, as a user's search runs; median over the queries.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lmforge.inference.search import ApproximateIndex, SearchIndex, cosine_top_k, recall_against_exact


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def measure(name: str, passages: np.ndarray, queries: np.ndarray, k: int = 10) -> None:
    exact_times, exact_rows = [], []
    for query in queries:
        start = time.perf_counter()
        exact_rows.append(cosine_top_k(query[None], passages, k)[1][0])
        exact_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    index = ApproximateIndex(passages)
    build = time.perf_counter() - start
    ann_times, ann_rows = [], []
    for query in queries:
        start = time.perf_counter()
        ann_rows.append(index.search(query[None], k)[0])
        ann_times.append(time.perf_counter() - start)
    recall = recall_against_exact(np.array(ann_rows), np.array(exact_rows))
    print(
        f"| {name} | {len(passages):,} | {1000 * statistics.median(exact_times):.2f} | "
        f"{1000 * statistics.median(ann_times):.3f} | {build:.1f} | {recall:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_033, 100_330])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", help="an index directory of 'lmforge search --index'")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| vectors | passages | exact top-10 ms/query | HNSW ms/query | HNSW build s | HNSW recall@10 |")
    print("|---|---|---|---|---|---|")
    if args.index:
        vectors = SearchIndex.load(args.index).vectors
        noise = unit(
            vectors[rng.integers(len(vectors), size=args.queries)]
            + 0.05 * rng.normal(size=(args.queries, vectors.shape[1]))
        )
        measure(f"index {args.index}", vectors, noise)
    for size in args.sizes:
        measure(
            "random unit",
            unit(rng.normal(size=(size, args.dim))),
            unit(rng.normal(size=(args.queries, args.dim))),
        )


if __name__ == "__main__":
    main()
