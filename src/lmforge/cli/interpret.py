"""`lmforge interpret attention|lens|trace|induction`: look inside a checkpoint on a text of your choice.

Parsing and printing only; the analyses live in `lmforge.interpret`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)")
    which.add_argument("--model", metavar="NAME", help="a built-in pretrained model (see 'lmforge models')")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "interpret",
        help="look inside a model: attention maps, logit lens, causal tracing, induction heads",
        description="Interpretability tools on a checkpoint, all through forward hooks on the model's "
        "named modules (see docs/interpret.md).",
    )
    commands = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    a = commands.add_parser(
        "attention",
        help="attention heatmaps per layer and head, and a per-head summary",
        description="Run the model on TEXT, write one PNG per layer (a heatmap per head, tokens on both "
        "axes) and print each head's mean attention entropy, previous-token and first-token weight.",
    )
    _add_model_options(a)
    a.add_argument("--text", required=True, help="the text to look at (a few dozen tokens at most)")
    a.add_argument("--out", default="interpret/attention", metavar="DIR", help="where the PNGs go")
    a.set_defaults(func=run_attention)

    lens = commands.add_parser(
        "lens",
        help="logit lens: the top tokens after each layer, and a target token's rank by layer",
        description="Read the residual stream after every layer through the final norm and the "
        "unembedding, at the last position of TEXT: top-k tokens per layer, and with --target the rank "
        "of that token at each depth (table and plot).",
    )
    _add_model_options(lens)
    lens.add_argument("--text", required=True, help="the prompt; the lens reads its last position")
    lens.add_argument(
        "--target", default=None, help="a token (one token of the tokenizer) to follow by layer"
    )
    lens.add_argument("--k", type=int, default=5, metavar="K", help="top tokens per layer (default: 5)")
    lens.add_argument("--out", default=None, metavar="PNG", help="with --target: plot the rank by layer here")
    lens.set_defaults(func=run_lens)

    t = commands.add_parser(
        "trace",
        help="causal tracing: which (layer, position) restores the clean answer in a corrupted prompt",
        description="Run CORRUPT once per (layer, position) with that activation restored from CLEAN, and "
        "measure how much of the logit difference logit(ANSWER) - logit(WRONG) at the last position comes "
        "back (0 = none, 1 = all). Both prompts must have the same number of tokens.",
        epilog="example:\n  lmforge interpret trace --ckpt DIR --clean 'The Eiffel Tower is in' \\\n"
        "      --corrupt 'The Colosseum is in' --answer ' Paris' --wrong ' Rome'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(t)
    t.add_argument("--clean", required=True, help="the prompt whose answer is ANSWER")
    t.add_argument("--corrupt", required=True, help="the same prompt with a few tokens changed")
    t.add_argument("--answer", required=True, help="the clean prompt's answer (one token)")
    t.add_argument("--wrong", required=True, help="the corrupt prompt's answer (one token)")
    t.add_argument(
        "--kind", choices=("resid_pre", "attn_out", "mlp_out"), default="resid_pre", help="which activation"
    )
    t.add_argument("--out", default="interpret/trace.png", metavar="PNG", help="the heatmap")
    t.set_defaults(func=run_trace)

    i = commands.add_parser(
        "induction",
        help="repeated random tokens: induction score per head and the in-context loss drop",
        description="Feed sequences of N random tokens followed by the same N tokens, and print each "
        "head's induction score (attention from a token to the one after its previous occurrence) and the "
        "loss on the first copy against the repeat.",
    )
    _add_model_options(i)
    i.add_argument(
        "--half", type=int, default=24, metavar="N", help="length of the random half (default: 24)"
    )
    i.add_argument("--rows", type=int, default=32, metavar="B", help="number of sequences (default: 32)")
    i.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random tokens (default: 0)")
    i.set_defaults(func=run_induction)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint

    model, tokenizer, _ = load_checkpoint(resolve_checkpoint(args.ckpt, args.model))
    return model.float(), tokenizer


def _encode(tokenizer: Any, model: Any, text: str, what: str) -> Any:
    import torch

    ids = tokenizer.encode_ordinary(text)
    if not ids:
        raise ConfigError(f"{what} is empty")
    if len(ids) > model.config.block_size:
        raise ConfigError(
            f"{what} has {len(ids)} tokens, more than the model's context ({model.config.block_size})"
        )
    return torch.tensor(ids)


def _one_token(tokenizer: Any, text: str, option: str) -> int:
    ids = tokenizer.encode_ordinary(text)
    if len(ids) != 1:
        raise ConfigError(f"{option} {text!r} is {len(ids)} tokens; give a text that is exactly one token")
    return ids[0]


def _labels(tokenizer: Any, ids: Any) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def run_attention(args: argparse.Namespace) -> int:
    from lmforge.interpret.attention import attention_patterns, head_summary, plot_attention, summary_table

    model, tokenizer = _load(args)
    ids = _encode(tokenizer, model, args.text, "--text")
    patterns = attention_patterns(model, ids)
    paths = plot_attention(patterns, _labels(tokenizer, ids), args.out)
    print(summary_table(head_summary(patterns)))
    print(f"wrote {len(paths)} heatmaps to {Path(args.out)}/ ({paths[0].name} .. {paths[-1].name})")
    return 0


def run_lens(args: argparse.Namespace) -> int:
    from lmforge.interpret.lens import logit_lens, plot_ranks, target_ranks, top_tokens

    if args.k < 1:
        raise ConfigError(f"--k must be a positive integer, got {args.k}")
    model, tokenizer = _load(args)
    ids = _encode(tokenizer, model, args.text, "--text")
    target = None if args.target is None else _one_token(tokenizer, args.target, "--target")
    lens = logit_lens(model, ids[None])[:, 0, -1]  # (n_layer + 1, V) at the last position
    probs, top = top_tokens(lens, k=min(args.k, lens.size(-1)))
    ranks = None if target is None else target_ranks(lens, target)
    print(f"logit lens at the last token {tokenizer.decode([int(ids[-1])])!r}; depth 0 = the embeddings")
    for depth in range(lens.size(0)):
        tokens = "  ".join(
            f"{tokenizer.decode([int(i)])!r} {float(p):.2f}"
            for i, p in zip(top[depth], probs[depth], strict=True)
        )
        rank = "" if ranks is None else f"rank {ranks[depth] + 1:>6}  "
        print(f"{depth:>5}  {rank}{tokens}")
    if ranks is not None and args.out:
        plot_ranks(ranks, args.out, title=f"rank of {args.target!r} after {args.text!r}")
        print(f"wrote {args.out}")
    return 0


def run_trace(args: argparse.Namespace) -> int:
    from lmforge.interpret.tracing import plot_trace, trace

    model, tokenizer = _load(args)
    clean = _encode(tokenizer, model, args.clean, "--clean")
    corrupt = _encode(tokenizer, model, args.corrupt, "--corrupt")
    answer = _one_token(tokenizer, args.answer, "--answer")
    wrong = _one_token(tokenizer, args.wrong, "--wrong")
    result = trace(model, clean, corrupt, answer=answer, wrong=wrong, kind=args.kind)
    print(
        f"logit({args.answer!r}) - logit({args.wrong!r}): "
        f"clean {result.clean_diff:.3f}, corrupt {result.corrupt_diff:.3f}"
    )
    labels = _labels(tokenizer, clean)
    print("fraction restored, one row per position (clean token), one column per layer")
    for position, label in enumerate(labels):
        cells = " ".join(f"{float(v):5.2f}" for v in result.restored[:, position])
        print(f"{label!r:>14} {cells}")
    plot_trace(result, labels, args.out, title=f"{args.kind} restored: {args.clean!r}")
    print(f"wrote {args.out}")
    return 0


def run_induction(args: argparse.Namespace) -> int:
    from lmforge.interpret.induction import induction_report, repeated_random_tokens

    model, _ = _load(args)
    if not 2 <= args.half <= model.config.block_size // 2:
        raise ConfigError(f"--half must be between 2 and {model.config.block_size // 2} (half the context)")
    if args.rows < 1:
        raise ConfigError(f"--rows must be a positive integer, got {args.rows}")
    ids = repeated_random_tokens(model.config.vocab_size, args.half, batch_size=args.rows, seed=args.seed)
    report = induction_report(model, ids)
    print("induction score per head (rows: layers, columns: heads)")
    for layer, row in enumerate(report.scores):
        print(f"layer {layer:>2}: " + " ".join(f"{float(s):.3f}" for s in row))
    print(
        f"loss on the first copy {report.loss_first:.3f}, on the repeat {report.loss_second:.3f} "
        f"(drop {report.loss_drop:.3f} nats)"
    )
    return 0
