"""`lmforge recipe arithmetic|induction`: run a complete experiment (data, training, a test of the result).

Parsing and printing only; the recipes live in `lmforge.recipes.arithmetic` and `.induction`.
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

    i = recipes.add_parser(
        "induction",
        help="train a 1-layer and a 2-layer attention-only GPT; only the second forms induction heads",
        description="Train attention-only GPTs with 1 and 2 layers (induction.layers) on the same random\n"
        "rows with copied spans, then test each on repeated random tokens: the best per-head induction\n"
        "score and the loss on the first copy against the repeat. Writes each run into\n"
        "OUT/layers{n}/, plus OUT/results.json and OUT/plots/induction.png.",
        epilog="example:\n  lmforge recipe induction --out runs/induction",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument(
        "--config",
        default="configs/induction.toml",
        metavar="FILE",
        help="recipe config (default: configs/induction.toml)",
    )
    i.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, parsed as TOML (repeatable): --set train.max_iters=500",
    )
    i.add_argument("--out", default=None, metavar="DIR", help="output directory (default: train.out_dir)")
    i.add_argument(
        "--overwrite",
        action="store_true",
        help="the output directories already hold runs: replace those runs' files",
    )
    i.set_defaults(func=run_induction)


def run_arithmetic(args: argparse.Namespace) -> int:
    import json

    from lmforge.cli.configs import shipped_config
    from lmforge.recipes.arithmetic import RecipeConfig, run_recipe
    from lmforge.training.config import load_config

    # a JSON string is a TOML basic string, so any path survives the override parser
    overrides = list(args.overrides) + ([f"train.out_dir={json.dumps(args.out)}"] if args.out else [])
    run_recipe(
        load_config(shipped_config(args.config), overrides=overrides, sections=RecipeConfig),
        overwrite=args.overwrite,
    )
    return 0


def run_induction(args: argparse.Namespace) -> int:
    import json

    from lmforge.cli.configs import shipped_config
    from lmforge.recipes.induction import RecipeConfig, results_table, run_recipe
    from lmforge.training.config import load_config

    overrides = list(args.overrides) + ([f"train.out_dir={json.dumps(args.out)}"] if args.out else [])
    config = load_config(shipped_config(args.config), overrides=overrides, sections=RecipeConfig)
    print(results_table(run_recipe(config, overwrite=args.overwrite)))
    return 0
