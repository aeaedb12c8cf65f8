"""`lmforge search`: semantic search over a corpus with a bi-encoder index, optional re-ranking, and the
retrieval evaluation (`--evaluate`).

Parsing and printing only; the index and search live in `lmforge.inference.search`, the evaluation in
`lmforge.recipes.retrieval`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="semantic search over a corpus (bi-encoder index, exact cosine top-k, --rerank); --evaluate",
        description="Embed a corpus once into an index (--index DIR keeps it: built on first use, loaded "
        "after) and print the k passages closest to QUERY by cosine similarity, with their scores. "
        "--rerank re-orders the top --rerank-depth candidates with a cross-encoder. --evaluate instead "
        "scores BM25, the bi-encoder and the re-ranker on Wikipedia-lead queries (recall@1/@10, MRR@10).",
        epilog="examples:\n"
        "  lmforge search 'a large cat that lives in Africa' --corpus wiki-leads --index runs/wiki-index\n"
        "  lmforge search 'who wrote Hamlet' --index runs/wiki-index --rerank runs/rerank/model\n"
        "  lmforge search --evaluate --queries 200 --rerank runs/rerank/model --index runs/eval-index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument(
        "--corpus",
        default="wiki-leads",
        help="wiki-leads (one passage per article) or a UTF-8 text file with one passage per line",
    )
    p.add_argument("--index", type=Path, metavar="DIR", help="index directory: built if missing, then reused")
    p.add_argument(
        "--model", default="all-minilm-l6-v2", help="built-in encoder or BERT checkpoint directory"
    )
    p.add_argument("-k", type=int, default=5, help="results to print (default 5)")
    p.add_argument(
        "--rerank", metavar="DIR", help="cross-encoder checkpoint (model/ of 'lmforge finetune rerank')"
    )
    p.add_argument(
        "--rerank-depth", type=int, default=20, help="bi-encoder candidates re-ranked (default 20)"
    )
    p.add_argument(
        "--approximate", action="store_true", help="search an HNSW index (usearch) instead of exactly"
    )
    p.add_argument("--evaluate", action="store_true", help="run the retrieval evaluation instead of a search")
    p.add_argument("--queries", type=int, default=200, help="--evaluate: test queries scored (0 = all)")
    p.add_argument(
        "--test-passages",
        action="store_true",
        help="--evaluate: search only the test articles' passages (a fifth of the corpus; faster)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="--evaluate: share of the articles in the test split (default 0.2, as the re-ranker's config)",
    )
    p.add_argument("--json", action="store_true", help="--evaluate: print the results as JSON")
    p.set_defaults(func=run_search)


def _corpus(corpus: str) -> tuple[list[str], list[str]]:
    """(passages, ids) of the wiki-leads or of a text file (one passage per non-empty line)."""
    from lmforge.data.builtin import wiki_documents
    from lmforge.errors import DataError

    if corpus == "wiki-leads":
        docs = list(wiki_documents())
        return [d.text.strip().replace("\n", " ", 1) for d in docs], [d.name.split("/", 1)[1] for d in docs]
    path = Path(corpus)
    if not path.is_file():
        raise DataError(f"--corpus {corpus!r} is neither wiki-leads nor a file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    numbered = [(f"line {n}", line) for n, line in enumerate(lines, 1) if line]
    if not numbered:
        raise DataError(f"{path}: the corpus is empty (no non-empty lines)")
    return [text for _, text in numbered], [name for name, _ in numbered]


def run_search(args: argparse.Namespace) -> int:
    from lmforge.errors import ConfigError

    if args.k < 1 or args.rerank_depth < 1:
        raise ConfigError("-k and --rerank-depth must be at least 1")
    if args.evaluate:
        return _evaluate(args)
    if args.query is None or not args.query.strip():
        raise ConfigError("give a non-empty QUERY (or --evaluate)")
    import numpy as np

    from lmforge.inference.encoder import embed_texts, load_encoder
    from lmforge.inference.search import ApproximateIndex, SearchIndex, build_index, encoder_identity, rerank

    bert, tokenizer, meta = load_encoder(args.model)
    identity = encoder_identity(args.model, bert, meta)
    if args.index is not None and (args.index / "index.json").is_file():
        index = SearchIndex.load(args.index)
        index.check_model(identity, path=args.index)
    else:
        passages, ids = _corpus(args.corpus)
        print(f"embedding {len(passages):,} passages with {args.model} ...", file=sys.stderr)
        index = build_index(passages, model=args.model, ids=ids)
        if args.index is not None:
            index.save(args.index)
            print(f"wrote {args.index}", file=sys.stderr)
    query = embed_texts(
        bert,
        tokenizer,
        [args.query],
        pooling=meta.get("pooling", "mean"),
        max_length=meta.get("max_length", bert.config.block_size),
    )
    depth = max(args.k, args.rerank_depth) if args.rerank else args.k
    if args.approximate:
        rows = ApproximateIndex(index.vectors).search(query, depth)[0]
        rows = rows[rows >= 0]
        scores = index.vectors[rows] @ query[0]
    else:
        scores, rows = (a[0] for a in index.search(query, depth))
    label = "cosine"
    if args.rerank:
        cross, cross_tokenizer, cross_meta = load_encoder(args.rerank)
        if cross.config.num_labels != 1:
            raise ConfigError(f"--rerank {args.rerank} is not a re-ranker (a BERT with num_labels = 1)")
        order, scores = rerank(
            cross,
            cross_tokenizer,
            args.query,
            [index.passages[r] for r in rows],
            max_length=cross_meta.get("reranker", {}).get("max_length", 256),
        )
        rows, label = np.asarray(rows)[order], "re-rank logit"
    for rank, (row, score) in enumerate(zip(rows[: args.k], scores[: args.k], strict=False), 1):
        text = index.passages[row]
        print(
            f"{rank}. [{label} {score:.3f}] {index.ids[row]}: {text[:160]}{'...' if len(text) > 160 else ''}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lmforge.recipes.retrieval import evaluate_retrieval, results_table

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    results = evaluate_retrieval(
        model=args.model,
        reranker=args.rerank,
        queries=args.queries,
        rerank_depth=args.rerank_depth,
        index_dir=args.index,
        approximate=args.approximate,
        split_passages=args.test_passages,
        test_fraction=args.test_fraction,
        log=log,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(results_table(results))
    print("timings: " + ", ".join(f"{k} {v:.3g}" for k, v in results["timings"].items()))
    return 0
