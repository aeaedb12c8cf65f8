"""Data loss made impossible: run directories, their lock, recoverable directory replacement, what each
`--overwrite` may delete, stale partial datasets, file modes, filesystem errors as one line.

Everything runs on the session's tiny fixtures (conftest.py: a 12-document char dataset and a 2-step
run of a 2-layer, 32-wide GPT); the crash tests kill a small subprocess at an `LMFORGE_FAULT` point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmforge
from conftest import TINY_TRAIN
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.fileio import atomic_write_text
from lmforge.models import GPT, GPTConfig
from lmforge.training.checkpoint import CheckpointManager, load_trainer_state
from lmforge.training.config import load_config
from lmforge.training.optim import build_optimizer
from lmforge.training.trainer import train_from_config

SRC = str(Path(lmforge.__file__).parents[1])  # the lmforge under test, also in subprocesses


def _config(dataset: Path, run: Path, *extra: str):
    return load_config(None, overrides=[*TINY_TRAIN, f"data.dir={dataset}", f"train.out_dir={run}", *extra])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- A1: a run directory is never trained over


def test_training_into_an_existing_run_is_refused_unless_resume_or_overwrite(
    tiny_dataset, tiny_run, tmp_path
):
    """Today's failure: a second `lmforge train` into the same directory truncated metrics.csv and pruned
    the new checkpoints. Now it is refused and nothing changes; --overwrite removes exactly the run's
    files (a user's notes.txt survives), and the new run is complete."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    with pytest.raises(
        ConfigError, match=r"already holds a run \(config\.toml, metrics\.csv, checkpoints, plots\)"
    ):
        train_from_config(_config(tiny_dataset, run, "train.max_iters=1"))
    assert _snapshot(run) == before
    result = train_from_config(_config(tiny_dataset, run, "train.max_iters=1"), overwrite=True)
    assert result.step == 1
    assert (run / "notes.txt").read_text() == "mine"
    assert [p.name for p in CheckpointManager(run / "checkpoints").step_dirs()] == ["step_00000001"]
    assert (run / "metrics.csv").read_text().count("\n") == 1 + 2  # header, one train and one val row


def test_cli_train_overwrite_flag(tiny_dataset, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["train", *[x for s in _config_args(tiny_dataset, run) for x in ("--set", s)]]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert "removed config.toml, metrics.csv, checkpoints, plots" in capsys.readouterr().out


def _config_args(dataset: Path, run: Path) -> list[str]:
    return [*TINY_TRAIN, f"data.dir={dataset}", f"train.out_dir={run}", "train.max_iters=1"]


def test_the_recipe_refuses_an_existing_run_before_writing_into_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step\n")
    (out / "tokenizer.json").write_text("mine")
    config = Path(__file__).parents[1] / "configs/arithmetic.toml"
    assert main(["recipe", "arithmetic", "--config", str(config), "--out", str(out)]) == 2
    assert "already holds a run (metrics.csv)" in capsys.readouterr().err
    assert (out / "tokenizer.json").read_text() == "mine"


def test_a_resume_with_another_batch_size_says_the_batches_change(tiny_dataset, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    train_from_config(_config(tiny_dataset, run, "train.max_iters=3", "train.batch_size=2"), resume=True)
    assert "resuming with batch_size 4 -> 2: from here on the batches differ" in capsys.readouterr().out


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tiny_dataset, tmp_path, capsys):
    """Run to step 4, then resume from step 2 to step 3. Before, step_00000004 (the abandoned branch) stayed
    the run's latest checkpoint, so the next --resume jumped to it, and pruning removed the new step 3."""
    run = tmp_path / "run"
    train_from_config(_config(tiny_dataset, run, "train.max_iters=4", "train.eval_interval=2"))
    ckpts = CheckpointManager(run / "checkpoints")
    resume_from = ckpts.directory / "step_00000002"
    train_from_config(
        _config(tiny_dataset, run, "train.max_iters=3", "train.eval_interval=1"), resume=resume_from
    )
    assert "the newer step_00000004 is kept as step_00000004.abandoned-" in capsys.readouterr().out
    assert [p.name for p in ckpts.step_dirs()] == ["step_00000002", "step_00000003"]
    assert ckpts.latest() == ckpts.directory / "step_00000003"
    assert [p.name.split("-")[0] for p in ckpts.directory.glob("*.abandoned-*")] == [
        "step_00000004.abandoned"
    ]
    assert load_trainer_state(ckpts.best)["step"] in (2, 3)  # best/ belongs to the branch that was resumed


# ---------------------------------------------------------------- A2: one training per run directory


def test_second_training_on_a_locked_run_dir_is_refused_with_the_holders_pid(tiny_dataset, tmp_path):
    from lmforge.training.rundir import RunDirLocked, open_run_dir

    run = tmp_path / "run"
    with open_run_dir(
        run, resume=False
    ):  # another open file description: flock conflicts as between processes
        with pytest.raises(RunDirLocked, match=rf"in use by another training \(pid {os.getpid()}, lock"):
            train_from_config(_config(tiny_dataset, run, "train.max_iters=1"))
    assert not (run / "metrics.csv").exists()
    assert train_from_config(_config(tiny_dataset, run, "train.max_iters=1")).step == 1  # released on exit


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    (run / ".lmforge.lock").write_text(f"{dead}\n")
    assert train_from_config(_config(tiny_dataset, run, "train.max_iters=1")).step == 1
    assert f"took over the lock of pid {dead}" in capsys.readouterr().out
    assert (run / ".lmforge.lock").read_text() == ""  # released


# ---------------------------------------------------------------- A3: replace_dir is recoverable


def _crash_replace_dir(target: Path, new: Path) -> subprocess.CompletedProcess:
    code = f"from lmforge.fileio import replace_dir; replace_dir({str(new)!r}, {str(target)!r})"
    env = os.environ | {"PYTHONPATH": SRC, "LMFORGE_FAULT": "replace_dir:between-renames"}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=60)


