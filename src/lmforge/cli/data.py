"""`lmforge data`: prepare a tokenized dataset directory from raw sources, and inspect one.

Parsing and printing only; the work is `lmforge.data.prepare.prepare`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

BUILTIN_TOKENIZER = "all-minilm-l6-v2"  # --tokenizer may name this built-in encoder's WordPiece vocabulary

PREPARE_EPILOG = """\
sources:
  a built-in corpus (shakespeare, python-stdlib), a text file (one document), a .jsonl/.ndjson file
  (one document per record, text in --text-field), a .parquet file (one document per row), a
  directory (every non-hidden file below it) or a quoted glob pattern ('data/**/*.md').

output (DIR):
  train.bin, val.bin, test.bin (if --test > 0): little-endian uint16/uint32 token ids, each document
  followed by <|endoftext|>; meta.json (dtype, tokenizer, counts, sources, command); report.txt.
  The directory appears only when complete.

examples:
  lmforge data prepare --source shakespeare --tokenizer tok.json --out data/shakespeare --val 0.1
  lmforge data prepare --source wiki-leads --tokenizer all-minilm-l6-v2 --out data/wiki-bert --val 0.05
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="prepare tokenized datasets (clean, dedup, split, shard)",
        description="Turn raw text into a clean, deduplicated, split and tokenized dataset directory.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prep = sub.add_parser(
        "prepare",
        help="sources -> cleaned, deduplicated, split, tokenized shards",
        description="Read sources, clean and filter documents, remove exact and near duplicates, split "
        "by document hash, tokenize, and write memory-mappable shards plus meta.json and a report.",
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="PATH_OR_BUILTIN",
        help="a file, directory, glob pattern, or built-in corpus; repeat for several",
    )
    prep.add_argument(
        "--text-field", default="text", help="JSONL field / Parquet column holding the text (default: text)"
    )
    prep.add_argument(
        "--tokenizer",
        required=True,
        metavar="TOKENIZER_JSON",
        help="path of a tokenizer.json (any kind lmforge saves, or a Hugging Face one), or "
        f"{BUILTIN_TOKENIZER} for that built-in encoder's WordPiece vocabulary (BERT's uncased 30,522 "
        "entries); needs <|endoftext|> ([SEP] for WordPiece)",
    )
    prep.add_argument("--out", required=True, metavar="DIR", help="the dataset directory to create")
    prep.add_argument("--val", type=float, default=0.05, help="fraction of documents for val (default: 0.05)")
    prep.add_argument("--test", type=float, default=0.0, help="fraction of documents for test (default: 0)")
    prep.add_argument(
        "--dedup",
        choices=("none", "exact", "near"),
        default="near",
        help="remove exact duplicates, or exact and near duplicates (default: near)",
    )
    prep.add_argument(
        "--near-threshold",
        type=float,
        default=0.8,
        help="Jaccard similarity of word 3-gram sets counted as near duplicate (default: 0.8)",
    )
    prep.add_argument("--seed", type=int, default=0, help="seed of the split assignment (default: 0)")
    prep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tokenizer processes; 1 encodes in-process with tiktoken's threads (default: 1)",
    )
    prep.add_argument(
        "--on-bad-record",
        choices=("skip", "fail"),
        default="skip",
        help="malformed JSONL line / missing field / null value: skip and report it, or stop (default: skip)",
    )
    prep.add_argument("--overwrite", action="store_true", help="replace DIR if it exists (at the very end)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars and no printed report")
    filters = prep.add_argument_group("cleaning and quality filters (a filter without a value is off)")
    filters.add_argument("--lowercase", action="store_true", help="lowercase all text")
    filters.add_argument("--min-chars", type=int, default=1, help="drop shorter documents (default: 1)")
    filters.add_argument("--max-chars", type=int, help="drop longer documents")
    filters.add_argument(
        "--min-alpha",
        type=float,
        metavar="FRACTION",
        help="drop documents whose letters / non-space characters is below this",
    )
    filters.add_argument(
        "--max-dup-lines",
        type=float,
        metavar="FRACTION",
        help="drop documents with more than this fraction of repeated lines",
    )
    filters.add_argument(
        "--max-line-length", type=int, metavar="CHARS", help="drop documents with a longer line"
    )
    prep.set_defaults(func=run_prepare)

    info = sub.add_parser(
        "info",
        help="check a prepared dataset and print its report",
        description="Validate meta.json and the split files of DIR, then print its report.",
    )
    info.add_argument("dir", metavar="DIR", help="a directory written by 'lmforge data prepare'")
    info.set_defaults(func=run_info)


def run_prepare(args: argparse.Namespace) -> int:
    from lmforge.data.clean import CleanConfig
    from lmforge.data.dedup import DedupConfig
    from lmforge.data.prepare import prepare

    clean = CleanConfig(
        lowercase=args.lowercase,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        min_alpha_fraction=args.min_alpha,
        max_dup_line_fraction=args.max_dup_lines,
        max_line_length=args.max_line_length,
    )
    tokenizer = args.tokenizer
    if tokenizer == BUILTIN_TOKENIZER and not Path(tokenizer).exists():
        from lmforge.models.builtin import minilm_dir

        tokenizer = minilm_dir() / "tokenizer.json"
    prepare(
        args.source,
        tokenizer=tokenizer,
        out=args.out,
        text_field=args.text_field,
        on_bad_record=args.on_bad_record,
        clean=clean,
        dedup=DedupConfig(mode=args.dedup, threshold=args.near_threshold),
        val=args.val,
        test=args.test,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        command=_command_line(args),
        verbose=not args.quiet,
    )
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The equivalent command with every option spelled out, for meta.json (reproducible as is)."""
    parts = ["lmforge", "data", "prepare"]
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key in ("func", "command", "data_command", "quiet") or value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                parts += [flag, str(item)]
    return shlex.join(parts)


def run_info(args: argparse.Namespace) -> int:
    from lmforge.data.prepare import format_report
    from lmforge.data.shards import SPLITS, check_token_ids, load_meta, open_split
    from lmforge.tokenizers import tokenizer_from_dict

    meta = load_meta(args.dir)
    vocab_size = tokenizer_from_dict(meta["tokenizer"], source=Path(args.dir) / "meta.json").vocab_size
    for split in SPLITS:
        if meta["splits"][split]["tokens"]:
            # the file size must match meta.json, and every id must be one of the tokenizer's
            check_token_ids(args.dir, split, open_split(args.dir, split), vocab_size)
    fingerprint = meta["tokenizer_fingerprint"][:16]
    print(f"{Path(args.dir)}: format {meta['format_version']}, tokenizer {fingerprint}")
    if meta.get("command"):
        print(f"made by: {meta['command']}")
    print(format_report(meta), end="")
    return 0
