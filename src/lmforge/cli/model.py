"""`lmforge model info`: size, training FLOPs per token and AdamW memory of a model configuration.

Prints figures only; building the model happens on torch's "meta" device, so even large presets cost
no memory or time.
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
            "Print the parameter count, training FLOPs per token (6N + attention) and an AdamW training "
            "memory estimate. Give a PRESET name (gpt2, gpt2-medium, gpt2-large, tiny, cpu-small, "
            "cpu-medium) or --config: a TOML file (its [model] table: optional 'preset' plus field "
            "overrides), a JSON model config, or a checkpoint directory / its meta.json."
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
        "--batch-size", type=int, default=8, help="batch size for the memory estimate (default 8)"
    )
    info.add_argument("--seq-len", type=int, help="sequence length (default: block_size)")
    info.add_argument("--bf16", action="store_true", help="estimate activations under bf16 autocast")
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


def _size(n_bytes: int) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.00 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}" if unit == "GiB" else f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def run_info(args: argparse.Namespace) -> int:
    import torch

    from lmforge.models import GPT, GPTConfig

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
    if not 1 <= seq_len <= config.block_size or args.batch_size < 1:
        raise ConfigError(f"--seq-len must be in [1, {config.block_size}] and --batch-size positive")
    n, n_body = model.num_params(), model.num_params(exclude_embeddings=True)
    flops = model.flops_per_token(seq_len=seq_len)
    attention = 12 * config.n_layer * config.n_embd * seq_len
    memory = model.training_memory_bytes(batch_size=args.batch_size, seq_len=seq_len, bf16_autocast=args.bf16)
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
    precision = "bf16 autocast" if args.bf16 else "fp32"
    parts = ", ".join(f"{k} {_size(v)}" for k, v in memory.items() if k != "total")
    print(f"AdamW memory:     {_size(memory['total'])} at batch {args.batch_size} x {seq_len}, {precision}")
    print(f"                  ({parts})")
    return 0
