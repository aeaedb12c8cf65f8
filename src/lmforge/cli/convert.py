"""`lmforge convert`: move a GPT-2 between Hugging Face's layout and an lmforge checkpoint, tokenizer
included, so that the result is directly usable (`lmforge generate`, `GPT2LMHeadModel.from_pretrained`).

The weights and model config are converted by `lmforge.models.convert`, which knows nothing of text; the
tokenizer is carried here, with the formats of `lmforge.tokenizers.formats`:
  hf -> lmforge  GPT-2-style `vocab.json` + `merges.txt` in SRC (GPT-2's encoder.json + vocab.bpe under
                 HF's names) go into meta.json's "tokenizer" and "tokenizer_fingerprint", as the trainer
                 stores them.
  lmforge -> hf  a BPE tokenizer in SRC's meta.json is written as HF's `tokenizer.json`, and its end-of-text
                 id becomes config.json's bos_token_id / eos_token_id.
A checkpoint without a tokenizer, or with a character tokenizer (no HF equivalent), converts its weights
alone, with a printed note. Deliberately not here: reading HF's `tokenizer.json`, so a model exported by
lmforge comes back without its tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.models import GPT
    from lmforge.tokenizers import BPETokenizer

VOCAB, MERGES = "vocab.json", "merges.txt"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a GPT-2 (weights and tokenizer) between Hugging Face and lmforge",
        description="Convert a Hugging Face GPT-2 directory into an lmforge checkpoint directory, or back,\n"
        "tokenizer included, so that DST is ready for `lmforge generate` or for\n"
        "transformers.GPT2LMHeadModel.from_pretrained(DST).",
        epilog="what is converted:\n"
        "  hf -> lmforge   config.json + model.safetensors -> model.safetensors + meta.json;\n"
        "                  vocab.json + merges.txt (GPT-2 style), if present -> meta.json's tokenizer\n"
        "  lmforge -> hf   model.safetensors + meta.json -> config.json + model.safetensors;\n"
        "                  a BPE tokenizer in meta.json -> tokenizer.json, and its <|endoftext|> id\n"
        "                  -> config.json's bos_token_id / eos_token_id\n"
        "Without a tokenizer (or with a char tokenizer, which HF cannot express) only the weights are\n"
        "converted, and a note says so. HF's tokenizer.json is not read.\n"
        "\n"
        "examples:\n"
        "  lmforge convert --from hf --to lmforge ./gpt2-hf ./ckpt/gpt2\n"
        "  lmforge convert --from lmforge --to hf runs/shakespeare-bpe/checkpoints/best ./shakespeare-hf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def _eot(tokenizer: BPETokenizer) -> str:
    return "no end-of-text token" if tokenizer.eot_id is None else f"end-of-text id {tokenizer.eot_id}"


def _import_hf_tokenizer(src: Path, vocab_size: int) -> BPETokenizer | None:
    """The BPETokenizer of GPT-2-style vocab.json + merges.txt in `src`, or None if neither file is there."""
    from lmforge.errors import FormatError
    from lmforge.tokenizers.formats import gpt2_from_files

    vocab, merges = src / VOCAB, src / MERGES
    if not vocab.exists() and not merges.exists():
        return None
    for present, absent in ((vocab, merges), (merges, vocab)):
        if not absent.exists():
            raise FormatError(absent, f"not found beside {present.name}: the tokenizer needs both files")
    try:
        tokenizer = gpt2_from_files(vocab, merges)
    except FormatError as e:
        raise FormatError(
            e.path,
            f"{e.problem} ({VOCAB} + {MERGES} are read as GPT-2's encoder.json + vocab.bpe; "
            f"move them out of {src} to convert the weights alone)",
        ) from None
    if tokenizer.vocab_size > vocab_size:
        raise FormatError(
            vocab, f"the tokenizer has {tokenizer.vocab_size:,} ids, more than the model's {vocab_size:,}"
        )
    return tokenizer


def _hf_to_lmforge(src: Path, dst: Path) -> tuple[GPT, str]:
    """Convert; return the model and a line about the tokenizer."""
    from lmforge.models.convert import from_hf_gpt2

    model = from_hf_gpt2(src)
    tokenizer = _import_hf_tokenizer(src, model.config.vocab_size)
    meta: dict[str, Any] = {"converted_from": "hf-gpt2"}
    if tokenizer is None:
        note = f"note: no {VOCAB} + {MERGES} in {src}, so the checkpoint has no tokenizer"
    else:
        meta |= {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint()}
        note = f"tokenizer: {VOCAB} + {MERGES} -> BPE, {tokenizer.vocab_size:,} ids, {_eot(tokenizer)}"
    model.save_checkpoint(dst, meta=meta)
    return model, note


def _lmforge_to_hf(src: Path, dst: Path) -> tuple[GPT, str]:
    """Convert; return the model and a line about the tokenizer."""
    from lmforge.models import GPT, checkpoint_meta
    from lmforge.models.convert import to_hf_gpt2
    from lmforge.models.gpt import META_FILE
    from lmforge.tokenizers import BPETokenizer, tokenizer_from_dict
    from lmforge.tokenizers.formats import export_hf

    model = GPT.from_checkpoint(src)
    meta = checkpoint_meta(src)
    if "tokenizer" not in meta:
        to_hf_gpt2(model, dst)
        return model, f"note: {src / META_FILE} has no tokenizer, so {dst} has the weights only"
    tokenizer = tokenizer_from_dict(meta["tokenizer"], source=src / META_FILE)
    if not isinstance(tokenizer, BPETokenizer):
        to_hf_gpt2(model, dst)
        return model, f"note: {tokenizer.kind} tokenizers have no HF form, so {dst} has the weights only"
    to_hf_gpt2(model, dst, eot_id=tokenizer.eot_id)
    export_hf(tokenizer, dst / "tokenizer.json")
    return model, f"tokenizer: BPE, {tokenizer.vocab_size:,} ids, {_eot(tokenizer)} -> tokenizer.json"


def run(args: argparse.Namespace) -> int:
    from lmforge.errors import ConfigError

    if args.source_format == args.target_format:
        raise ConfigError(f"--from and --to are both {args.source_format!r}; nothing to convert")
    convert = _hf_to_lmforge if args.source_format == "hf" else _lmforge_to_hf
    model, note = convert(Path(args.src), Path(args.dst))
    print(f"wrote {args.target_format} GPT-2 ({model.num_params():,} parameters) to {args.dst}")
    print(note)
    return 0
