"""`lmforge demo`: the main job on built-in data (what `make demo` runs).

For now: train a byte-level BPE tokenizer on the built-in Shakespeare corpus (all plays but one),
save it, and print its statistics measured on the held-out play.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the built-in demo on the Shakespeare corpus",
        description="Train a BPE tokenizer on the built-in Shakespeare corpus (one play held out), save it "
        "under --out and print its statistics.",
    )
    p.add_argument("--out", default="runs/demo", help="directory for the demo's outputs (default: runs/demo)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size (default 4096)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from lmforge.cli.tokenizer import describe
    from lmforge.data.builtin import builtin_documents
    from lmforge.tokenizers import BPETokenizer

    documents = list(builtin_documents("shakespeare"))
    train, held_out = documents[:-1], documents[-1]
    n_chars = sum(len(d.text) for d in train)
    print(
        f"shakespeare: training on {len(train)} plays ({n_chars:,} characters), holding out {held_out.name}"
    )
    start = time.perf_counter()
    tokenizer = BPETokenizer.train((d.text for d in train), vocab_size=args.vocab_size, pattern="gpt4")
    seconds = time.perf_counter() - start
    path = Path(args.out) / "tokenizer.json"
    tokenizer.save(path)
    print(
        f"trained {len(tokenizer.merges):,} merges in {seconds:.2f} s "
        f"({len(tokenizer.merges) / seconds:,.0f} merges/s, pre-tokenization included); saved {path}"
    )
    print(f"held-out play {held_out.name}:")
    print(describe(tokenizer, held_out.text, top=10, color=sys.stdout.isatty()))
    return 0
