"""`lmforge convert`: move a GPT-2, a Llama-style GPT or a BERT between Hugging Face's layout and an lmforge
checkpoint, tokenizer included, so that the result is directly usable (`lmforge generate`,
`GPT2LMHeadModel` / `LlamaForCausalLM.from_pretrained`).

The weights and model config are converted by `lmforge.models.convert`, which knows nothing of text; the
tokenizer is carried here, with the readers and writers of `lmforge.tokenizers.foreign`:
  hf -> lmforge  HF's `tokenizer.json` in SRC, if it is a byte-level BPE (`from_hf_file`), else GPT-2-style
                 `vocab.json` + `merges.txt` (GPT-2's encoder.json + vocab.bpe under HF's names), go into
                 meta.json's "tokenizer" and "tokenizer_fingerprint", as the trainer stores them.
                 tokenizer.json comes first because it is what lmforge -> hf writes, and because it
                 holds the split pattern, which vocab.json + merges.txt do not (they imply GPT-2's).
  lmforge -> hf  a BPE tokenizer in SRC's meta.json is written as HF's `tokenizer.json`, and its end-of-text
                 id becomes config.json's bos_token_id / eos_token_id.
A BERT carries BERT's `vocab.txt` instead (WordPiece; lowercased as tokenizer_config.json's
do_lower_case says), and goes back out as vocab.txt, tokenizer.json and tokenizer_config.json.
So lmforge -> hf -> lmforge keeps the tokenizer (same fingerprint). A tokenizer.json that is not
byte-level BPE with lmforge's id layout is an error naming it, unless vocab.json + merges.txt are there too
(then they are used, with a note). A checkpoint without a tokenizer, or with a character tokenizer (no HF
equivalent), converts its weights alone, with a printed note.

GGUF (llama.cpp's one-file format, `lmforge.models.gguf`) carries its tokenizer and chat template inside:
  gguf -> lmforge  FILE -> DIR: weights dequantized to --dtype f32 or bf16; meta.json gets the tokenizer,
                   the bos/eos/pad tokens and the Jinja chat template ("chat_template_jinja").
  lmforge -> gguf  DIR -> FILE: --dtype f32, f16 or q8_0; the tokenizer (BPE only), roles and chat
                   template from meta.json go into the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.models import BERT, GPT
    from lmforge.tokenizers import BPETokenizer, WordPieceTokenizer

HF_TOKENIZER, VOCAB, MERGES = "tokenizer.json", "vocab.json", "merges.txt"
BERT_VOCAB = "vocab.txt"
FORMATS = ("hf", "lmforge", "gguf")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a GPT-2, Llama or BERT (weights and tokenizer) between Hugging Face, GGUF and lmforge",
        description="Convert a Hugging Face GPT-2 or Llama directory into an lmforge checkpoint directory,\n"
        "or back, tokenizer included, so that DST is ready for `lmforge generate` (a BERT: `lmforge embed`,\n"
        "`lmforge fill-mask`) or for transformers' from_pretrained(DST). The architecture follows the\n"
        "model: config.json's model_type (gpt2, llama or bert) one way; the other way a GPT with rotary\n"
        "positions, RMSNorm, SwiGLU and no biases becomes a LlamaForCausalLM, any other a GPT2LMHeadModel\n"
        "(refused if GPT-2 cannot express it), and a BERT a BertModel / BertForMaskedLM /\n"
        "BertForSequenceClassification by its heads.",
        epilog="what is converted:\n"
        "  hf -> lmforge   config.json + model.safetensors -> model.safetensors + meta.json;\n"
        "                  tokenizer.json (byte-level BPE), or else vocab.json + merges.txt (GPT-2\n"
        "                  style), if present -> meta.json's tokenizer\n"
        "  lmforge -> hf   model.safetensors + meta.json -> config.json + model.safetensors;\n"
        "                  a BPE tokenizer in meta.json -> tokenizer.json, and its <|endoftext|> id\n"
        "                  -> config.json's bos_token_id / eos_token_id\n"
        "  gguf -> lmforge FILE.gguf -> model.safetensors (dequantized, --dtype f32|bf16) + meta.json\n"
        "                  with the tokenizer, bos/eos/pad tokens and the Jinja chat template\n"
        "  lmforge -> gguf llama or gpt2 architecture, --dtype f32|f16|q8_0, with the tokenizer,\n"
        "                  roles and chat template of meta.json, laid out as llama.cpp's converter does\n"
        "Without a tokenizer (or with a char tokenizer, which HF cannot express) only the weights are\n"
        "converted, and a note says so. lmforge -> hf -> lmforge keeps the tokenizer.\n"
        "\n"
        "examples:\n"
        "  lmforge convert --from hf --to lmforge ./gpt2-hf ./ckpt/gpt2\n"
        "  lmforge convert --from hf --to lmforge ./bert-base-uncased ./ckpt/bert  (its vocab.txt too)\n"
        "  lmforge convert --from lmforge --to hf runs/shakespeare-bpe/checkpoints/best ./shakespeare-hf\n"
        "  lmforge convert --from gguf --to lmforge SmolLM2-135M-Instruct.Q4_1.gguf ./smollm2 --dtype bf16\n"
        "  lmforge convert --from lmforge --to gguf ./smollm2 smollm2-q8.gguf --dtype q8_0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source_format", choices=FORMATS, required=True, help="format of SRC")
    p.add_argument("--to", dest="target_format", choices=FORMATS, required=True, help="format of DST")
    p.add_argument("src", metavar="SRC", help="source directory (a .gguf file for --from gguf)")
    p.add_argument("dst", metavar="DST", help="destination directory, or .gguf file for --to gguf")
    p.add_argument(
        "--dtype",
        choices=("f32", "bf16", "f16", "q8_0"),
        default="f32",
        help="weights of DST: f32 or bf16 for --from gguf (dequantized), f32, f16 or q8_0 for --to gguf "
        "(default f32); hf <-> lmforge always keeps float32",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="DST exists and is not empty: write the converted files over the ones of the same name "
        "(a training checkpoint, with trainer_state.json, is refused even so)",
    )
    p.set_defaults(func=run)


def _eot(tokenizer: BPETokenizer) -> str:
    return "no end-of-text token" if tokenizer.eot_id is None else f"end-of-text id {tokenizer.eot_id}"


def _read_gpt2_files(src: Path) -> BPETokenizer | None:
    """The BPETokenizer of GPT-2-style vocab.json + merges.txt in `src`, or None if neither file is there."""
    from lmforge.errors import FormatError
    from lmforge.tokenizers.foreign import gpt2_from_files

    vocab, merges = src / VOCAB, src / MERGES
    if not vocab.exists() and not merges.exists():
        return None
    for present, absent in ((vocab, merges), (merges, vocab)):
        if not absent.exists():
            raise FormatError(absent, f"not found beside {present.name}: the tokenizer needs both files")
    try:
        return gpt2_from_files(vocab, merges)
    except FormatError as e:
        raise FormatError(
            e.path,
            f"{e.problem} ({VOCAB} + {MERGES} are read as GPT-2's encoder.json + vocab.bpe; "
            f"move them out of {src} to convert the weights alone)",
        ) from None


def _import_hf_tokenizer(src: Path, vocab_size: int) -> tuple[BPETokenizer | None, str]:
    """The tokenizer in `src` (tokenizer.json first, else vocab.json + merges.txt) and a note on it."""
    from lmforge.errors import FormatError
    from lmforge.tokenizers.foreign import from_hf_file

    tokenizer_json, skipped = src / HF_TOKENIZER, ""
    tokenizer, origin, path = None, HF_TOKENIZER, tokenizer_json
    if tokenizer_json.exists():
        try:
            tokenizer = from_hf_file(tokenizer_json)
        except FormatError as e:
            if not ((src / VOCAB).exists() and (src / MERGES).exists()):
                raise FormatError(
                    e.path, f"{e.problem} (move it out of {src} to convert the weights alone)"
                ) from None
            skipped = f"note: {HF_TOKENIZER} skipped, {VOCAB} + {MERGES} used instead: {e.problem}\n"
    if tokenizer is None:
        tokenizer, origin, path = _read_gpt2_files(src), f"{VOCAB} + {MERGES}", src / VOCAB
    if tokenizer is None:
        return (
            None,
            f"note: no {HF_TOKENIZER} or {VOCAB} + {MERGES} in {src}, so the checkpoint has no tokenizer",
        )
    if tokenizer.vocab_size > vocab_size:
        raise FormatError(
            path, f"the tokenizer has {tokenizer.vocab_size:,} ids, more than the model's {vocab_size:,}"
        )
    return tokenizer, f"{skipped}tokenizer: {origin} -> BPE, {tokenizer.vocab_size:,} ids, {_eot(tokenizer)}"


def _import_bert_vocab(src: Path, vocab_size: int) -> tuple[WordPieceTokenizer | None, str]:
    """BERT's vocab.txt in `src` (lowercasing as tokenizer_config.json's do_lower_case says, default true)."""
    from lmforge.errors import FormatError
    from lmforge.fileio import read_json
    from lmforge.tokenizers import WordPieceTokenizer

    if not (src / BERT_VOCAB).exists():
        return None, f"note: no {BERT_VOCAB} in {src}, so the checkpoint has no tokenizer"
    settings = src / "tokenizer_config.json"
    lowercase = (
        read_json(settings, what="HF tokenizer config").get("do_lower_case", True)
        if settings.exists()
        else True
    )
    tokenizer = WordPieceTokenizer.from_vocab_file(src / BERT_VOCAB, lowercase=bool(lowercase))
    if tokenizer.vocab_size > vocab_size:
        raise FormatError(
            src / BERT_VOCAB, f"{tokenizer.vocab_size:,} tokens, more than the model's {vocab_size:,}"
        )
    case = "lowercased" if tokenizer.lowercase else "cased"
    return tokenizer, f"tokenizer: {BERT_VOCAB} -> WordPiece, {tokenizer.vocab_size:,} ids, {case}"


def _hf_to_lmforge(src: Path, dst: Path) -> tuple[GPT | BERT, str]:
    """Convert; return the model and a line about the tokenizer."""
    from lmforge.models.convert import from_hf

    model, architecture = from_hf(src)
    import_tokenizer = _import_bert_vocab if architecture == "bert" else _import_hf_tokenizer
    tokenizer, note = import_tokenizer(src, model.config.vocab_size)
    meta: dict[str, Any] = {"converted_from": f"hf-{architecture}"}
    if tokenizer is not None:
        meta |= {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint()}
    model.save_checkpoint(dst, meta=meta)
    return model, note


def _lmforge_to_hf(src: Path, dst: Path) -> tuple[GPT | BERT, str]:
    """Convert; return the model and a line about the tokenizer."""
    from lmforge.fileio import atomic_write_json
    from lmforge.models import BERT
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.models.convert import to_hf, to_hf_bert
    from lmforge.models.gpt import META_FILE
    from lmforge.tokenizers import BPETokenizer, WordPieceTokenizer
    from lmforge.tokenizers.foreign import export_hf

    model, tokenizer, _ = load_checkpoint(src, require_tokenizer=False, architecture=None)
    if isinstance(model, BERT):
        if not isinstance(tokenizer, WordPieceTokenizer):
            to_hf_bert(model, dst)
            return model, f"note: {src / META_FILE} has no WordPiece tokenizer, so {dst} has the weights only"
        to_hf_bert(model, dst, pad_id=tokenizer.special_tokens.get("[PAD]"))
        tokenizer.save_vocab(dst / BERT_VOCAB)
        tokenizer.save_hf(dst / HF_TOKENIZER)
        atomic_write_json(
            dst / "tokenizer_config.json",
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": tokenizer.lowercase,
                "model_max_length": model.config.block_size,
            },
        )
        return model, f"tokenizer: WordPiece, {tokenizer.vocab_size:,} ids -> {BERT_VOCAB} + {HF_TOKENIZER}"
    if tokenizer is None:
        to_hf(model, dst)
        return model, f"note: {src / META_FILE} has no tokenizer, so {dst} has the weights only"
    if not isinstance(tokenizer, BPETokenizer):
        to_hf(model, dst)
        return model, f"note: {tokenizer.kind} tokenizers have no HF form, so {dst} has the weights only"
    to_hf(model, dst, eot_id=tokenizer.eot_id)
    export_hf(tokenizer, dst / "tokenizer.json")
    return model, f"tokenizer: BPE, {tokenizer.vocab_size:,} ids, {_eot(tokenizer)} -> tokenizer.json"


def _gguf_to_lmforge(src: Path, dst: Path, dtype: str) -> tuple[GPT, str]:
    """Convert; return the model and a line about the tokenizer and template."""
    import torch

    from lmforge.errors import ConfigError
    from lmforge.models.gguf import JINJA_TEMPLATE_KEY, load_gguf

    if dtype not in ("f32", "bf16"):
        raise ConfigError(f"--dtype {dtype} is for --to gguf; a GGUF file is dequantized to f32 or bf16")
    model, tokenizer, meta = load_gguf(src, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.save_checkpoint(dst, meta=meta)
    if tokenizer is None:
        return model, f"note: {src} has no tokenizer, so the checkpoint has none"
    template = "a chat template" if JINJA_TEMPLATE_KEY in meta else "no chat template"
    return (
        model,
        f"tokenizer: BPE, {tokenizer.vocab_size:,} ids, {meta.get('eos_token')!r} ends a turn; {template}",
    )


def _lmforge_to_gguf(src: Path, dst: Path, dtype: str) -> tuple[GPT, str]:
    """Convert; return the model and a line about the tokenizer and template."""
    from lmforge.errors import ConfigError
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.models.gguf import JINJA_TEMPLATE_KEY, save_gguf
    from lmforge.models.gpt import META_FILE
    from lmforge.tokenizers import BPETokenizer

    if dtype not in ("f32", "f16", "q8_0"):
        raise ConfigError(f"--dtype {dtype} is for --from gguf; a GGUF file is written as f32, f16 or q8_0")
    model, tokenizer, meta = load_checkpoint(src, require_tokenizer=False)
    if not isinstance(tokenizer, BPETokenizer):
        save_gguf(model, dst, dtype=dtype)
        kind = "no" if tokenizer is None else f"a {tokenizer.kind}"
        return (
            model,
            f"note: {src / META_FILE} has {kind} tokenizer, so {dst} has no vocabulary (llama.cpp needs one)",
        )
    roles = {role: meta[role] for role in ("bos_token", "eos_token", "pad_token") if role in meta} or None
    template = meta.get(JINJA_TEMPLATE_KEY)
    save_gguf(model, dst, dtype=dtype, tokenizer=tokenizer, roles=roles, chat_template=template)
    with_template = "and chat template " if template else ""
    return model, f"tokenizer {with_template}written: BPE, {tokenizer.vocab_size:,} ids"


def run(args: argparse.Namespace) -> int:
    from lmforge.errors import ConfigError

    pair = (args.source_format, args.target_format)
    if args.source_format == args.target_format:
        raise ConfigError(f"--from and --to are both {args.source_format!r}; nothing to convert")
    dst = Path(args.dst)
    if args.target_format != "gguf":
        if dst.exists() and not dst.is_dir():
            raise ConfigError(f"DST {dst} is an existing file; give a directory path")
        if (dst / "trainer_state.json").exists():
            raise ConfigError(
                f"DST {dst} is a training checkpoint (it has trainer_state.json); converting into it would "
                "mix two models' files, so choose another directory"
            )
        if dst.is_dir() and any(dst.iterdir()) and not args.overwrite:
            raise ConfigError(
                f"DST {dst} exists and is not empty; choose another directory or pass --overwrite"
            )
    if "lmforge" not in pair:
        raise ConfigError(f"convert {pair[0]} -> lmforge, then lmforge -> {pair[1]}")
    if "gguf" in pair:
        convert_gguf = _gguf_to_lmforge if pair[0] == "gguf" else _lmforge_to_gguf
        model, note = convert_gguf(Path(args.src), dst, args.dtype)
    else:
        if args.dtype != "f32":
            raise ConfigError("--dtype is for GGUF conversions; hf <-> lmforge keeps float32")
        convert = _hf_to_lmforge if args.source_format == "hf" else _lmforge_to_hf
        model, note = convert(Path(args.src), dst)
    from lmforge.models import BERT
    from lmforge.models.convert import hf_architecture

    if isinstance(model, BERT):
        architecture = "BERT"
    else:
        architecture = "Llama" if hf_architecture(model.config) == "llama" else "GPT-2"
    print(f"wrote {args.target_format} {architecture} ({model.num_params():,} parameters) to {args.dst}")
    print(note)
    return 0