def test_a_crash_between_the_renames_of_replace_dir_loses_nothing(tmp_path):
    from lmforge.fileio import recover_dir

    target, new = tmp_path / "best", tmp_path / "new"
    target.mkdir()
    (target / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    assert _crash_replace_dir(target, new).returncode == -9  # SIGKILL at the fault point
    assert not target.exists()
    orphans = [p.name for p in tmp_path.iterdir() if p.name.startswith(".best.old-")]
    assert len(orphans) == 1
    assert recover_dir(target) is True
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "new"]


def test_checkpoint_manager_restores_an_orphaned_best_instead_of_deleting_it(tmp_path):
    """Before: `_remove_leftovers` deleted `.best.old-*` even when it was the only copy of best/."""
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = build_optimizer(model, load_config(None, overrides=["data.dir=x"]).optim)
    manager = CheckpointManager(tmp_path, keep_last=2)
    state = {"step": 1, "rng": {}, "batches": {}}
    manager.save(1, is_best=True, model=model, optimizer=optimizer, trainer_state=state)
    os.replace(tmp_path / "best", tmp_path / ".best.old-0123abcd")  # as a crash between the renames leaves it
    manager.save(2, is_best=False, model=model, optimizer=optimizer, trainer_state=state | {"step": 2})
    assert load_trainer_state(tmp_path / "best")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_00000001", "step_00000002"]


