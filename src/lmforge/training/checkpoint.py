"""Training checkpoints: atomic save, validated restore of the training state, keep-last-K plus best.

A checkpoint is a directory (the artifact table in docs/architecture.md):

    step_00000500/
      model.safetensors, meta.json   written by the model's `save_checkpoint` (meta carries the tokenizer)
      optimizer.safetensors          every tensor of `optimizer.state_dict()["state"]` as "state.<idx>.<name>"
      trainer_state.json             step, RNG states, data position, best val loss, metrics so far, and
                                     the optimizer's param_groups / non-tensor state

Atomicity: everything is written into a hidden temporary sibling directory, which is renamed into
place only once complete. A crash while saving leaves the previous checkpoints untouched (and at worst
a `.tmp` directory that the next save removes). A crash between the two renames of a replacement
(`fileio.replace_dir`, e.g. of `best/`) leaves the old copy as `.best.old-<id>`, which the next start
puts back (`CheckpointManager.recover`) rather than deleting it. `best/` is recorded by step
(`best_step` in trainer_state.json), and a resumed run checks that `best/` holds that step before it
believes its best loss (`CheckpointManager.reconcile_best`). Every file is validated on load and a broken one
raises `FormatError` naming it. Tensors are checked for NaN/inf before anything is written, so a
checkpoint never holds non-finite values.

Deliberately not here: the RNG states themselves (rng.py), loading a model to use it
(`lmforge.models.checkpoints.load_checkpoint`), sharded (FSDP) checkpoints: this writes from rank 0
with full tensors, distributed.py writes shards into the same directory layout and commits them through
`CheckpointManager` (`recover`, `finish_save`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import FormatError, LmforgeError, is_int, is_number
from lmforge.fileio import (
    atomic_write_json,
    fault_point,
    load_safetensors,
    read_json,
    recover_dir,
    replace_dir,
    save_safetensors,
)
from lmforge.models.checkpoints import load_checkpoint
from lmforge.models.gpt import checkpoint_meta

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


# Fields of trainer_state.json whose type the trainer relies on: (key, check, what it must be).
_STATE_TYPES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("step", lambda v: is_int(v, 0), "an integer >= 0"),
    ("rng", lambda v: isinstance(v, dict), "an object"),
    ("batches", lambda v: isinstance(v, dict), "an object"),
    ("best_eval_loss", lambda v: v is None or is_number(v), "a number or null"),
    ("best_step", lambda v: v is None or is_int(v, 0), "an integer >= 0 or null"),
    *(
        (key, lambda v: is_int(v, 0), "an integer >= 0")
        for key in ("evals_without_improvement", "nonfinite_in_a_row", "skipped_steps", "tokens_seen")
    ),
    (
        "history",
        lambda v: isinstance(v, list) and all(isinstance(row, dict) for row in v),
        "a list of objects",
    ),
)


class NonFiniteError(LmforgeError):
    """A tensor about to be saved holds NaN or inf."""


# ---------------------------------------------------------------- optimizer state


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and the JSON rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value
            elif value is not None:  # SGD's momentum_buffer is None before the first step
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in rest["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- save / load


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"refusing to write a checkpoint: {what} '{name}' holds NaN or inf")


def save_checkpoint(
    ckpt_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint to `ckpt_dir` atomically (replacing an existing one) and return it.

    `model` must have `save_checkpoint(dir, *, meta=...)` (lmforge's GPT); `meta` (e.g. the tokenizer's
    `to_dict()`) goes into its meta.json. `trainer_state` must be JSON-serialisable.
    """
    ckpt_dir = Path(ckpt_dir)
    _check_finite(dict(model.state_dict()), "model tensor")
    optim_tensors, optim_rest = _optimizer_to_files(optimizer) if optimizer is not None else ({}, None)
    _check_finite(optim_tensors, "optimizer tensor")
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".{ckpt_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_checkpoint(tmp, meta=meta or {})
        if optimizer is not None:
            save_safetensors(tmp / "optimizer.safetensors", optim_tensors)
        state = {"format_version": FORMAT_VERSION, **trainer_state, "optimizer": optim_rest}
        atomic_write_json(tmp / "trainer_state.json", state, indent=None)
        fault_point("checkpoint:before-rename")
        replace_dir(tmp, ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_dir


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """Read and check `trainer_state.json` of a checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FormatError(ckpt_dir, "checkpoint directory not found")
    path = ckpt_dir / "trainer_state.json"
    state = read_json(path, what="trainer state")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise FormatError(path, f"not a trainer state of format_version {FORMAT_VERSION}")
    for key in ("step", "rng", "batches"):
        if key not in state:
            raise FormatError(path, f"missing '{key}'")
    for key, ok, rule in _STATE_TYPES:
        if key in state and not ok(state[key]):
            raise FormatError(path, f"'{key}' is {state[key]!r}; it must be {rule}")
    return state


def restore_training_state(
    ckpt_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a checkpoint's weights into `model` and its state into `optimizer`; return the trainer state.

    Every file is read and validated before `model` or `optimizer` is touched, so a broken checkpoint
    raises `FormatError` (naming the file) and leaves them unchanged. The weights are read by the one
    checkpoint loader (`lmforge.models.checkpoints.load_checkpoint`).
    """
    ckpt_dir = Path(ckpt_dir)
    state = load_trainer_state(ckpt_dir)
    saved = load_checkpoint(ckpt_dir, require_tokenizer=False, architecture=None)[0]
    _check_same_config(ckpt_dir, saved, model)
    weights = saved.state_dict()
    optim_sd = None
    if optimizer is not None:
        path = ckpt_dir / "optimizer.safetensors"
        tensors = load_safetensors(path, what="optimizer state")
        if not isinstance(state.get("optimizer"), dict):
            raise FormatError(ckpt_dir / "trainer_state.json", "missing the optimizer's param_groups")
        optim_sd = _optimizer_from_files(tensors, state["optimizer"])
        if len(optim_sd["param_groups"]) != len(optimizer.param_groups):
            raise FormatError(path, "optimizer state does not match this optimizer (different param groups)")
        _check_optimizer_fits(path, optim_sd, optimizer)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise FormatError(ckpt_dir / "model.safetensors", f"weights do not fit this model ({e})") from None
    if optim_sd is not None:
        optimizer.load_state_dict(optim_sd)
    return state


def _check_same_config(ckpt_dir: Path, saved: nn.Module, model: nn.Module) -> None:
    """A model whose config differs from the checkpoint's cannot resume it: name the differing fields."""
    mine, theirs = getattr(model, "config", None), getattr(saved, "config", None)
    if mine is None or theirs is None or type(mine) is not type(theirs):
        return
    differing = [
        f"{name} {getattr(theirs, name)!r} -> {getattr(mine, name)!r}"
        for name in vars(theirs)
        if getattr(theirs, name) != getattr(mine, name)
    ]
    if differing:
        raise FormatError(
            ckpt_dir / "meta.json",
            f"the checkpoint's model differs from this run's ({'; '.join(differing)}); resume with the "
            "model settings it was trained with, or start a new run",
        )


def check_model_config(ckpt_dir: Path, model: nn.Module) -> None:
    """`_check_same_config` from meta.json alone, for a resume that never builds the saved model (a
    sharded checkpoint, whose weights go straight into the shards of this run's model)."""
    mine = getattr(model, "config", None)
    theirs = checkpoint_meta(ckpt_dir).get("config")
    if mine is None or not hasattr(mine, "to_dict") or not isinstance(theirs, dict):
        return
    differing = [f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.to_dict().items() if theirs.get(k) != v]
    if differing:
        raise FormatError(
            ckpt_dir / "meta.json",
            f"the checkpoint's model differs from this run's ({'; '.join(differing)}); resume with the "
            "model settings it was trained with, or start a new run",
        )


def _check_optimizer_fits(path: Path, optim_sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Every saved per-parameter tensor must have its parameter's shape (torch does not check this, and a
    mismatch would only fail inside the next optimizer step)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_counts = [len(group["params"]) for group in optim_sd["param_groups"]]
    if saved_counts != [len(group["params"]) for group in optimizer.param_groups]:
        raise FormatError(
            path,
            f"optimizer state is for another model ({sum(saved_counts)} parameters, "
            f"this model has {len(params)})",
        )
    for index, per_param in optim_sd["state"].items():
        if not 0 <= index < len(params):
            raise FormatError(path, f"optimizer state names parameter {index}; this model has {len(params)}")
        for name, value in per_param.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[index].shape:
                raise FormatError(
                    path,
                    f"optimizer state 'state.{index}.{name}' has shape {tuple(value.shape)} but parameter "
                    f"{index} has {tuple(params[index].shape)}: the file is from another model",
                )


# ---------------------------------------------------------------- a run's checkpoints


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (no copy of the bytes; checkpoint files are never modified), or a copy across devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class CheckpointManager:
    """The checkpoints of one run: `step_XXXXXXXX/` (the last `keep_last` kept) and `best/`."""

    def __init__(self, directory: str | Path, *, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = keep_last

    def step_dirs(self) -> list[Path]:
        """Complete step checkpoints, oldest first (temporary and moved-aside directories are skipped)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        dirs = self.step_dirs()
        return dirs[-1] if dirs else None

    @property
    def best(self) -> Path:
        return self.directory / "best"

    def save(self, step: int, *, is_best: bool, **kwargs: Any) -> Path:
        """Save `step_<step>/` (kwargs as for `save_checkpoint`), refresh `best/` and prune old steps."""
        self.recover()
        path = save_checkpoint(self.step_dir(step), **kwargs)
        self.finish_save(path, is_best=is_best)
        return path

    def step_dir(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}"

    def finish_save(self, path: Path, *, is_best: bool) -> None:
        """After `path` (a step checkpoint) is in place: copy it to `best/` if it is, prune old steps."""
        fault_point("checkpoint:before-best")
        if is_best:
            self._copy_to_best(path)
        for old in self.step_dirs()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def _copy_to_best(self, source: Path) -> None:
        tmp = self.directory / f".best.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, tmp, copy_function=_link_or_copy)  # with a sharded one's shards/
            replace_dir(tmp, self.best)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def recover(self) -> list[str]:
        """Clean up after a crash during an earlier save; returns what was restored, for the log.

        A `.tmp-` directory is an unfinished save: deleted. A `.<name>.old-` directory is the previous
        `<name>/` moved aside by a replacement: deleted once `<name>/` stands again, but renamed back to
        `<name>/` when the crash came between the two renames (then it is the only copy).
        """
        restored: list[str] = []
        if not self.directory.is_dir():
            return restored
        for p in sorted(self.directory.iterdir()):
            if not p.name.startswith("."):
                continue
            if ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
            elif ".old-" in p.name and p.exists():
                target = self.directory / p.name[1:].rsplit(".old-", 1)[0]
                if recover_dir(target):
                    restored.append(f"restored {target} from the copy a crash left at {p.name}")
        return restored

    def reconcile_best(self, resumed: Path, state: dict[str, Any]) -> tuple[float | None, str | None]:
        """The best eval loss a run resumed from `resumed` may claim, and a note when it had to change.

        `state["best_step"]` says which step's model is the best. If `best/` holds another step (a crash
        came between saving that step and copying it to `best/`, or the run resumed a checkpoint of
        another run), that step's checkpoint is copied to `best/`; if it no longer exists anywhere, the
        run forgets the best loss rather than claim a model it does not have.
        """
        best_loss, best_step = state.get("best_eval_loss"), state.get("best_step")
        if best_loss is None or best_step is None:  # no evaluation yet, or a checkpoint from before best_step
            return best_loss, None
        candidates = [self.best, self.directory / f"step_{best_step:08d}", resumed.parent / "best"]
        candidates.append(resumed.parent / f"step_{best_step:08d}")
        for candidate in candidates:
            try:
                holds = load_trainer_state(candidate)["step"] == best_step
            except FormatError:
                continue
            if holds:
                if candidate != self.best:
                    self._copy_to_best(candidate)
                    return best_loss, f"best/ refreshed from {candidate} (step {best_step})"
                return best_loss, None
        return None, f"the best model (step {best_step}) is gone; the best loss starts afresh"

    def set_aside_after(self, step: int) -> list[str]:
        """Rename the step checkpoints newer than `step` to `step_XXXXXXXX.abandoned-<id>`; return notes.

        A run resumed from an older checkpoint starts a new branch: left in place, the newer checkpoints
        of the abandoned branch would win `latest()` (a later `--resume` would jump to them) and make
        the pruning delete the new branch's checkpoints, whose step numbers sort lower. Renamed, they are
        kept but no longer count as checkpoints of the run.
        """
        notes = []
        for path in self.step_dirs():
            if int(_STEP_DIR.match(path.name).group(1)) > step:
                aside = path.with_name(f"{path.name}.abandoned-{uuid.uuid4().hex[:8]}")
                os.replace(path, aside)
                notes.append(f"resumed from step {step}: the newer {path.name} is kept as {aside.name}")
        return notes

    def describe_fallback(self, broken: Path) -> str:
        """A hint naming the newest intact-looking checkpoint older than `broken`, for error messages."""
        older = [p for p in self.step_dirs() if p.name < broken.name]
        if not older:
            return ""
        return f"; the previous checkpoint is {older[-1]} (resume from it with --resume {older[-1]})"
