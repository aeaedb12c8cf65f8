"""`lmforge model info`: size, training FLOPs per token and per-rank AdamW memory of a model configuration.

Prints figures only; building the model happens on torch's "meta" device, so even large presets cost
no memory or time. The memory arithmetic is `lmforge.models.memory`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "model",
        help="inspect model configurations",
        description="Inspect GPT model configurations (presets, config files, checkpoints).",
    )
    sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser(
        "info",
        help="print parameters, FLOPs per token and training memory of a preset or config",
        description=(
            "Print the parameter count, training FLOPs per token (6N + attention) and the AdamW training "
            "memory of one rank (weights, gradients, optimizer states, activations, communication buffers) "
            "under ddp, zero1, zero2 or fsdp on --world-size ranks. Give a PRESET name (gpt2, gpt2-medium, "
            "gpt2-large, gpt2-xl, tiny, cpu-small, cpu-medium) or --config: a TOML file (its [model] table: "
            "optional 'preset' plus field overrides), a JSON model config, or a checkpoint directory / its "
            "meta.json."
        ),
    )
    info.add_argument("preset", nargs="?", help="preset name")
    info.add_argument("--config", type=Path, help="TOML/JSON config file or checkpoint directory")
    info.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a GPTConfig field (repeatable)",
    )
    info.add_argument(
        "--batch",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=8,
        help="micro-batch of sequences per rank for the activation estimate (default 8)",
    )
    info.add_argument("--seq-len", type=int, help="sequence length (default: block_size)")
    info.add_argument(
        "--precision",
        default="fp32",
        help="fp32; bf16 (lmforge's train.precision: fp32 states, bf16 autocast); bf16-mixed (ZeRO's "
        "16 bytes/param: bf16 weights and gradients, fp32 master and moments); bf16-mixed-fp32-grads "
        "(18 bytes/param). Default fp32",
    )
    info.add_argument("--world-size", type=int, default=1, help="data-parallel ranks (default 1)")
    info.add_argument(
        "--strategy",
        default="ddp",
        help="ddp: every rank holds everything; zero1: optimizer states sharded; zero2: and gradients; "
        "fsdp: and weights (ZeRO-3, FSDP full shard). Default ddp",
    )
    info.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="keep only each block's input and recompute the block in backward",
    )
    info.add_argument(
        "--memory", help="memory of one device, to say whether the plan fits: 80GB, 24GiB, 512MB"
    )
    info.set_defaults(func=run_info)


def _parse_value(text: str) -> Any:
    """'12' -> 12, '0.1' -> 0.1, 'true' -> True, 'none' -> None, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _config_source(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], str]:
    """(preset or None, field overrides, a label for printing) from PRESET or --config."""
    from lmforge.fileio import read_json, read_toml

    if (args.preset is None) == (args.config is None):
        raise ConfigError("give exactly one of PRESET or --config FILE")
    if args.preset is not None:
        return args.preset, {}, args.preset
    path: Path = args.config
    if path.is_dir():
        path = path / "meta.json"
    if path.suffix == ".toml":
        table = read_toml(path)
        fields = dict(table.get("model", table))
    else:
        data = read_json(path, what="model config")
        fields = dict(data.get("config", data)) if isinstance(data, dict) else {}
    return fields.pop("preset", None), fields, str(args.config)


_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def _parse_size(text: str) -> int:
    """'80GB' -> 80 * 10**9, '24GiB' -> 24 * 2**30, '1.5 GB' -> 1.5e9 (bytes, as an int)."""
    number = text.strip().upper().rstrip("BGIKMT ")
    unit = text.strip().upper()[len(number) :].replace(" ", "") or "B"
    unit = unit if unit.endswith("B") else unit + "B"  # "80G" reads as "80GB"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise ConfigError(f"--memory={text!r} is invalid; write a size such as 80GB, 24GiB or 512MB")
    return int(value * _UNITS[unit])


