"""A run directory's ownership: one training at a time, and no run silently written over another.

`open_run_dir(path, resume=..., overwrite=...)` is what every training command goes through before it
writes anything into its run directory:
- it takes an exclusive lock (`fcntl.flock` on `<run>/.lmforge.lock`, which holds the owner's pid), held
  until the context exits; a second training on the same directory is refused with the holder's pid. The
  kernel drops the lock when its process dies, so a lock file left by a killed run is stale by
  construction: the next run takes it over (and says so);
- a directory that already holds a run (any of `RUN_ARTIFACTS`) is refused unless the run resumes, or
  `overwrite` is given: then exactly `RUN_ARTIFACTS` are deleted, and nothing else in the directory
  (a recipe's tokenizer.json, a user's notes) is touched.
`refuse_existing_run` is that check alone, for a command that writes into the directory before training.

Deliberately not here: what goes into the directory (trainer.py, logging.py, checkpoint.py). POSIX only
(`fcntl`), like the rest of lmforge's file handling.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.errors import ConfigError

# Everything the trainer writes into a run directory; `overwrite` deletes these and only these.
RUN_ARTIFACTS = ("config.toml", "metrics.csv", "checkpoints", "events", "plots")
LOCK_FILE = ".lmforge.lock"


class RunDirLocked(ConfigError):
    """Another live process is training into the same run directory."""


def existing_artifacts(run_dir: Path) -> list[str]:
    """The names of `RUN_ARTIFACTS` present in `run_dir`."""
    return [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]


def refuse_existing_run(run_dir: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """Raise `ConfigError` if `run_dir` holds a run that is neither resumed nor to be overwritten; return
    the run's artifacts found there. A command that writes files of its own into the run directory
    before training (a recipe's tokenizer.json) calls this first, so that a refused run changes nothing."""
    found = existing_artifacts(run_dir) if run_dir.is_dir() else []
    if found and not resume and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume, "
            "choose another train.out_dir, or pass --overwrite to delete that run's files"
        )
    return found


@contextmanager
def open_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool = False) -> Iterator[list[str]]:
    """Lock `run_dir` (created if missing) for one training and check that it may be written.

    Yields notes for the run's log (a stale lock taken over, artifacts removed by `overwrite`).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.out_dir={str(run_dir)!r} is a file; the run directory must be a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    lock_path = run_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunDirLocked(
                f"{run_dir} is in use by another training (pid {holder}, lock {lock_path}); wait for it "
                "to finish or choose another train.out_dir"
            ) from None
        locked = True
        previous = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if previous and previous != str(os.getpid()):
            notes.append(f"took over the lock of pid {previous}, which ended without releasing it")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        found = refuse_existing_run(run_dir, resume=resume, overwrite=overwrite)
        if found and not resume:
            for name in found:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            notes.append(f"--overwrite: removed {', '.join(found)} from {run_dir}")
        yield notes
    finally:
        if locked:
            os.ftruncate(fd, 0)  # an empty lock file: nobody holds it (the lock itself goes with the fd)
        os.close(fd)
