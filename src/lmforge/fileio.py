"""Atomic, validated persistence: every file lmforge writes goes through here.

A write goes to a temporary file in the same directory, is fsync'ed, then renamed over the target, so
a crash leaves either the old file or the new one, never half of one. Reads validate and raise
`FormatError` naming the file. Deliberately no pickle anywhere: tensors go to safetensors, the rest to
JSON.

Crash safety of directories: `replace_dir` moves the old directory aside before renaming the new one
into place; `recover_dir` puts an orphaned old copy back after a crash between those two renames, so
a directory that existed before a replacement is never lost. `fault_point` is the deterministic crash
injection the reliability tests use: with `LMFORGE_FAULT=NAME` (or `NAME@N`, the N-th time) the process
kills itself with SIGKILL at the point called NAME, as a power cut or the OOM killer would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lmforge.errors import FormatError

FAULT_ENV = "LMFORGE_FAULT"  # NAME or NAME@N: SIGKILL this process at fault point NAME (its N-th hit)
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash here if `LMFORGE_FAULT` names this point (see the module docstring); otherwise do nothing."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    """The process umask. Linux shows it in /proc/self/status, read without changing it (so no other
    thread ever creates a file under a zero umask); elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None  # name the file, not its temporary
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a written file gets the usual mode
        fault_point("atomic_open:before-rename")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename in (None, tmp):  # e.g. ENOSPC from write(), which names no file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure to `path` as PNG, atomically, and close it (pyplot keeps every figure
    it made alive until closed)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", **savefig_kwargs)
    plt.close(fig)
    return path


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

    An existing `target` is first moved aside to `.<name>.old-<id>` and deleted only after the rename, so
    a reader never sees a half-written directory. A crash between the two renames leaves no `target` but
    the old copy beside it: `recover_dir(target)` (called by every writer before it writes again) puts it
    back, so a replacement is never a loss.
    """
    new, target = Path(new), Path(target)
    recover_dir(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        fault_point("replace_dir:between-renames")
    os.replace(new, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def old_copies(target: str | Path) -> list[Path]:
    """The `.<name>.old-<id>` copies of `target` that `replace_dir` moved aside, oldest first."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.old-[0-9a-f]{{8}}$")
    found = [p for p in target.parent.iterdir() if pattern.match(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def recover_dir(target: str | Path) -> bool:
    """Undo a `replace_dir` cut short between its renames: if `target` is missing and an old copy of it
    stands beside it, rename the newest copy back to `target` (True). Old copies of an existing `target`
    are complete leftovers of a finished replacement and are deleted."""
    target = Path(target)
    copies = old_copies(target)
    restored = False
    if copies and not target.exists():
        os.replace(copies.pop(), target)
        _fsync_dir(target.parent)
        restored = True
    for copy in copies:
        shutil.rmtree(copy, ignore_errors=True) if copy.is_dir() else copy.unlink(missing_ok=True)
    return restored


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
            path, f"corrupt or truncated {what} (invalid JSON at line {e.lineno}, column {e.colno})"
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
        raise FormatError(path, f"corrupt or truncated {what} ({e})") from None
