"""`lmforge embed ...` and `lmforge fill-mask`: what a BERT does with text, from the terminal.

`embed` is a command group: each kind of embedding is a subcommand registered in `EMBED_SUBCOMMANDS`
below (`embed text`, sentence vectors from a BERT; `embed train-words | neighbors | analogy`, static word
vectors, from `cli/words.py`). A new kind adds its own `register_*(commands)` function, in this module or
its own, and one entry to that tuple; nothing else changes. Parsing and printing only: the work is in
`lmforge.inference.encoder`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lmforge.cli.words import add_word_commands


def _add_model_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--ckpt", metavar="DIR", help="a BERT checkpoint directory (model.safetensors + meta.json)"
    )
    which.add_argument(
        "--model",
        metavar="NAME",
        help="a built-in BERT (see 'lmforge models'; default for embed: all-minilm-l6-v2)",
    )


def register_text(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "text",
        help="sentence embeddings of texts or files with a BERT (mean pooling, L2-normalised)",
        description="Embed texts with a BERT: [CLS] text [SEP] through the encoder, the mean of the last "
        "hidden states over real tokens (or [CLS]), L2-normalised, so dot products are cosine "
        "similarities. Texts come from the command line and/or files (.jsonl records with 'text' and an "
        "optional 'id'; any other file: one text per line). With --out the vectors are saved (.npy plus "
        "<stem>.ids.json, or .safetensors with the ids in its metadata); without it the cosine "
        "similarities of the texts are printed.",
        epilog="examples:\n"
        '  lmforge embed text "A man is playing a guitar." "Someone plays music." "The stock market fell."\n'
        "  lmforge embed text --input leads.jsonl --out leads.safetensors --precision bf16\n"
        "  lmforge embed text --ckpt runs/bert-mlm-wiki/checkpoints/best --input notes.txt --out notes.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--input", nargs="+", default=[], metavar="FILE", help="files of texts (.jsonl or lines)")
    _add_model_options(p)
    p.add_argument("--out", metavar="FILE", help="write the vectors here (.npy or .safetensors)")
    p.add_argument("--pooling", choices=("mean", "cls"), help="default: what the model records, else mean")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--max-length", type=int, help="tokens per text, [CLS]/[SEP] included (default: the model's)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 is faster on CPUs with AVX-512-BF16 or AMX (vectors agree with fp32 to ~1e-2)",
    )
    p.set_defaults(func=run_text)


# Every `lmforge embed SUBCOMMAND`: (register function) in the order `lmforge embed --help` lists them.
EMBED_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    register_text,
    add_word_commands,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="turn text into vectors (embed text: sentence embeddings with a BERT)",
        description="Embeddings. 'lmforge embed text' gives sentence vectors from a BERT "
        "(all-minilm-l6-v2 by default).",
        epilog="Run 'lmforge embed SUBCOMMAND --help' for its options.",
    )
    commands = p.add_subparsers(dest="embed_command", metavar="SUBCOMMAND", required=True)
    for register_subcommand in EMBED_SUBCOMMANDS:
        register_subcommand(commands)

    f = subparsers.add_parser(
        "fill-mask",
        help="the likeliest fillers of each [MASK] in a text, with a BERT's masked-LM head",
        description="Predict the tokens at each [MASK] of TEXT with a BERT's masked-LM head and print the "
        "top-k with their probabilities (softmax over the whole vocabulary). The model needs an MLM head: "
        "one pretrained with 'lmforge train' (model.architecture = \"bert\") or converted from a "
        "Hugging Face BertForMaskedLM. Sentence encoders such as all-minilm-l6-v2 have none.",
        epilog='example: lmforge fill-mask --ckpt runs/bert-mlm-wiki/checkpoints/best "The capital of France '
        'is [MASK]."',
    )
    f.add_argument("text", metavar="TEXT", help="text with one or more [MASK]")
    _add_model_options(f)
    f.add_argument("--top-k", type=int, default=5, help="fillers to show per [MASK] (default: 5)")
    f.set_defaults(func=run_fill_mask)


def _model_argument(args: argparse.Namespace, default: str | None) -> str:
    from lmforge.errors import ConfigError

    if args.ckpt is None and args.model is None and default is None:
        raise ConfigError("give --ckpt DIR (a BERT checkpoint) or --model NAME (see 'lmforge models')")
    return args.ckpt or args.model or default


def run_text(args: argparse.Namespace) -> int:
    from lmforge.errors import ConfigError
    from lmforge.inference.encoder import embed, read_texts, save_embeddings

    ids, texts = read_texts(args.input)
    ids = [f"arg:{i}" for i in range(len(args.texts))] + ids
    texts = list(args.texts) + texts
    if not texts:
        raise ConfigError("nothing to embed: give TEXT arguments or --input FILE")
    model = _model_argument(args, "all-minilm-l6-v2")
    vectors = embed(
        texts,
        model,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        precision=args.precision,
    )
    if args.out:
        meta = {"model": str(model), "pooling": args.pooling or "model default", "normalized": "true"}
        written = save_embeddings(args.out, vectors, ids, meta)
        print(
            f"wrote {len(texts):,} embeddings of width {vectors.shape[1]} to {', '.join(map(str, written))}"
        )
        return 0
    if len(texts) > 20:
        raise ConfigError(f"{len(texts)} texts: give --out FILE to save them (the similarity table shows 20)")
    print(f"{len(texts)} embeddings of width {vectors.shape[1]} ({model}); cosine similarities:")
    similarity = vectors @ vectors.T
    for i, text in enumerate(texts):
        row = " ".join(f"{similarity[i, j]:6.3f}" for j in range(len(texts)))
        print(f"  [{i}] {row}  {text[:60]}")
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    from lmforge.inference.encoder import fill_mask, load_encoder

    model, tokenizer, meta = load_encoder(_model_argument(args, None))
    predictions = fill_mask(model, tokenizer, args.text, mask_id=meta.get("mask_id"), top_k=args.top_k)
    for n, fillers in enumerate(predictions, start=1):
        print(f"[MASK] {n} of {len(predictions)}:")
        for piece, probability in fillers:
            print(f"  {piece:<16} {probability:.4f}")
    return 0
