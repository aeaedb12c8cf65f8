"""Fault injection: a training or `data prepare` subprocess is SIGKILLed at a named point
(`LMFORGE_FAULT`, see `lmforge.fileio.fault_point`), and what it leaves must be valid and resumable.

Training: one chain of runs of the tiny GPT (6 steps, an evaluation and a checkpoint every 2), each
killed at another point, inside a checkpoint write, between the two renames that replace `best/`, and
between saving a step and copying it to `best/`, each followed by `--resume`; the final `metrics.csv`
must equal the uninterrupted run's row for row (timings aside), and `best/` must hold the step that
trainer_state.json calls best. Data: a killed `prepare` leaves only a partial directory, which the next
run removes, and a killed `--overwrite` leaves the previous dataset recoverable.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmforge
from conftest import TINY_TRAIN
from lmforge.data.shards import load_meta
from lmforge.training.checkpoint import CheckpointManager, load_trainer_state
from lmforge.training.config import load_config
from lmforge.training.trainer import train_from_config

pytestmark = [pytest.mark.fault, pytest.mark.slow]

SRC = str(Path(lmforge.__file__).parents[1])  # the lmforge under test, also in subprocesses
STEPS = ["train.max_iters=6", "train.eval_interval=2", "model.dropout=0.1"]


def _cli(*argv: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("LMFORGE_FAULT", None)
    if fault:
        env["LMFORGE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in ("tokens_per_s", "mfu", "elapsed_s")}
            for row in csv.DictReader(f)
        ]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_killed_training_resumes_to_the_uninterrupted_curve(tiny_dataset: Path, tmp_path: Path) -> None:
    settings = [*TINY_TRAIN, f"data.dir={tiny_dataset}", *STEPS]
    reference = tmp_path / "reference"
    train_from_config(load_config(None, overrides=[*settings, f"train.out_dir={reference}"]))
    run = tmp_path / "run"
    train = ["train", *[x for s in [*settings, f"train.out_dir={run}"] for x in ("--set", s)]]
    ckpts = CheckpointManager(run / "checkpoints")

    # 1. killed inside the second checkpoint write (step 4): files written, not yet renamed into place
    killed = _cli(*train, fault="checkpoint:before-rename@2")
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in ckpts.step_dirs()] == ["step_00000002"]
    assert [name.split("-")[0] for name in _hidden(ckpts.directory)] == [".step_00000004.tmp"]

    # 2. resumed, and killed between the renames that replace best/ with step 4
    killed = _cli(*train, "--resume", fault="replace_dir:between-renames")
    assert killed.returncode == -9, killed.stderr  # step 4's eval improved on step 2's, so best/ was replaced
    assert not ckpts.best.exists()
    # the old best/ moved aside, the new one not yet renamed into place
    assert [name.split("-")[0] for name in _hidden(ckpts.directory)] == [".best.old", ".best.tmp"]

    # 3. resumed (best/ restored, then refreshed from step 4), killed after saving step 6, before best/
    killed = _cli(*train, "--resume", fault="checkpoint:before-best")
    assert killed.returncode == -9, killed.stderr
    assert "best/ refreshed from" in killed.stdout
    assert load_trainer_state(ckpts.best)["step"] == 4

    # 4. resumed to the end: the same rows as the run that was never interrupted
    done = _cli(*train, "--resume")
    assert done.returncode == 0, done.stderr
    assert _rows(run) == _rows(reference)
    # step 6 was the last step: this run only repaired best/ (the kill came before step 2 was pruned)
    assert [p.name for p in ckpts.step_dirs()] == ["step_00000002", "step_00000004", "step_00000006"]
    assert _hidden(ckpts.directory) == []
    final = load_trainer_state(ckpts.directory / "step_00000006")
    assert load_trainer_state(ckpts.best)["step"] == final["best_step"]
    assert (
        final["best_eval_loss"]
        == load_trainer_state(reference / "checkpoints/step_00000006")["best_eval_loss"]
    )


def test_killed_prepare_leaves_nothing_loadable_and_the_next_run_cleans_up(
    tiny_dataset: Path, tmp_path: Path
):
    root = tiny_dataset.parent
    out = tmp_path / "data"
    prepare = [
        "data",
        "prepare",
        "--source",
        str(root / "docs.jsonl"),
        "--tokenizer",
        str(root / "tokenizer.json"),
    ]
    prepare += ["--out", str(out), "--dedup", "none", "--val", "0.25", "--quiet"]

    killed = _cli(*prepare, fault="prepare:before-rename")
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    assert [name.split("-")[0] for name in _hidden(tmp_path)] == [".data.partial"]
    assert _cli(*prepare).returncode == 0
    assert _hidden(tmp_path) == []  # the dead run's partial directory is gone
    assert (out / "train.bin").read_bytes() == (tiny_dataset / "train.bin").read_bytes()
    assert load_meta(out)["splits"] == load_meta(tiny_dataset)["splits"]

    # --overwrite killed between its renames: the previous dataset is only moved aside, and comes back
    (out / "report.txt").write_text("the previous dataset")
    killed = _cli(*prepare, "--overwrite", fault="replace_dir:between-renames")
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    refused = _cli(*prepare)  # the next run puts the previous dataset back, then refuses to replace it
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert (out / "report.txt").read_text() == "the previous dataset"
    assert _cli(*prepare, "--overwrite").returncode == 0
    assert _hidden(tmp_path) == []
    assert (out / "train.bin").read_bytes() == (tiny_dataset / "train.bin").read_bytes()
