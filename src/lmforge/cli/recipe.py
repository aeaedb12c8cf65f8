"""`lmforge recipe arithmetic`: run a complete experiment (problems, tokenizer, training, exact-match test).

Parsing and printing only; the recipe lives in `lmforge.recipes.arithmetic`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recipe",
        help="run a complete, reproducible experiment (e.g. teach a small GPT arithmetic)",
        description="Complete experiments that exercise every stage: a purpose-built tokenizer, generated "
        "data, training with lmforge's trainer, and evaluation.",
    )
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    a = recipes.add_parser(
        "arithmetic",
        help="teach a small GPT to add / subtract / multiply and test it by exact match",
        description="Generate arithmetic problems (disjoint train/val/test sets plus out-of-distribution\n"
        "sets with more digits), build a character tokenizer, train a small GPT with the loss on the\n"
        "answer tokens only, then greedily decode every test problem and print exact match per operator\n"
        "and digit count. Writes config.toml, tokenizer.json, metrics.csv, checkpoints/, plots/ (loss and\n"
        "accuracy.png) and results.json into the output directory.",
        epilog="examples:\n"
        "  lmforge recipe arithmetic\n"
        "  lmforge recipe arithmetic --set arithmetic.reverse=false --out runs/arithmetic-plain\n"
        "  lmforge recipe arithmetic --set 'arithmetic.operators=[\"*\"]' \\\n"
        "      --set 'arithmetic.train_digits=[1,2]' --set 'arithmetic.ood_digits=[3]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument(
        "--config",
        default="configs/arithmetic.toml",
        metavar="FILE",
        help="recipe config (default: configs/arithmetic.toml)",
    )
    a.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, parsed as TOML (repeatable): --set train.max_iters=500",
    )
    a.add_argument("--out", default=None, metavar="DIR", help="output directory (default: train.out_dir)")
    a.add_argument(
        "--overwrite",
        action="store_true",
        help="the output directory already holds a run: replace that run's files",
    )
    a.set_defaults(func=run_arithmetic)


def run_arithmetic(args: argparse.Namespace) -> int:
    import json

    from lmforge.recipes.arithmetic import RecipeConfig, run_recipe
    from lmforge.training.config import load_config

    # a JSON string is a TOML basic string, so any path survives the override parser
    overrides = list(args.overrides) + ([f"train.out_dir={json.dumps(args.out)}"] if args.out else [])
    run_recipe(load_config(args.config, overrides=overrides, sections=RecipeConfig), overwrite=args.overwrite)
    return 0
