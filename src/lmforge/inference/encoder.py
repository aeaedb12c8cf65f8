"""Text in, encoder out: sentence embeddings (`embed`) and masked-token filling (`fill_mask`) with a BERT.

    vectors = lmforge.embed(["A man is playing a guitar.", "Someone plays music."])  # (2, 384) float32
    float(vectors[0] @ vectors[1])                                                   # cosine similarity

`embed` tokenizes with the checkpoint's WordPiece tokenizer ([CLS] text [SEP], truncated to the
model's `max_length`), runs the encoder in batches of similar lengths (sorted by length, as
sentence-transformers does, so little compute goes to padding), pools the last hidden states (the mean
over real tokens, or [CLS]) and L2-normalises them, so that a dot product is a cosine similarity. The
result comes back in the order of the texts, as a float32 numpy array whatever the compute precision.

`fill_mask` scores every vocabulary entry at each `[MASK]` of a text with the BERT's masked-LM head and
returns the k likeliest with their softmax probabilities. A checkpoint whose tokenizer has no [MASK]
(a char or BPE tokenizer; lmforge's MLM pretraining then gives [MASK] the id after the tokenizer's last,
recorded as meta.json's "mask_id") gets its "[MASK]" markers placed between separately encoded pieces.

Deliberately not here: the model (`models/bert.py`), the pooling arithmetic (`models.bert.pool`),
tokenization (`tokenizers/wordpiece.py`), search indexes over embeddings.
References: Reimers & Gurevych 2019, Sentence-BERT; sentence-transformers' `encode` (length-sorted
batches, mean pooling, Normalize module).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.models.bert import BERT, pool
from lmforge.tokenizers.base import Tokenizer

MASK = "[MASK]"
PRECISIONS = ("fp32", "bf16")


def load_encoder(model: str | Path) -> tuple[BERT, Tokenizer, dict[str, Any]]:
    """A BERT by built-in name (`lmforge models`) or checkpoint directory -> (model, tokenizer, meta)."""
    from lmforge.models.builtin import BUILTIN_MODELS, builtin_checkpoint
    from lmforge.models.checkpoints import load_checkpoint

    if isinstance(model, str) and model in BUILTIN_MODELS:
        model = builtin_checkpoint(model, log=lambda line: print(line, file=sys.stderr))
    bert, tokenizer, meta = load_checkpoint(model, architecture="bert")
    return bert, tokenizer, meta  # type: ignore[return-value]  # architecture="bert" gives a BERT


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise ConfigError("embed takes a list of texts; wrap a single text in a list: embed([text])")
    if len(texts) == 0:
        raise DataError("no texts to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise DataError(f"text {i} is empty (or only whitespace); an encoder has nothing to embed there")


@dataclass
class EncoderInputs:
    """One padded batch: ids, token types and attention mask, each (B, T) int64."""

    ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor


def encoder_inputs(tokenizer: Any, texts: Sequence[str], *, max_length: int) -> EncoderInputs:
    """[CLS] text [SEP] per text, truncated to `max_length` tokens and right-padded to the longest."""
    if not hasattr(tokenizer, "encode_batch") or getattr(tokenizer, "kind", None) != "wordpiece":
        raise ConfigError(
            f"sentence embeddings need a WordPiece tokenizer ([CLS] ... [SEP] inputs); this checkpoint has "
            f"a {getattr(tokenizer, 'kind', '?')} tokenizer"
        )
    encodings = tokenizer.encode_batch(texts, max_length=max_length, truncation=True, padding="longest")
    return EncoderInputs(
        ids=torch.tensor([e.ids for e in encodings]),
        token_type_ids=torch.tensor([e.token_type_ids for e in encodings]),
        attention_mask=torch.tensor([e.attention_mask for e in encodings]),
    )


@torch.inference_mode()
def embed_texts(
    model: BERT,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 32,
    max_length: int = 256,
) -> np.ndarray:
    """Sentence vectors (N, C) float32 of `texts` with a loaded BERT, in the model's own dtype and device
    (module docstring). `max_length` counts tokens, [CLS] and [SEP] included."""
    _check_texts(texts)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid; use a positive integer")
    max_length = min(max_length, model.config.block_size)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first: similar lengths batch
    out = np.empty((len(texts), model.config.n_embd), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = encoder_inputs(tokenizer, [texts[i] for i in rows], max_length=max_length)
            mask = batch.attention_mask.to(device)
            hidden = model.hidden_states(
                batch.ids.to(device), token_type_ids=batch.token_type_ids.to(device), attention_mask=mask
            )  # (B, T, C)
            vectors = pool(hidden.float(), mask, pooling=pooling)  # (B, C), pooled in fp32
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[rows] = vectors.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def embed(
    texts: Sequence[str],
    model: str | Path = "all-minilm-l6-v2",
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """L2-normalised sentence embeddings, a float32 numpy array (len(texts), width).

    `model` is a built-in name (`lmforge models`) or a BERT checkpoint directory. `pooling` ("mean" or
    "cls"), `normalize` and `max_length` default to what the checkpoint records (all-MiniLM-L6-v2: mean,
    normalised, 256 tokens), else mean, True and the model's block_size. `precision="bf16"` runs the
    encoder in bfloat16 (fast on CPUs with AVX-512-BF16 or AMX; the vectors agree with fp32 to about 1e-2).
    Example: `lmforge.embed(["a cat", "a dog"]) @ lmforge.embed(["a kitten"]).T` -> cosine similarities.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is invalid; choose one of {', '.join(PRECISIONS)}")
    _check_texts(texts)
    bert, tokenizer, meta = load_encoder(model)
    if precision == "bf16":
        bert = bert.to(torch.bfloat16)  # loaded for this call only: converted in place
    return embed_texts(
        bert,
        tokenizer,
        texts,
        pooling=pooling or meta.get("pooling", "mean"),
        normalize=meta.get("normalize", True) if normalize is None else normalize,
        batch_size=batch_size,
        max_length=max_length or meta.get("max_length", bert.config.block_size),
    )


