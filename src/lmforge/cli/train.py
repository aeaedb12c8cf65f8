"""`lmforge train`, `lmforge eval`, `lmforge sample`: pretraining, scoring and a quick look at a checkpoint.

`sample` is a quick look at what a checkpoint writes: temperature and top-k through the inference engine,
with a sliding context for long samples. `lmforge generate` exposes every option of that engine.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GPT (or a BERT, masked LM) on a prepared dataset; torchrun for several processes",
        description="Train a GPT from a TOML config. The run directory (train.out_dir) receives config.toml, "
        "metrics.csv,\nevents/ (TensorBoard), plots/*.png and checkpoints/. Under torchrun every process "
        "runs this same\ncommand: DDP or FSDP2 by train.parallel, the global batch is "
        "batch_size x grad_accum_steps x processes.",
        epilog="examples:\n"
        "  lmforge train --config configs/shakespeare-char.toml --set train.max_iters=500 "
        "--set optim.lr=3e-4\n"
        "  torchrun --standalone --nproc_per_node 2 -m lmforge train --config configs/shakespeare-char.toml "
        "--set train.parallel=fsdp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="TOML", help="config file, e.g. configs/shakespeare-char.toml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set optim.lr=3e-4 --set train.max_iters=100",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT_DIR",
        help="continue from the newest checkpoint of the run dir, or from CKPT_DIR",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train.out_dir already holds a run: delete that run's config.toml, metrics.csv, checkpoints/, "
        "events/ and plots/ (nothing else) and start afresh; without it such a directory is refused",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="loss, perplexity and bits-per-byte of a checkpoint on a dataset split or a built-in corpus",
        description="Score a checkpoint on the val and/or test split of a prepared dataset "
        "(by default the dataset it was trained on), or any model (a pretrained one too) on text that "
        "it tokenizes itself: a built-in corpus or a text file (--text-source).",
        epilog="examples:\n"
        "  lmforge eval --ckpt runs/shakespeare-bpe/checkpoints/best\n"
        "  lmforge eval --model smollm2-135m-instruct --text-source wiki-leads --max-tokens 20000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)")
    which.add_argument("--model", metavar="NAME", help="a built-in pretrained model (see 'lmforge models')")
    data = e.add_mutually_exclusive_group()
    data.add_argument(
        "--data", metavar="DIR", help="prepared dataset dir (default: the one recorded in the checkpoint)"
    )
    data.add_argument(
        "--text-source",
        metavar="SOURCE",
        help="score this text instead, tokenized by the model's own tokenizer: a built-in corpus "
        "(shakespeare, python-stdlib, wiki-leads) or a UTF-8 text file",
    )
    e.add_argument(
        "--max-tokens",
        type=int,
        default=50_000,
        metavar="N",
        help="with --text-source: score the first N tokens (default: 50,000)",
    )
    e.add_argument(
        "--block-size",
        type=int,
        default=None,
        metavar="T",
        help="with --text-source: window length (default: the model's context, at most 1024)",
    )
    e.add_argument(
        "--split", choices=("val", "test", "both"), default="val", help="split(s) to score (default: val)"
    )
    e.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default: 8)")
    e.add_argument(
        "--max-batches", type=int, default=0, help="score only this many batches (default: 0 = all)"
    )
    e.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="fp32",
        help="autocast precision (default: fp32)",
    )
    e.set_defaults(func=run_eval)

    s = subparsers.add_parser(
        "sample",
        help="print a few samples from a checkpoint",
        description="Sample text from a checkpoint with temperature and top-k (see 'lmforge generate' "
        "for every sampling option, streaming and stop strings).",
    )
    s.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory")
    s.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    s.add_argument("--num-samples", type=int, default=1, help="how many samples (default: 1)")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens per sample (default: 200)")
    s.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default: 0.8)"
    )
    s.add_argument(
        "--top-k", type=int, default=200, help="sample among the k likeliest tokens (default: 200)"
    )
    s.add_argument("--seed", type=int, default=1337, help="random seed (default: 1337)")
    s.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token text in --prompt (e.g. <|endoftext|>) as that token; without it such "
        "text is refused",
    )
    s.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.training.config import load_config, to_toml
    from lmforge.training.trainer import train_from_config

    config = load_config(args.config, overrides=args.overrides)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    result = train_from_config(config, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports for the job
        return 0
    print(f"done: {result.step} steps ({result.stopped}), last train loss {result.train_loss:.4f}", end="")
    if result.best_eval_loss is not None and (result.run_dir / "checkpoints/best").is_dir():
        print(f", best {config.data.eval_split} loss {result.best_eval_loss:.4f} (checkpoints/best)", end="")
    print(f"\nrun dir: {result.run_dir} (metrics.csv, plots/, events/, checkpoints/)")
    if result.skipped_steps:
        print(f"warning: {result.skipped_steps} steps were skipped for a non-finite loss or gradient")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from lmforge.data.datasets import sequential_windows
    from lmforge.data.shards import load_meta, open_split
    from lmforge.errors import ConfigError
    from lmforge.evaluation.metrics import evaluate_lm
    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training.trainer import autocast_for, resolve_precision

    if args.max_batches < 0:
        raise ConfigError(f"--max-batches={args.max_batches} is invalid; use an integer >= 0 (0 = all)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} is invalid; use an integer >= 1")
    model, tokenizer, meta = load_checkpoint(resolve_checkpoint(args.ckpt, args.model))
    device = torch.device("cpu")
    autocast = autocast_for(device, resolve_precision(args.precision, device))
    if args.text_source is not None:
        return _eval_text(args, model.float(), tokenizer, autocast)
    data = args.data or meta.get("dataset")
    if not data:
        raise ConfigError("the checkpoint does not record its dataset; pass --data DIR")
    data_meta = load_meta(data)
    if data_meta["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ConfigError(f"{data} was tokenized with a different tokenizer than the checkpoint's")
    print(f"{args.ckpt} on {data} ({model.num_params():,} parameters)")
    for split in ("val", "test") if args.split == "both" else (args.split,):
        counts = data_meta["splits"][split]
        windows = sequential_windows(
            open_split(data, split), block_size=model.config.block_size, batch_size=args.batch_size
        )
        m = evaluate_lm(
            model,
            windows,
            max_batches=args.max_batches,
            autocast=autocast,
            bytes_per_token=counts["bytes"] / counts["tokens"] if counts["bytes"] else None,
        )
        scope = "all" if not args.max_batches else f"first {int(m['tokens']):,}"
        line = f"{split}: loss {m['loss']:.4f}  perplexity {m['ppl']:.6g}  accuracy {m['accuracy']:.3f}"
        if "bpb" in m:
            line += f"  bits/byte {m['bpb']:.4f}"
        print(f"{line}  ({scope} of {counts['tokens']:,} tokens)")
    return 0


def _eval_text(args: argparse.Namespace, model: Any, tokenizer: Any, autocast: Any) -> int:
    """Score the first --max-tokens tokens of a built-in corpus or a text file (documents joined by the
    end-of-text token when the tokenizer has one); bits per byte count the UTF-8 bytes those tokens
    decode to."""
    import numpy as np

    from lmforge.data.datasets import sequential_windows
    from lmforge.data.sources import SourceReader
    from lmforge.errors import ConfigError
    from lmforge.evaluation.metrics import evaluate_lm

    if args.max_tokens < 2:
        raise ConfigError(f"--max-tokens={args.max_tokens} is invalid; use an integer >= 2")
    block = args.block_size or min(model.config.block_size, 1024)
    if not 1 <= block <= model.config.block_size:
        raise ConfigError(f"--block-size={block} is invalid; use 1..{model.config.block_size}")
    ids: list[int] = []
    for document in SourceReader(args.text_source):
        ids += tokenizer.encode_ordinary(document.text)
        if tokenizer.eot_id is not None:
            ids.append(tokenizer.eot_id)
        if len(ids) >= args.max_tokens:
            break
    tokens = np.asarray(ids[: args.max_tokens], dtype=np.int64)
    if len(tokens) < 2:
        raise ConfigError(f"--text-source {args.text_source}: not enough text to score")
    n_bytes = len(tokenizer.decode_bytes(tokens[1:].tolist()))  # the bytes of the scored (target) tokens
    m = evaluate_lm(
        model,
        sequential_windows(tokens, block_size=block, batch_size=args.batch_size),
        max_batches=args.max_batches,
        autocast=autocast,
        bytes_per_token=n_bytes / (len(tokens) - 1),
    )
    name = args.model or args.ckpt
    print(f"{name} ({model.num_params():,} parameters) on {args.text_source}, windows of {block} tokens")
    print(
        f"loss {m['loss']:.4f}  perplexity {m['ppl']:.6g}  accuracy {m['accuracy']:.3f}  "
        f"bits/byte {m['bpb']:.4f}  ({int(m['tokens']):,} tokens scored)"
    )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.inference import Engine, SamplingParams, for_cpu_inference
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.tokenizers.base import encode_user_text

    model, tokenizer, _ = load_checkpoint(args.ckpt)
    model = for_cpu_inference(model, copy=False)  # loaded only to sample
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    start = encode_user_text(tokenizer, args.prompt, allow_special=args.allow_special) if args.prompt else []
    start = start or [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
    # "sliding": a sample longer than the context keeps going on its most recent tokens.
    rows = Engine(model, context="sliding").generate(
        [start], params, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples
    )
    for i, row in enumerate(rows):
        if i:
            print("---")
        print(args.prompt + tokenizer.decode(row))
    return 0
