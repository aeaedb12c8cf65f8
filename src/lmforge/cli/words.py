"""`lmforge embed train-words | neighbors | analogy`: static word vectors (word2vec skip-gram).

Parsing and printing only; training lives in `lmforge.training.word2vec`, the vectors in
`lmforge.models.word2vec`, the similarity benchmarks in `lmforge.evaluation.word_similarity`.
`add_word_commands(subparsers)` adds the three subcommands to the `embed` command's subparsers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROBES = ("king", "music", "river", "war")


def add_word_commands(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train-words",
        help="train word2vec (skip-gram, negative sampling) on a corpus; score it on WordSim-353, SimLex-999",
        description="Train static word vectors with skip-gram and negative sampling (subsampling, "
        "unigram^0.75 noise, dynamic window, linear learning-rate decay, as word2vec.c). Writes "
        "vectors.safetensors and words.json to --out, then prints the Spearman correlation on "
        "WordSim-353 and SimLex-999 (when gensim's test data is installed) and nearest neighbours.",
        epilog="example:\n  lmforge embed train-words --corpus wiki-leads --out runs/words --epochs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--corpus",
        default="wiki-leads",
        help="built-in corpus (shakespeare, python-stdlib, wiki-leads) or a UTF-8 text file",
    )
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the vectors")
    t.add_argument("--dim", type=int, default=100, help="vector size (default 100)")
    t.add_argument("--window", type=int, default=5, help="largest context distance (default 5)")
    t.add_argument("--negative", type=int, default=5, help="noise words per pair (default 5)")
    t.add_argument("--min-count", type=int, default=5, help="drop rarer words (default 5)")
    t.add_argument("--sample", type=float, default=1e-3, help="subsampling threshold (default 1e-3; 0: off)")
    t.add_argument("--epochs", type=int, default=5, help="passes over the corpus (default 5)")
    t.add_argument("--lr", type=float, default=0.025, help="starting learning rate (default 0.025)")
    t.add_argument("--batch-size", type=int, default=1024, help="word pairs per SGD step (default 1024)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train_words)

    n = subparsers.add_parser(
        "neighbors",
        help="the nearest words of trained word vectors",
        description="Print the words closest by cosine to each given word.",
        epilog="example:\n  lmforge embed neighbors runs/words king music",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument("vectors", type=Path, metavar="DIR", help="output directory of train-words")
    n.add_argument("words", nargs="+", metavar="WORD")
    n.add_argument("-k", type=int, default=8, help="neighbours per word (default 8)")
    n.set_defaults(func=run_neighbors)

    a = subparsers.add_parser(
        "analogy",
        help="A is to B as C is to ?, by vector arithmetic (B - A + C)",
        description="Solve 'A is to B as C is to ?' with the words nearest to B - A + C (3CosAdd; A, B "
        "and C themselves excluded).",
        epilog="example:\n  lmforge embed analogy runs/words man king woman",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("vectors", type=Path, metavar="DIR", help="output directory of train-words")
    a.add_argument("a", metavar="A")
    a.add_argument("b", metavar="B")
    a.add_argument("c", metavar="C")
    a.add_argument("-k", type=int, default=5, help="answers to print (default 5)")
    a.set_defaults(func=run_analogy)


def _corpus_texts(corpus: str) -> list[str]:
    from lmforge.data.builtin import BUILTIN_NAMES, builtin_documents
    from lmforge.errors import DataError

    if corpus in BUILTIN_NAMES:
        return [doc.text for doc in builtin_documents(corpus)]
    path = Path(corpus)
    if not path.is_file():
        raise DataError(
            f"--corpus {corpus!r} is neither a built-in corpus ({', '.join(BUILTIN_NAMES)}) nor a file"
        )
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def run_train_words(args: argparse.Namespace) -> int:
    from lmforge.errors import DataError, LmforgeError
    from lmforge.evaluation.word_similarity import evaluate_benchmarks
    from lmforge.training.word2vec import Word2VecConfig, corpus_sentences, train_word2vec

    config = Word2VecConfig(
        dim=args.dim,
        window=args.window,
        negative=args.negative,
        min_count=args.min_count,
        sample=args.sample,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    sentences = corpus_sentences(_corpus_texts(args.corpus))
    if not sentences:
        raise DataError(f"--corpus {args.corpus}: no words in it")
    vectors = train_word2vec(sentences, config, corpus=args.corpus)
    vectors.save(args.out)
    print(
        f"wrote {args.out / 'vectors.safetensors'} and words.json "
        f"({len(vectors.words):,} words x {config.dim})"
    )
    try:
        for score in evaluate_benchmarks(vectors):
            print(
                f"{score.benchmark}: Spearman {score.spearman:.3f} over {score.covered}/{score.total} pairs"
            )
    except LmforgeError as e:  # the benchmarks are optional (gensim's test data)
        print(f"(no similarity scores: {e})")
    for word in (w for w in PROBES if w in vectors):
        print(f"{word}: " + ", ".join(f"{w} {s:.2f}" for w, s in vectors.nearest(word, 6)))
    return 0


def run_neighbors(args: argparse.Namespace) -> int:
    from lmforge.models.word2vec import WordVectors

    vectors = WordVectors.load(args.vectors)
    for word in args.words:
        print(f"{word}: " + ", ".join(f"{w} {s:.3f}" for w, s in vectors.nearest(word.lower(), args.k)))
    return 0


def run_analogy(args: argparse.Namespace) -> int:
    from lmforge.models.word2vec import WordVectors

    vectors = WordVectors.load(args.vectors)
    a, b, c = args.a.lower(), args.b.lower(), args.c.lower()
    answers = vectors.analogy(a, b, c, args.k)
    print(f"{a} : {b} :: {c} : " + ", ".join(f"{w} {s:.3f}" for w, s in answers))
    return 0
