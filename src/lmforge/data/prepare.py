"""`prepare`: sources -> cleaned, deduplicated, split, tokenized dataset directory (the data stage).

Two streaming passes, so memory does not grow with the size of the corpus:
1. read every source, normalise and filter each document, drop duplicates, and append the kept
   documents' cleaned text to a spool file inside the dataset's temporary directory, remembering only
   a 64-bit split key per document;
2. assign splits from the keys (split.py), then read the spool back and encode it in batches into
   `train.bin`/`val.bin`/`test.bin` (shards.py).

Everything is written into `.<out>.partial-<pid>` next to the output and renamed to `<out>` only when
complete (meta.json, the last file, included); an interrupted or failed run deletes its temporary
directory, and a hard kill leaves only a hidden `.partial` directory, never something that loads; the
next run deletes the partial directories of processes that no longer exist.
`overwrite` replaces only a dataset this module wrote (its meta.json is the marker: a valid dataset
meta.json with `lmforge_version`), and never a directory that holds one of the inputs (a source file or
the tokenizer): anything else at `out` is refused, so an input is never deleted.
The same sources, options and seed give byte-identical shards and meta.json. Deliberately not here:
the tokenizer training (lmforge.tokenizers) and the datasets the trainer reads (datasets.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
import time
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.data.clean import FILTER_NAMES, CleanConfig, failed_filter, normalize_text
from lmforge.data.dedup import DedupConfig, Deduplicator
from lmforge.data.shards import (
    FORMAT_VERSION,
    SPLITS,
    SplitWriter,
    check_tokenizer_for_shards,
    dtype_for_vocab,
    encode_jobs,
    load_meta,
)
from lmforge.data.sources import OnBadRecord, SourceReader, counted
from lmforge.data.split import SPLIT_CODES, assign_splits, check_fractions, split_key
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.fileio import atomic_write_json, atomic_write_text, fault_point, recover_dir, replace_dir
from lmforge.version import __version__

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

JOB_BYTES = 2_000_000  # text per encoding job: large enough to keep tiktoken's threads busy, small for RAM
_LENGTH = struct.Struct("<Q")  # spool record header: byte length of the document that follows


def prepare(
    sources: Sequence[str],
    *,
    tokenizer: Tokenizer,
    out: str | Path,
    text_field: str = "text",
    on_bad_record: OnBadRecord = "skip",
    clean: CleanConfig | None = None,
    dedup: DedupConfig | None = None,
    val: float = 0.05,
    test: float = 0.0,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    command: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Build a dataset directory at `out` and return its meta.json content.

    `tokenizer` is a tokenizer object or the path of a tokenizer.json; `clean` and `dedup` default to
    `CleanConfig()` and `DedupConfig()` (near-duplicates at Jaccard 0.8). `command` is recorded in
    meta.json (the CLI passes its command line). With `verbose`, progress bars go to stderr and the
    report to stdout; the report is always saved as `report.txt`.
    """
    start = time.perf_counter()
    clean = CleanConfig() if clean is None else clean
    dedup = DedupConfig() if dedup is None else dedup
    check_fractions(val, test)
    if not sources:
        raise ConfigError("no sources given; pass at least one --source")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    # Cheap checks first, so a typo fails before minutes of work.
    readers = [SourceReader(s, text_field=text_field, on_bad_record=on_bad_record) for s in sources]
    out = Path(out)
    if out.parent.is_dir():
        recover_dir(out)  # an earlier --overwrite cut short between its two renames: the old dataset is back
        remove_stale_partials(out)
    inputs = [path for reader in readers for path in reader.paths]
    if isinstance(tokenizer, (str, Path)):
        inputs.append(Path(tokenizer))
    _check_out(out, inputs, overwrite=overwrite)
    if isinstance(tokenizer, (str, Path)):
        from lmforge.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    check_tokenizer_for_shards(tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        kept = _read_clean_dedup(readers, work / "documents.spool", clean, dedup, seed, verbose)
        codes = assign_splits(kept.keys, val=val, test=test)
        dtype = dtype_for_vocab(tokenizer.vocab_size)
        splits = _encode_spool(work, tokenizer, codes, dtype=dtype, workers=workers, verbose=verbose)
        (work / "documents.spool").unlink()
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype,
            "tokenizer": tokenizer.to_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "splits": splits,
            "documents": {"read": kept.read, "kept": len(codes)},
            "filters": kept.filters,
            "dedup": {"exact_removed": kept.exact_removed, "near_removed": kept.near_removed, **vars(dedup)},
            "cleaning": vars(clean),
            "sources": [r.stats.as_dict() for r in readers],
            "options": {
                "text_field": text_field,
                "on_bad_record": on_bad_record,
                "val": val,
                "test": test,
                "seed": seed,
            },
            "command": command,
            "lmforge_version": __version__,
        }
        report = format_report(meta, seconds=time.perf_counter() - start)
        atomic_write_text(work / "report.txt", report)
        atomic_write_json(work / "meta.json", meta)  # last: a directory with meta.json is complete
        fault_point("prepare:before-rename")
        replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if verbose:
        print(report, end="")
    return meta


