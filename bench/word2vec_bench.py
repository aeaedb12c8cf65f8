"""word2vec benchmark: lmforge's skip-gram with negative sampling against gensim's Word2Vec, trained on the
same sentences with the same settings, scored on WordSim-353 and SimLex-999 (Spearman), side by side.

python bench/word2vec_bench.py [--corpus wiki-leads] [--epochs 5] [--dim 100] [--seeds 0 1]

Both get the sentences of `lmforge.training.word2vec.corpus_sentences` (lowercase words, one sentence per
line) and skip-gram, window 5 (dynamic), 5 negatives drawn from unigram^0.75, subsampling 1e-3, min_count
5, learning rate 0.025 -> 0.0001 linearly. gensim runs with one worker thread (its Hogwild threads would
make the run depend on timing); lmforge in batches of `--batch-size` pairs on torch's threads. Prints a
table of Spearman ρ and wall time per seed, and the nearest neighbours and analogies of each model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lmforge.data.builtin import builtin_documents
from lmforge.evaluation.word_similarity import BENCHMARKS, benchmark_path, evaluate_similarity, read_pairs
from lmforge.models.word2vec import WordVectors
from lmforge.training.word2vec import Word2VecConfig, corpus_sentences, train_word2vec

PROBES = ["king", "music", "river", "war", "france", "computer"]
ANALOGIES = [("man", "king", "woman"), ("france", "paris", "germany"), ("good", "better", "bad")]


def gensim_vectors(sentences: list[list[str]], config: Word2VecConfig) -> WordVectors:
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences,
        vector_size=config.dim,
        window=config.window,
        min_count=config.min_count,
        sg=1,
        hs=0,
        negative=config.negative,
        ns_exponent=config.noise_power,
        sample=config.sample,
        alpha=config.lr,
        min_alpha=config.min_lr,
        epochs=config.epochs,
        seed=config.seed,
        workers=1,
    )
    words = list(model.wv.index_to_key)
    counts = [int(model.wv.get_vecattr(w, "count")) for w in words]
    return WordVectors.from_matrix(words, counts, model.wv.vectors, {"library": "gensim"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="wiki-leads")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    sentences = corpus_sentences(doc.text for doc in builtin_documents(args.corpus))
    print(f"{args.corpus}: {len(sentences):,} sentences, {sum(map(len, sentences)):,} words")
    pairs = {name: read_pairs(benchmark_path(name)) for name in BENCHMARKS}
    rows, models = [], {}
    for seed in args.seeds:
        config = Word2VecConfig(dim=args.dim, epochs=args.epochs, batch_size=args.batch_size, seed=seed)
        for name, train in (
            ("gensim", lambda c=config: gensim_vectors(sentences, c)),
            (
                "lmforge",
                lambda c=config: train_word2vec(sentences, c, corpus=args.corpus, log=lambda _: None),
            ),
        ):
            start = time.perf_counter()
            vectors = train()
            seconds = time.perf_counter() - start
            scores = [evaluate_similarity(vectors, pairs[b], b) for b in BENCHMARKS]
            rows.append((name, seed, seconds, scores))
            models[name] = vectors
            print(
                f"{name} seed {seed}: {seconds:.1f} s, "
                + ", ".join(f"{s.benchmark} {s.spearman:.3f}" for s in scores)
            )

    print("\n| model | seed | vocab | WordSim-353 ρ (pairs) | SimLex-999 ρ (pairs) | train s |")
    print("|---|---|---|---|---|---|")
    for name, seed, seconds, scores in rows:
        cells = " | ".join(f"{s.spearman:.3f} ({s.covered}/{s.total})" for s in scores)
        print(f"| {name} | {seed} | {len(models[name].words):,} | {cells} | {seconds:.1f} |")
    for name in ("gensim", "lmforge"):
        print(
            f"\n{name} (last seed): mean ρ over seeds "
            + ", ".join(
                f"{b} {np.mean([s.spearman for n, _, _, ss in rows if n == name for s in ss if s.benchmark == b]):.3f}"  # noqa: E501
                for b in BENCHMARKS
            )
        )
        vectors = models[name]
        for word in PROBES:
            if word in vectors:
                print(f"  {word}: " + ", ".join(w for w, _ in vectors.nearest(word, 6)))
        for a, b, c in ANALOGIES:
            if all(w in vectors for w in (a, b, c)):
                print(f"  {a} : {b} :: {c} : " + ", ".join(w for w, _ in vectors.analogy(a, b, c, 3)))


if __name__ == "__main__":
    main()
