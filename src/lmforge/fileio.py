"""Atomic, validated persistence: every file lmforge writes goes through here.

A write goes to a temporary file in the same directory, is fsync'ed, then renamed over the target, so
a crash leaves either the old file or the new one, never half of one. Reads validate and raise
`FormatError` naming the file. Deliberately no pickle anywhere: tensors go to safetensors, the rest to
JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lmforge.errors import FormatError


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`atomic_open` for writers that open the file themselves (e.g. gguf's GGUFWriter): yields a temporary
    sibling path; on success the file there is fsync'ed and renamed to `path`, on failure deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Rename the finished directory `new` to `target`, the directory-level twin of `atomic_open`.

    An existing `target` is first moved aside and deleted only after the rename, so at every moment either
    the old directory or the complete new one stands at `target` (a reader never sees a half-written one).
    """
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(new, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Read a JSON file, turning every way it can be broken into a `FormatError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise FormatError(path, f"{what} not found")
    if path.is_dir():
        raise FormatError(path, f"expected a {what}, found a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FormatError(path, f"cannot read {what}: {e.strerror}") from None
    if not text.strip():
        raise FormatError(path, f"{what} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(
            path, f"{what} is corrupt or truncated (invalid JSON at line {e.lineno}, column {e.colno})"
        ) from None


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """Read a TOML file; a missing, non-UTF-8 or malformed file raises `FormatError` naming the file."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, f"{what} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FormatError(path, f"{what} is not valid TOML ({e})") from None


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a dict of torch tensors to a .safetensors file."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_safetensors(path: str | Path, *, what: str = "tensor file") -> dict:
    """Load a .safetensors file; a missing, truncated or corrupt file raises `FormatError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, f"{what} not found")
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise FormatError(path, f"{what} is corrupt or truncated ({e})") from None