def test_resume_repairs_best_when_the_crash_came_before_the_copy(tiny_dataset, tiny_run, tmp_path, capsys):
    """best/ holds step 1 but the resumed state says step 2 is best (a crash between saving step 2 and
    copying it): the resumed run copies step 2 to best/ rather than claim a loss best/ does not have."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpts = run / "checkpoints"
    state = load_trainer_state(ckpts / "step_00000002")
    assert state["best_step"] == 2
    best_state = ckpts / "best/trainer_state.json"
    best_state.unlink()  # a hard link of step 2's file: replace, never edit in place
    best_state.write_text(json.dumps(state | {"step": 1, "best_step": 1, "best_eval_loss": 9.0}))
    train_from_config(_config(tiny_dataset, run, "train.max_iters=3"), resume=True)
    assert "best/ refreshed from" in capsys.readouterr().out
    assert load_trainer_state(ckpts / "best")["best_step"] in (2, 3)


# ---------------------------------------------------------------- A4: convert never writes where it must not


def test_convert_refuses_a_non_empty_dst_and_never_writes_into_a_training_checkpoint(
    tiny_run, tmp_path, capsys
):
    hf = tmp_path / "hf"
    assert (
        main(["convert", "--from", "lmforge", "--to", "hf", str(tiny_run / "checkpoints/best"), str(hf)]) == 0
    )
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", "--from", "hf", "--to", "lmforge", str(hf), str(dst)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", "--from", "hf", "--to", "lmforge", str(hf), str(dst), "--overwrite"]) == 0
    assert (dst / "keep.txt").read_text() == "mine" and (dst / "model.safetensors").is_file()
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "checkpoints/step_00000002", ckpt)
    before = _snapshot(ckpt)
    assert main(["convert", "--from", "hf", "--to", "lmforge", str(hf), str(ckpt), "--overwrite"]) == 2
    assert "is a training checkpoint" in capsys.readouterr().err
    assert _snapshot(ckpt) == before


# ---------------------------------------------------------------- A5, A6: prepare --overwrite and partials


def _prepare(tiny_dataset: Path, out: Path, *sources: str, overwrite: bool = True) -> list[str]:
    root = tiny_dataset.parent
    argv = ["data", "prepare", "--tokenizer", str(root / "tokenizer.json"), "--out", str(out), "--quiet"]
    argv += [x for s in sources or (str(root / "docs.jsonl"),) for x in ("--source", s)]
    return argv + (["--overwrite"] if overwrite else []) + ["--dedup", "none"]


def test_prepare_overwrite_never_deletes_an_input(tiny_dataset, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(tiny_dataset.parent / "docs.jsonl", corpus / "docs.jsonl")
    # --out is the source directory, or a directory holding the source file
    assert main(_prepare(tiny_dataset, corpus, str(corpus))) == 2
    assert "holds the input" in capsys.readouterr().err
    assert main(_prepare(tiny_dataset, corpus, str(corpus / "docs.jsonl"))) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert (corpus / "docs.jsonl").read_bytes() == (tiny_dataset.parent / "docs.jsonl").read_bytes()
    # a directory lmforge did not write is not replaced either
    assert main(_prepare(tiny_dataset, tmp_path / "corpus-other", str(corpus))) == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert main(_prepare(tiny_dataset, notes, str(corpus))) == 2
    assert "is not a dataset written by 'lmforge data prepare'" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"
    # a dataset it wrote is replaced
    assert main(_prepare(tiny_dataset, tmp_path / "corpus-other", str(corpus))) == 0


def test_stale_partials_of_dead_processes_are_removed(tiny_dataset, tmp_path):
    out = tmp_path / "data"
    dead = tmp_path / f".data.partial-{_dead_pid()}"
    alive = tmp_path / f".data.partial-{os.getppid()}"  # a live process: maybe a prepare still running
    for partial in (dead, alive):
        partial.mkdir()
        (partial / "documents.spool").write_bytes(b"x")
    assert main(_prepare(tiny_dataset, out, overwrite=False)) == 0
    assert not dead.exists() and alive.exists()
    assert (out / "meta.json").is_file()


# ---------------------------------------------------------------- file modes and filesystem errors


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_respect_the_umask(tmp_path, umask, mode):
    """0o666 & ~umask, as open() would give; mkstemp alone gives 0o600 whatever the umask."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode


def test_no_space_left_is_one_line_naming_the_file(tiny_run, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "hf"
    assert (
        main(["convert", "--from", "lmforge", "--to", "hf", str(tiny_run / "checkpoints/best"), str(out)])
        == 1
    )
    err = capsys.readouterr().err
    assert err == f"lmforge convert: error: {out / 'model.safetensors'}: No space left on device\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


@pytest.mark.parametrize(
    ("code", "text"), [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")]
)
def test_permission_denied_and_read_only_are_one_line_naming_the_file(
    tiny_run, tmp_path, capsys, monkeypatch, code, text
):
    """Tests run as root, where chmod does not stop a write; the error the OS would raise is simulated at
    the point where every atomic write creates its file."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "hf"
    argv = ["convert", "--from", "lmforge", "--to", "hf", str(tiny_run / "checkpoints/best"), str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lmforge convert: error: ") and err.endswith(f"{text}\n") and str(out) in err


def test_shipped_configs_are_found_from_any_directory(tmp_path, monkeypatch):
    from lmforge.cli.configs import REPOSITORY_CONFIGS, shipped_config

    monkeypatch.chdir(tmp_path)
    assert shipped_config("configs/arithmetic.toml") == str(REPOSITORY_CONFIGS / "arithmetic.toml")
    assert Path(shipped_config("configs/arithmetic.toml")).is_file()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "arithmetic.toml").write_text("[train]\n")
    assert shipped_config("configs/arithmetic.toml") == "configs/arithmetic.toml"  # the user's own copy wins
    assert shipped_config("configs/nope.toml") == "configs/nope.toml"  # the reader names what is missing


def test_a_checkpoint_records_its_dataset_as_an_absolute_path(tiny_dataset, tmp_path, monkeypatch):
    """Trained with a relative data.dir, `eval --ckpt` still finds the data from another directory."""
    from conftest import TINY_TRAIN

    monkeypatch.chdir(tiny_dataset.parent)
    run = tmp_path / "run"
    overrides = [*TINY_TRAIN, f"data.dir={tiny_dataset.name}", f"train.out_dir={run}", "train.max_iters=2"]
    assert main(["train", *[a for o in overrides for a in ("--set", o)]]) == 0
    meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["dataset"] == str(tiny_dataset.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--ckpt", str(run / "checkpoints" / "best"), "--max-batches", "1"]) == 0