def _check_out(out: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse an `out` that is a file, that holds an input, or that is not ours to replace."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a directory path")
    resolved = out.resolve()
    for path in inputs:
        if path.exists() and (path.resolve() == resolved or resolved in path.resolve().parents):
            raise ConfigError(
                f"--out {out} holds the input {path}; replacing the directory would delete it, so choose "
                "another --out"
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
        if not is_prepared_dataset(out):
            raise ConfigError(
                f"--overwrite: {out} is not a dataset written by 'lmforge data prepare' (no valid "
                "meta.json), so it is left alone; choose another --out or empty it yourself"
            )


def is_prepared_dataset(directory: Path) -> bool:
    """True if `directory` has the meta.json this module writes (the marker `overwrite` needs)."""
    try:
        return "lmforge_version" in load_meta(directory)
    except LmforgeError:
        return False


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete `.<out>.partial-<pid>` directories whose process is gone (a killed run); return them."""
    removed = []
    prefix = f".{out.name}.partial-"
    for path in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix) :]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _Kept:
    """What pass 1 leaves for pass 2: one split key per kept document, and the counts."""

    def __init__(self) -> None:
        self.keys = array("Q")  # 64-bit split key of each kept document, in source order
        self.read = 0
        self.filters = dict.fromkeys(FILTER_NAMES, 0)
        self.exact_removed = 0
        self.near_removed = 0


def _read_clean_dedup(
    readers: list[SourceReader],
    spool_path: Path,
    clean: CleanConfig,
    dedup: DedupConfig,
    seed: int,
    verbose: bool,
) -> _Kept:
    from lmforge.progress import progress_bar

    kept = _Kept()
    deduplicator = Deduplicator(dedup)
    n_bytes = 0
    bar = progress_bar(desc="read, clean, dedup", unit=" docs", disable=not verbose, mininterval=0.5)
    start = time.perf_counter()
    with bar, open(spool_path, "wb") as spool:
        for reader in readers:
            for doc in reader:
                kept.read += 1
                n_bytes = sum(r.stats.bytes for r in readers)
                rate = n_bytes / 1e6 / (time.perf_counter() - start + 1e-9)
                bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)  # drawn with the next update
                bar.update(1)
                text = normalize_text(doc.text, lowercase=clean.lowercase)
                reason = failed_filter(text, clean)
                if reason is not None:
                    kept.filters[reason] += 1
                    continue
                duplicate, digest = deduplicator.check(text)
                if duplicate is not None:
                    continue
                kept.keys.append(split_key(digest, seed=seed))
                data = text.encode("utf-8")
                spool.write(_LENGTH.pack(len(data)))
                spool.write(data)
    kept.exact_removed, kept.near_removed = deduplicator.exact_removed, deduplicator.near_removed
    if not kept.keys:
        removed = ", ".join(f"{name}: {n:,}" for name, n in kept.filters.items() if n)
        raise DataError(
            f"no documents left: {kept.read:,} read, removed by filters ({removed or 'none'}), "
            f"{kept.exact_removed:,} exact and {kept.near_removed:,} near duplicates; check the sources "
            "and the filter thresholds"
        )
    return kept


def _spool_documents(path: Path) -> Iterator[tuple[str, int]]:
    """(text, UTF-8 byte length) of each spooled document, in order."""
    with open(path, "rb") as f:
        while header := f.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            yield f.read(length).decode("utf-8"), length


def _encode_spool(
    work: Path, tokenizer: Tokenizer, codes: Any, *, dtype: str, workers: int, verbose: bool
) -> dict[str, dict[str, int]]:
    """Pass 2: spool -> <split>.bin files. Returns splits.{name}.{documents,tokens,bytes}."""
    from lmforge.progress import progress_bar

    names = {code: name for name, code in SPLIT_CODES.items()}
    counts = {name: {"documents": 0, "tokens": 0, "bytes": 0} for name in SPLITS}
    spool = work / "documents.spool"
    bar = progress_bar(
        desc="tokenize",
        total=spool.stat().st_size,
        unit="B",
        unit_scale=True,
        disable=not verbose,
        mininterval=0.5,
    )

    job_sizes: deque[tuple[int, int]] = deque()  # (documents, bytes) of each job handed to the encoder

    def jobs() -> Iterator[tuple[str, list[str]]]:
        # Documents of one split are batched together, in order, so each split file is in source order.
        pending: dict[str, list[str]] = {name: [] for name in SPLITS}
        pending_bytes = dict.fromkeys(SPLITS, 0)
        for (text, n_bytes), code in zip(_spool_documents(spool), codes, strict=True):
            name = names[int(code)]
            counts[name]["documents"] += 1
            counts[name]["bytes"] += n_bytes
            pending[name].append(text)
            pending_bytes[name] += n_bytes
            if pending_bytes[name] >= JOB_BYTES:
                job_sizes.append((len(pending[name]), pending_bytes[name]))
                yield name, pending[name]
                pending[name], pending_bytes[name] = [], 0
        for name in SPLITS:
            if pending[name]:
                job_sizes.append((len(pending[name]), pending_bytes[name]))
                yield name, pending[name]

    written = [name for name in SPLITS if name == "train" or (codes == SPLIT_CODES[name]).any()]
    writer = SplitWriter(work, dtype=dtype, splits=written)
    start, docs_done = time.perf_counter(), 0
    try:
        for name, ids in encode_jobs(tokenizer, jobs(), dtype=dtype, workers=workers):
            writer.append(name, ids)
            n_docs, n_bytes = job_sizes.popleft()  # results arrive in job order
            docs_done += n_docs
            bar.update(n_bytes)
            bar.set_postfix_str(f"{docs_done / (time.perf_counter() - start):.0f} docs/s")
    finally:
        writer.close()
        bar.close()
    for name in SPLITS:
        counts[name]["tokens"] = writer.tokens.get(name, 0)
    return counts


def format_report(meta: dict[str, Any], *, seconds: float | None = None) -> str:
    """The human-readable summary printed after a run and saved as report.txt."""
    lines = ["lmforge data prepare: report", ""]
    lines.append("sources")
    for s in meta["sources"]:
        extra = ""
        if s["bad_records"]:
            extra += f", {s['bad_records']:,} bad records skipped"
        if s["replaced"]:
            extra += f", {s['replaced']:,} invalid UTF-8 sequences replaced"
            extra += f" in {counted(s['documents_with_replacements'], 'document')}"
        size = f"{counted(s['documents'], 'document')}, {s['bytes'] / 1e6:.2f} MB"
        lines.append(f"  {s['spec']} ({s['kind']}): {size}{extra}")
        lines.extend(f"    e.g. {example}" for example in s["bad_record_examples"])
    docs_in = meta["documents"]["read"]
    lines += ["", "documents", f"  {'read':<34}{docs_in:>8,}"]
    remaining = docs_in
    thresholds = {
        "min_chars": "min_chars",
        "max_chars": "max_chars",
        "alpha_fraction": "min_alpha_fraction",
        "dup_line_fraction": "max_dup_line_fraction",
        "max_line_length": "max_line_length",
    }
    for name, removed in meta["filters"].items():
        remaining -= removed
        setting = meta["cleaning"].get(thresholds.get(name, ""), "")
        label = f"filter {name}" + ("" if setting == "" else " (off)" if setting is None else f" ({setting})")
        lines.append(f"  {label:<34}{-removed:>8,}  -> {remaining:,}")
    for kind in ("exact", "near"):
        removed = meta["dedup"][f"{kind}_removed"]
        remaining -= removed
        lines.append(f"  {kind + ' duplicates':<34}{-removed:>8,}  -> {remaining:,}")
    lines += ["", f"splits (dtype {meta['dtype']}, eot id {meta['eot_id']}, vocab {meta['vocab_size']:,})"]
    lines.append(f"  {'split':<8}{'documents':>12}{'tokens':>14}{'MB':>10}{'bytes/token':>13}")
    for name in SPLITS:
        c = meta["splits"][name]
        ratio = f"{c['bytes'] / c['tokens']:.3f}" if c["tokens"] else "-"
        megabytes = c["bytes"] / 1e6
        lines.append(f"  {name:<8}{c['documents']:>12,}{c['tokens']:>14,}{megabytes:>10.2f}{ratio:>13}")
    if seconds is not None:
        total_mb = sum(s["bytes"] for s in meta["sources"]) / 1e6
        lines += ["", f"took {seconds:.1f} s ({total_mb / seconds:.1f} MB/s of input)"]
    return "\n".join(lines) + "\n"