def _size(n_bytes: int) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.00 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}" if unit == "GiB" else f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def run_info(args: argparse.Namespace) -> int:
    import torch

    from lmforge.models import GPT, GPTConfig
    from lmforge.models.memory import PRECISIONS, plan_memory

    preset, fields, label = _config_source(args)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        fields[key.strip()] = _parse_value(value.strip())
    config = GPTConfig.preset(preset, **fields) if preset else GPTConfig.from_dict(fields)
    with torch.device("meta"):
        model = GPT(config)
    seq_len = args.seq_len or config.block_size
    if not 1 <= seq_len <= config.block_size or args.batch_size < 1 or args.world_size < 1:
        raise ConfigError(
            f"--seq-len must be in [1, {config.block_size}], --batch and --world-size positive integers"
        )
    n, n_body = model.num_params(), model.num_params(exclude_embeddings=True)
    flops = model.flops_per_token(seq_len=seq_len)
    attention = 12 * config.n_layer * config.n_embd * seq_len
    plan = plan_memory(
        config,
        world_size=args.world_size,
        strategy=args.strategy,
        batch_size=args.batch_size,
        seq_len=seq_len,
        precision=args.precision,
        activation_checkpointing=args.activation_checkpointing,
    )
    capacity = None if args.memory is None else _parse_size(args.memory)
    print(
        f"model {label}: {config.n_layer} layers, {config.n_head} heads ({config.n_kv_head} kv), "
        f"n_embd {config.n_embd}, block {config.block_size}, vocab {config.vocab_size}"
    )
    print(
        f"  {config.pos_encoding} positions, {config.norm_placement}-{config.norm}, {config.mlp} MLP "
        f"(hidden {config.mlp_hidden}), bias {config.bias}, tied embeddings {config.tie_embeddings}"
    )
    print(f"parameters:       {n:,} ({n_body:,} without embeddings)")
    print(
        f"FLOPs/token:      {flops / 1e6:,.1f} M for training at T={seq_len} "
        f"(6N {(flops - attention) / 1e6:,.1f} M + attention {attention / 1e6:,.1f} M)"
    )
    p = PRECISIONS[args.precision]
    w = args.world_size
    sharded = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients")}
    divided = sharded.get(args.strategy, ("optimizer", "gradients", "weights"))
    optimizer = f"{p.master} master + {p.moments} moments = " if p.master else ""
    per_param = {
        "weights": f"{p.weights}",
        "gradients": f"{p.gradients}",
        "optimizer": optimizer + str(p.master + p.moments),
    }
    ranks = "one process" if w == 1 else f"{args.strategy} on {w} ranks"
    print(
        f"AdamW memory per rank: {ranks}, {args.precision}, "
        f"micro-batch {args.batch_size} x {seq_len} per rank"
        + (", activation checkpointing" if args.activation_checkpointing else "")
    )
    for name, value in (
        ("weights", plan.weights),
        ("gradients", plan.gradients),
        ("optimizer", plan.optimizer),
    ):
        how = f"{per_param[name]} B/param" + (f" / {w}" if name in divided and w > 1 else "")
        print(f"  {name + ':':<14}{_size(value):>11}   {how}")
    print(f"  {'activations:':<14}{_size(plan.activations):>11}   saved for backward, not divided by ranks")
    communication = {
        "ddp": "gradient buckets",
        "zero1": "gradient buckets",
        "zero2": "gradients awaiting reduce-scatter",
        "fsdp": "all-gathered blocks and their gradients",
    }
    parts = [] if w == 1 else [communication[args.strategy]]
    if p.autocast_copies and (args.strategy != "fsdp" or w == 1):
        parts.append("autocast's bf16 weight copies")
    buffers = " + ".join(parts) or "none in one process"
    print(f"  {'buffers:':<14}{_size(plan.buffers):>11}   {buffers}")
    print(f"  {'total:':<14}{_size(plan.total):>11}   plus the process (interpreter, torch, CUDA context)")
    if capacity is not None:
        verdict = "fits" if plan.fits(capacity) else "does NOT fit"
        print(f"{verdict} in {args.memory} per rank ({100 * plan.total / capacity:.0f}% of it)")
    return 0
