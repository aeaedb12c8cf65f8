"""`lmforge convert`: move GPT-2 weights between Hugging Face's layout and an lmforge checkpoint.

Only the weights and model config are converted; tokenizer files are not (convert those with the
tokenizer commands). The work is in `lmforge.models.convert`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert GPT-2 weights between Hugging Face and lmforge",
        description=(
            "Convert a Hugging Face GPT-2 directory (config.json + model.safetensors) into an lmforge "
            "checkpoint directory (model.safetensors + meta.json), or back. The HF output loads with "
            "transformers.GPT2LMHeadModel.from_pretrained(DST)."
        ),
        epilog="example: lmforge convert --from hf --to lmforge ./gpt2-hf ./ckpt/gpt2",
    )
    p.add_argument(
        "--from", dest="source_format", choices=("hf", "lmforge"), required=True, help="format of SRC"
    )
    p.add_argument(
        "--to", dest="target_format", choices=("hf", "lmforge"), required=True, help="format of DST"
    )
    p.add_argument("src", metavar="SRC", help="source directory")
    p.add_argument("dst", metavar="DST", help="destination directory (created if missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.errors import ConfigError
    from lmforge.models import GPT
    from lmforge.models.convert import from_hf_gpt2, to_hf_gpt2

    if args.source_format == args.target_format:
        raise ConfigError(f"--from and --to are both {args.source_format!r}; nothing to convert")
    if args.source_format == "hf":
        model = from_hf_gpt2(args.src)
        model.save_checkpoint(args.dst, meta={"converted_from": "hf-gpt2"})
    else:
        model = GPT.from_checkpoint(args.src)
        to_hf_gpt2(model, args.dst)
    print(f"wrote {args.target_format} GPT-2 ({model.num_params():,} parameters) to {args.dst}")
    return 0
