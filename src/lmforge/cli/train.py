"""`lmforge train`, `lmforge eval`, `lmforge sample`: pretraining, scoring and a quick look at a checkpoint.

`sample` is a quick look at what a checkpoint writes: temperature and top-k through the inference engine,
with a sliding context for long samples. `lmforge generate` exposes every option of that engine.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GPT on a prepared dataset (config file + overrides)",
        description="Train a GPT from a TOML config. The run directory (train.out_dir) receives config.toml, "
        "metrics.csv, events/ (TensorBoard), plots/*.png and checkpoints/.",
        epilog="example: lmforge train --config configs/shakespeare-char.toml --set train.max_iters=500 "
        "--set optim.lr=3e-4",
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
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="loss, perplexity and bits-per-byte of a checkpoint on a dataset split",
        description="Score a checkpoint on the val and/or test split of a prepared dataset "
        "(by default the dataset it was trained on).",
    )
    e.add_argument(
        "--ckpt", required=True, metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)"
    )
    e.add_argument(
        "--data", metavar="DIR", help="prepared dataset dir (default: the one recorded in the checkpoint)"
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
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature, > 0 (default: 0.8)")
    s.add_argument(
        "--top-k", type=int, default=200, help="sample among the k likeliest tokens (default: 200)"
    )
    s.add_argument("--seed", type=int, default=1337, help="random seed (default: 1337)")
    s.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.training.config import load_config, to_toml
    from lmforge.training.trainer import train_from_config

    config = load_config(args.config, overrides=args.overrides)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    result = train_from_config(config, resume=args.resume)
    print(f"done: {result.step} steps ({result.stopped}), last train loss {result.train_loss:.4f}", end="")
    if result.best_eval_loss is not None:
        print(f", best {config.data.eval_split} loss {result.best_eval_loss:.4f}", end="")
    print(f"\nrun dir: {result.run_dir} (metrics.csv, plots/, events/, checkpoints/)")
    if result.skipped_steps:
        print(f"warning: {result.skipped_steps} steps were skipped for a non-finite loss or gradient")
    return 0


def _load(ckpt: str):  # -> (model, tokenizer, meta)
    from lmforge.errors import FormatError
    from lmforge.models import checkpoint_meta
    from lmforge.tokenizers import tokenizer_from_dict
    from lmforge.training.checkpoint import load_model

    model = load_model(ckpt)
    meta = checkpoint_meta(ckpt)
    if not isinstance(meta.get("tokenizer"), dict):
        raise FormatError(
            f"{ckpt}/meta.json", "has no 'tokenizer'; this checkpoint was not written by the trainer"
        )
    return model.eval(), tokenizer_from_dict(meta["tokenizer"]), meta


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from lmforge.data.datasets import sequential_windows
    from lmforge.data.shards import load_meta, open_split
    from lmforge.errors import ConfigError
    from lmforge.evaluation.metrics import evaluate_lm
    from lmforge.training.trainer import autocast_for, resolve_precision

    model, tokenizer, meta = _load(args.ckpt)
    data = args.data or meta.get("dataset")
    if not data:
        raise ConfigError("the checkpoint does not record its dataset; pass --data DIR")
    data_meta = load_meta(data)
    if data_meta["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ConfigError(f"{data} was tokenized with a different tokenizer than the checkpoint's")
    device = torch.device("cpu")
    autocast = autocast_for(device, resolve_precision(args.precision, device))
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
        line = f"{split}: loss {m['loss']:.4f}  perplexity {m['ppl']:.2f}  accuracy {m['accuracy']:.3f}"
        if "bpb" in m:
            line += f"  bits/byte {m['bpb']:.4f}"
        print(f"{line}  ({scope} of {counts['tokens']:,} tokens)")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.inference import Engine, SamplingParams, for_cpu_inference

    model, tokenizer, _ = _load(args.ckpt)
    model = for_cpu_inference(model, copy=False)  # loaded only to sample
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    start = tokenizer.encode(args.prompt, allowed_special="all") if args.prompt else []
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
