"""Opening a checkpoint directory: the one loader behind generate, chat, eval, sample, convert and recipes.

    model, tokenizer, meta = load_checkpoint("runs/shakespeare/checkpoints/best")
    model, tokenizer, meta = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # a llama.cpp file

A checkpoint directory holds `model.safetensors` and `meta.json` (model config, the tokenizer that
the model was trained with, and whatever the writer added: dataset, chat template, recipe settings);
a training checkpoint also holds `optimizer.safetensors` and `trainer_state.json`, which only
`lmforge.training.checkpoint.restore_training_state` reads. Every file is validated: anything missing,
corrupt or inconsistent raises `FormatError` naming the file.

The same loader opens GPT and BERT checkpoints; by default it wants a GPT, so that a command that
generates text refuses an encoder with one line instead of failing somewhere inside.

Deliberately not here: writing checkpoints (`GPT.save_checkpoint`, `BERT.save_checkpoint`, the trainer's
`save_checkpoint`), optimizer and RNG state (training), moving the model to a device or dtype (the
caller's choice).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import FormatError
from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT, META_FILE, checkpoint_meta

if TYPE_CHECKING:
    from lmforge.tokenizers import BPETokenizer
    from lmforge.tokenizers.base import Tokenizer


def load_checkpoint(
    ckpt_dir: str | Path, *, require_tokenizer: bool = True, architecture: str | None = "gpt"
) -> tuple[GPT | BERT, Tokenizer | None, dict[str, Any]]:
    """A checkpoint directory -> (model in eval mode, its tokenizer, meta.json as a dict).

    `architecture` is what the caller can use: "gpt" (the default: generation, chat, eval, fine-tuning)
    returns a `GPT`, "bert" a `BERT`, None either, by meta.json's "model"; a checkpoint of another
    architecture is a FormatError saying what it is and which commands take it.
    The tokenizer is None only when `require_tokenizer=False` and meta.json has none (weights converted
    without one); otherwise its absence is a `FormatError`, since text in or out needs it.
    """
    from lmforge.tokenizers import tokenizer_from_dict

    ckpt_dir = Path(ckpt_dir)
    meta = checkpoint_meta(ckpt_dir, architecture=architecture)
    tokenizer = None
    if "tokenizer" in meta:
        tokenizer = tokenizer_from_dict(meta["tokenizer"], source=ckpt_dir / META_FILE)
    elif require_tokenizer:
        raise FormatError(
            ckpt_dir / META_FILE,
            "has no 'tokenizer'; text in or out needs the tokenizer the model was trained with "
            "(convert the model with its tokenizer, or train it with lmforge)",
        )
    model_class = BERT if meta["model"] == "bert" else GPT
    return model_class.from_checkpoint(ckpt_dir).eval(), tokenizer, meta


def load_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32, keep_4bit: bool = False
) -> tuple[GPT, BPETokenizer | None, dict[str, Any]]:
    """A llama.cpp GGUF file -> (model in eval mode, its tokenizer or None, meta), every tensor dequantized
    to `dtype` (but Q4_0/Q4_1 linear weights kept 4-bit with `keep_4bit`, see `GPT.from_gguf`); meta is
    ready for `GPT.save_checkpoint(meta=...)` (see `gguf.GGUFContents`)."""
    from lmforge.models.gguf import read_gguf

    contents = read_gguf(path, dtype=dtype, keep_4bit=keep_4bit)
    model = GPT.from_tensors(contents.config, contents.tensors, dtype=dtype, source=path)
    return model, contents.tokenizer, contents.meta
