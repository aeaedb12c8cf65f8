"""Token shards on disk: encoding documents into `train.bin`/`val.bin`/`test.bin`, and reading them back.

A split file is raw little-endian uint16 (or uint32 when the vocabulary has more than 65,536 ids) token
ids: document, eot, document, eot, ... in source order, readable with `numpy.memmap` without loading it.
`meta.json` beside them says how to read them (dtype, token counts, the tokenizer itself) and what went
in (sources, filter and dedup counts, the command). Layout as nanoGPT's `prepare.py`, with the eot after
every document rather than before.

Encoding goes through the tokenizer's fast path `encode_ordinary_batch` (special-token text inside a
document is ordinary text: only our separator is an eot). With `workers > 1` batches of documents are
encoded in worker processes and written by the parent in submission order, so the bytes on disk do not
depend on the number of workers. This module does not clean, deduplicate or split (see `prepare.py`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from lmforge.errors import DataError, FormatError
from lmforge.fileio import read_json

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> str:
    """'uint16' when every id fits in 16 bits (vocab_size <= 65,536), else 'uint32'."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


# ---------------------------------------------------------------- reading


def load_meta(dataset_dir: str | Path) -> dict[str, Any]:
    """Read and validate `meta.json` of a prepared dataset; every problem names the file."""
    path = Path(dataset_dir) / "meta.json"
    if Path(dataset_dir).is_dir() and not path.exists():
        raise FormatError(path, "not found: this is not a prepared dataset (run 'lmforge data prepare')")
    meta = read_json(path, what="dataset meta.json")
    if not isinstance(meta, dict):
        raise FormatError(path, "expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatError(path, f"unsupported format_version {version!r} (lmforge reads {FORMAT_VERSION})")
    if meta.get("dtype") not in DTYPES:
        raise FormatError(path, f"'dtype' must be one of {sorted(DTYPES)}, got {meta.get('dtype')!r}")
    if not isinstance(meta.get("tokenizer"), dict) or not isinstance(meta.get("tokenizer_fingerprint"), str):
        raise FormatError(path, "missing the 'tokenizer' object or 'tokenizer_fingerprint'")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise FormatError(path, "missing the 'splits' object")
    for name in SPLITS:
        counts = splits.get(name)
        if not isinstance(counts, dict) or not all(
            isinstance(counts.get(k), int) and counts[k] >= 0 for k in ("documents", "tokens", "bytes")
        ):
            raise FormatError(path, f"'splits.{name}' needs non-negative integers documents, tokens, bytes")
    return meta


def open_split(dataset_dir: str | Path, split: str) -> np.memmap:
    """The token ids of one split as a read-only 1-D memmap, checked against meta.json's count."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    meta = load_meta(dataset_dir)
    n_tokens = meta["splits"][split]["tokens"]
    if n_tokens == 0:
        raise DataError(
            f"{dataset_dir}: the '{split}' split is empty (prepare with a non-zero --{split} fraction)"
            if split != "train"
            else f"{dataset_dir}: the 'train' split is empty"
        )
    dtype = DTYPES[meta["dtype"]]
    path = Path(dataset_dir) / f"{split}.bin"
    if not path.is_file():
        raise FormatError(path, "split file not found (the dataset directory is incomplete)")
    size = path.stat().st_size
    if size != n_tokens * dtype.itemsize:
        raise FormatError(
            path,
            f"has {size:,} bytes but meta.json says {n_tokens:,} {meta['dtype']} tokens "
            f"({n_tokens * dtype.itemsize:,} bytes); the file is truncated or from another run",
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))


def check_token_ids(dataset_dir: str | Path, split: str, tokens: np.ndarray, vocab_size: int) -> None:
    """Raise `FormatError` naming the split file if an id is >= `vocab_size` (the file and meta.json
    disagree, e.g. shards of another tokenizer), before a model's embedding lookup fails on it."""
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise FormatError(
            Path(dataset_dir) / f"{split}.bin",
            f"holds token id {top:,} but the vocabulary has {vocab_size:,} ids (0..{vocab_size - 1:,}); "
            "the file was not written with this dataset's tokenizer: prepare the dataset again",
        )


# ---------------------------------------------------------------- encoding and writing


def encode_with_separators(
    tokenizer: Tokenizer, texts: list[str], *, dtype: str, num_threads: int = 8
) -> np.ndarray:
    """Encode documents with the fast path and join them as doc, eot, doc, eot, ... (1-D array).

    Example: texts ["ab", "c"] with ids a=1, b=2, c=3 and eot=0 -> [1, 2, 0, 3, 0].
    """
    flat: list[int] = []
    for ids in tokenizer.encode_ordinary_batch(texts, num_threads=num_threads):
        flat.extend(ids)
        flat.append(tokenizer.eot_id)
    # One conversion of the whole batch: per-document np.array calls cost more than the encoding.
    return np.array(flat, dtype=DTYPES[dtype])


_worker_tokenizer: Tokenizer  # set once per worker process by _init_worker, before any _encode_job


def _init_worker(tokenizer_dict: dict[str, Any]) -> None:
    global _worker_tokenizer
    from lmforge.tokenizers import tokenizer_from_dict

    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def _encode_job(job: tuple[str, list[str], str]) -> tuple[str, np.ndarray]:
    split, texts, dtype = job
    return split, encode_with_separators(_worker_tokenizer, texts, dtype=dtype, num_threads=1)


def encode_jobs(
    tokenizer: Tokenizer, jobs: Iterable[tuple[str, list[str]]], *, dtype: str, workers: int
) -> Iterator[tuple[str, np.ndarray]]:
    """Encode (split, texts) jobs, yielding (split, ids) in the order the jobs were given.

    workers=1 encodes in this process (tiktoken still spreads a batch over its threads); workers>1
    uses a process pool with at most 2 * workers jobs in flight, so memory is bounded by the job size,
    not the corpus (`Pool.imap` would read every job ahead into its queue).
    """
    if workers <= 1:
        for split, texts in jobs:
            yield split, encode_with_separators(tokenizer, texts, dtype=dtype)
        return
    # 'spawn' rather than fork: the parent holds threads (tqdm, tiktoken) that fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer.to_dict(),)) as pool:
        in_flight: deque = deque()
        for split, texts in jobs:
            in_flight.append(pool.apply_async(_encode_job, ((split, texts, dtype),)))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


class SplitWriter:
    """Appends token arrays to `<split>.bin` files in a directory and counts what went in."""

    def __init__(self, directory: Path, *, dtype: str, splits: Iterable[str]):
        self.directory = directory
        self.dtype = dtype
        self.files: dict[str, BinaryIO] = {name: open(directory / f"{name}.bin", "wb") for name in splits}
        self.tokens = dict.fromkeys(self.files, 0)

    def append(self, split: str, ids: np.ndarray) -> None:
        assert ids.dtype == DTYPES[self.dtype]
        self.files[split].write(ids.data)  # no copy: ids is a fresh C-contiguous array
        self.tokens[split] += len(ids)

    def close(self) -> None:
        """Flush and fsync every file: the dataset directory is renamed into place only after this."""
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def check_tokenizer_for_shards(tokenizer: Tokenizer) -> None:
    if tokenizer.eot_id is None:
        raise DataError(
            "the tokenizer has no '<|endoftext|>' special token, which shards use to separate documents; "
            "train or load one with that special token"
        )
    if tokenizer.vocab_size > 2**32:
        raise DataError(f"vocab_size {tokenizer.vocab_size:,} does not fit in uint32")