@torch.inference_mode()
def fill_mask(
    model: BERT, tokenizer: Any, text: str, *, mask_id: int | None = None, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text`, left to right: the `top_k` (filler, probability) pairs of the masked-LM
    head, probabilities from the softmax over the whole vocabulary.

    `mask_id` is the id the model was trained with for [MASK]: the tokenizer's own [MASK] when None.
    """
    if MASK not in text:
        raise DataError(f"the text has no {MASK}; write {MASK} where a token should be predicted")
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} is invalid; use a positive integer")
    own_mask = tokenizer.special_tokens.get(MASK)
    mask_id = own_mask if mask_id is None else mask_id
    if mask_id is None:
        raise ConfigError(f"this model has no {MASK} id (its tokenizer has none and meta.json no 'mask_id')")
    if getattr(tokenizer, "kind", None) == "wordpiece" and own_mask == mask_id:
        ids = tokenizer.encode(text, allowed_special={MASK}).ids  # [CLS] ... [MASK] ... [SEP]
    else:  # the marker is not in the tokenizer: encode the pieces around it, place the id between them
        pieces = [tokenizer.encode_ordinary(piece) for piece in text.split(MASK)]
        ids = [*pieces[0]] + [t for piece in pieces[1:] for t in (mask_id, *piece)]
    if len(ids) > model.config.block_size:
        raise DataError(f"the text is {len(ids)} tokens, more than the model's {model.config.block_size}")
    model.eval()
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logits, _ = model(x)  # (1, T, V)
    results = []
    for position in (x[0] == mask_id).nonzero().flatten().tolist():
        probs = logits[0, position].float().softmax(-1)
        top = probs.topk(min(top_k, probs.numel()))
        results.append(
            [(_piece(tokenizer, i), float(p)) for p, i in zip(top.values, top.indices.tolist(), strict=True)]
        )
    return results


def _piece(tokenizer: Any, token_id: int) -> str:
    """How a filler reads: the vocabulary entry of a WordPiece id ("paris", "##s"), else its decoded text."""
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, list) and token_id < len(vocab):
        return vocab[token_id]
    if token_id >= tokenizer.vocab_size:
        return MASK
    return tokenizer.decode([token_id])


def read_texts(paths: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """(ids, texts) from files: `.jsonl` records with a "text" field (and an optional "id"), any other
    file one text per non-blank line. Ids default to "FILE:LINE". Every file is validated: unreadable,
    non-UTF-8 or malformed input is a DataError naming the file and line."""
    import json

    ids: list[str] = []
    texts: list[str] = []
    for path in map(Path, paths):
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                ids.append(f"{path.name}:{number}")
                texts.append(line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path}:{number}: a record needs a string "text" field')
            ids.append(str(record.get("id", f"{path.name}:{number}")))
            texts.append(record["text"])
    return ids, texts


def save_embeddings(
    path: str | Path, vectors: np.ndarray, ids: Sequence[str], meta: dict[str, str]
) -> list[Path]:
    """Write vectors (N, C) and their ids atomically; returns the files written.

    `.npy`: the array, and the ids as a JSON list in `<stem>.ids.json` beside it. `.safetensors`: the
    tensor "embeddings", with the ids (JSON) and `meta` (model, pooling ...) in its metadata."""
    import io
    import json

    from lmforge.fileio import atomic_write_bytes, atomic_write_json, save_safetensors

    path = Path(path)
    if path.suffix == ".safetensors":
        metadata = {**meta, "ids": json.dumps(list(ids), ensure_ascii=False)}
        save_safetensors(path, {"embeddings": torch.from_numpy(vectors)}, metadata=metadata)
        return [path]
    if path.suffix != ".npy":
        raise ConfigError(f"--out {path}: use a .npy or .safetensors file name")
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write_bytes(path, buffer.getvalue())
    ids_path = path.with_name(path.stem + ".ids.json")
    atomic_write_json(ids_path, list(ids))
    return [path, ids_path]
