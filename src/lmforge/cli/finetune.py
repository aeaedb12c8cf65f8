"""`lmforge finetune classify|sft|dpo|distill|rerank` and `lmforge classify`: post-training a checkpoint.

Parsing and printing only; the runs live in `lmforge.training.finetune`.
"""

from __future__ import annotations

import argparse
import json

from lmforge.training.finetune import TASKS

DESCRIPTIONS = {
    "classify": "train a classifier head (and the backbone, last blocks, or LoRA) on labelled texts; score "
    "accuracy, per-class precision/recall/F1 and a confusion matrix on the held-out split",
    "sft": "supervised fine-tuning on conversations through the model's chat format, loss on the "
    "assistant's tokens only",
    "dpo": "direct preference optimization on {prompt, chosen, rejected} pairs against the starting model",
    "distill": "train the model on texts with a frozen teacher's soft targets (finetune.teacher)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="post-train a checkpoint: classification, SFT, DPO, distillation",
        description="Fine-tune a checkpoint (--ckpt DIR) or a built-in model (--model NAME). The run "
        "directory holds config.toml, metrics.csv, plots/, results.json and model/ (a checkpoint the other "
        "commands read).",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS:
        t = tasks.add_parser(
            task,
            help=DESCRIPTIONS[task],
            description=DESCRIPTIONS[task] + ".",
            epilog=f"example:\n  lmforge finetune {task} --config configs/finetune-{task}.toml --ckpt DIR "
            "--lora 8",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        which = t.add_mutually_exclusive_group()
        which.add_argument("--ckpt", metavar="DIR", help="checkpoint to start from")
        which.add_argument(
            "--model", metavar="NAME", help="built-in model to start from (see 'lmforge models')"
        )
        t.add_argument(
            "--config",
            default=f"configs/finetune-{task}.toml",
            metavar="FILE",
            help=f"config (default: configs/finetune-{task}.toml)",
        )
        t.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a config value, parsed as TOML (repeatable): --set train.max_iters=50",
        )
        t.add_argument(
            "--lora",
            type=int,
            default=None,
            metavar="RANK",
            help="train LoRA adapters of this rank instead of the weights (finetune.lora_rank)",
        )
        t.add_argument("--out", default=None, metavar="DIR", help="run directory (default: train.out_dir)")
        t.add_argument("--overwrite", action="store_true", help="the run directory holds a run: replace it")
        t.set_defaults(func=run_finetune)

    r = tasks.add_parser(
        "rerank",
        help="train a cross-encoder re-ranker (BERT, 1-logit head) on Wikipedia-lead query/passage pairs",
        description="Train a cross-encoder on [CLS] query [SEP] passage [SEP] pairs from the Wikipedia leads "
        "(rerank.loss: listwise softmax over each query's passage and its BM25 and random negatives, or "
        "binary cross-entropy), starting from a BERT's weights (or continuing a re-ranker's: --ckpt its "
        "model/). model/ is what 'lmforge search --rerank' reads.",
        epilog="example:\n  lmforge finetune rerank --model all-minilm-l6-v2 --config "
        "configs/rerank-wiki.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = r.add_mutually_exclusive_group()
    which.add_argument("--ckpt", metavar="DIR", help="BERT checkpoint to start from")
    which.add_argument("--model", metavar="NAME", help="built-in BERT (default all-minilm-l6-v2)")
    r.add_argument(
        "--config",
        default="configs/rerank-wiki.toml",
        metavar="FILE",
        help="config (default: configs/rerank-wiki.toml)",
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, parsed as TOML (repeatable): --set train.max_iters=50",
    )
    r.add_argument("--out", default=None, metavar="DIR", help="run directory (default: train.out_dir)")
    r.add_argument("--overwrite", action="store_true", help="the run directory holds a run: replace it")
    r.set_defaults(func=run_rerank)

    c = subparsers.add_parser(
        "classify",
        help="print the label and class probabilities of a text with a fine-tuned classifier",
        description="Classify texts with the model/ directory of 'lmforge finetune classify'.",
        epilog="example:\n  lmforge classify --ckpt runs/finetune-classify/model --text 'a joyless slog'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--ckpt", required=True, metavar="DIR", help="classifier directory (model/ of a run)")
    c.add_argument(
        "--text", action="append", required=True, metavar="TEXT", help="text to classify (repeatable)"
    )
    c.set_defaults(func=run_classify_text)


def run_finetune(args: argparse.Namespace) -> int:
    from lmforge.cli.configs import shipped_config
    from lmforge.inference.chat import chat_format
    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training import finetune
    from lmforge.training.config import load_config
    from lmforge.training.rng import seed_everything

    overrides = list(args.overrides)
    if args.lora is not None:
        overrides.append(f"finetune.lora_rank={args.lora}")
    if args.out:  # a JSON string is a TOML basic string, so any path survives the override parser
        overrides.append(f"train.out_dir={json.dumps(args.out)}")
    config = load_config(shipped_config(args.config), overrides=overrides, sections=finetune.FinetuneConfig)
    seed_everything(config.train.seed)
    model, tokenizer, meta = load_checkpoint(resolve_checkpoint(args.ckpt, args.model))
    model.train()
    common = {"overwrite": args.overwrite}
    if args.task == "classify":
        finetune.run_classify(config, model, tokenizer, meta, **common)
    elif args.task == "sft":
        finetune.run_sft(config, model, tokenizer, chat_format(tokenizer, meta), meta, **common)
    elif args.task == "dpo":
        finetune.run_dpo(config, model, tokenizer, meta, **common)
    else:
        finetune.run_distill(config, model, tokenizer, meta, **common)
    return 0


def run_rerank(args: argparse.Namespace) -> int:
    from lmforge.cli.configs import shipped_config
    from lmforge.inference.encoder import load_encoder
    from lmforge.training.config import load_config
    from lmforge.training.rerank import RerankConfig, run_rerank
    from lmforge.training.rng import seed_everything

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={json.dumps(args.out)}")
    config = load_config(shipped_config(args.config), overrides=overrides, sections=RerankConfig)
    seed_everything(config.train.seed)
    encoder, tokenizer, meta = load_encoder(args.ckpt or args.model or "all-minilm-l6-v2")
    encoder.train()
    run_rerank(config, encoder, tokenizer, meta, overwrite=args.overwrite)
    return 0


def run_classify_text(args: argparse.Namespace) -> int:
    from lmforge.evaluation.classification import class_probabilities
    from lmforge.training.finetune import load_classifier, pad_id_of

    classifier, tokenizer, info = load_classifier(args.ckpt)
    probabilities = class_probabilities(
        classifier, tokenizer, args.text, max_tokens=info["max_tokens"], pad_id=pad_id_of(tokenizer)
    )
    for text, row in zip(args.text, probabilities, strict=True):
        scores = "  ".join(f"{name} {p:.3f}" for name, p in zip(info["classes"], row, strict=True))
        print(f"{info['classes'][int(row.argmax())]}\t{scores}\t{text}")
    return 0
