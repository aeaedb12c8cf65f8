"""`lmforge demo`: the main job on built-in data (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the built-in demo on the Shakespeare corpus",
        description="Train a BPE tokenizer on the built-in Shakespeare corpus and print statistics.",
    )
    p.add_argument("--out", default="runs/demo", help="directory for the demo's outputs (default: runs/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.data.builtin import builtin_text

    text = builtin_text("shakespeare")
    print(f"shakespeare: {len(text):,} characters")
    return 0
