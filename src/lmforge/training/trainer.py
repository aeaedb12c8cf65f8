"""The training loop: gradient accumulation, clipping, mixed precision, evaluation, checkpoints, resume.

`Trainer` knows nothing about files of tokens. It takes
- a model with `model(x, y) -> (logits, mean loss over targets != IGNORE_INDEX)` (lmforge's GPT, or
  anything alike), scored by an *objective* (`objectives.py`; next-token cross-entropy by default),
- an optimizer (see optim.py),
- a *batch source* with `next_batch() -> (x, y)`, `state_dict()` and `load_state_dict()` (the
  `BatchSource` protocol; `lmforge.data.datasets.RandomWindows` is one, an SFT or arithmetic recipe
  brings its own with answer-only targets),
- an optional *eval callable* `evaluate(model) -> {"loss": ..., ...}` (see `lmforge.evaluation.metrics`).
`train_from_config(config)` wires these up for the standard case: causal LM on a prepared dataset dir.

One step: for each of the k micro-batches, forward under autocast and backward of loss_i * n_i / N,
where n_i is the number of target tokens of micro-batch i and N = sum n_i. The summed gradient is then
exactly the gradient of the mean loss over all N target tokens, i.e. of one k-times-larger batch, also
when masks make the micro-batches unequal (dividing each mean loss by k would not be: torchtune #2307).
Then the global gradient norm is computed (and clipped), and the update is skipped if the loss or the
norm is not finite; after `max_nonfinite_steps` such steps in a row the run stops with `TrainingDiverged`.

Several processes (torchrun): `run_training` joins the process group and wraps the model in DDP or
FSDP2 (distributed.py); the batch source is sharded by rank (RandomWindows(rank=, world_size=)). N is
then the target count summed over all ranks, each rank's backward is scaled by world_size / N (DDP and
FSDP average the gradients over ranks), and the gradients are reduced only after the last micro-batch.
Rank 0 alone logs, writes metrics and plots; rank 0 writes full checkpoints under DDP, every rank writes
its shards under FSDP (distributed.py).
Deliberately not here: the losses themselves (objectives.py), sampling, checkpoint files (checkpoint.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmforge.errors import ConfigError, FormatError, LmforgeError
from lmforge.fileio import atomic_write_text
from lmforge.training.checkpoint import (
    CheckpointManager,
    check_model_config,
    load_trainer_state,
    restore_training_state,
)
from lmforge.training.config import Config, OptimSection, TrainSection, to_toml
from lmforge.training.distributed import (
    SHARDS_DIR,
    World,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    close_world,
    env_world_size,
    gradient_sync,
    init_world,
    load_into,
    parallelize,
    resolve_parallel,
    save_sharded_checkpoint,
    shard_batches,
)
from lmforge.training.logging import RunLogger, measure_matmul_peak
from lmforge.training.objectives import Objective, causal_lm, count_targets, mask_tokens, masked_lm
from lmforge.training.optim import build_optimizer, lr_at, set_lr
from lmforge.training.rng import rng_state, seed_everything, set_rng_state
from lmforge.training.rundir import open_run_dir


class TrainingDiverged(LmforgeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class BatchSource(Protocol):
    """Where training batches come from; the state makes a resumed run draw the same batches."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


EvalFn = Callable[[nn.Module], dict[str, float]]  # model -> metrics, at least {"loss": ...}


# ---------------------------------------------------------------- device and precision


def batch_positions(x: torch.Tensor) -> int:
    """Sequence positions a batch x feeds the model: rows x length, for ids (B, T) as for inputs that
    stack k rows per sequence (..., k, T), such as a cross-encoder's ids, token types and mask (k = 3)
    for each pair, or for each of a query's G pairs (B, G, 3, T).
    Example: x of shape (4, 3, 16) -> 64, not its 192 elements; (2, 4, 3, 16) -> 128."""
    return x.numel() if x.dim() <= 2 else x.numel() // x.shape[-2]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={name!r} is invalid; this machine has no CUDA device, use auto or cpu"
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16' or 'fp32'. "auto" picks bf16 only where bf16 matmuls are fast: CUDA GPUs that support it,
    and CPUs with AVX-512-BF16 or AMX (elsewhere CPU bf16 is emulated and slower than fp32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16" if fast else "fp32"
    return "fp32"


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts: bf16 matmuls with fp32 weights, or a no-op for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---------------------------------------------------------------- one step


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    objective: Objective = causal_lm,
    world_size: int = 1,
) -> float:
    """Forward + backward over micro-batches; returns the mean loss over all their scored targets.

    Each micro-batch's mean loss is weighted by its share n_i / N of the scored targets (IGNORE_INDEX
    targets do not count), so the accumulated gradients equal those of one batch made of all micro-batches.
    Example: n = (3, 1) target tokens with mean losses (2.0, 6.0) -> 3/4 * 2.0 + 1/4 * 6.0 = 3.0, the
    mean over the 4 tokens; the naive (2.0 + 6.0) / 2 = 4.0 would over-weight the short micro-batch.

    With `world_size` W > 1 (a DDP or FSDP `model`), N and the loss are summed over the ranks and each
    weight is W * n_i / N, because the gradient reduction averages over the W ranks: the result is the
    gradient of the mean over every rank's targets. Only the last micro-batch's backward reduces; every
    micro-batch runs its forward and backward on every rank, since both are collective under FSDP.
    """
    counts = [count_targets(y) for _, y in micro_batches]
    total = sum(counts) if world_size == 1 else all_reduce_sum([sum(counts)])[0]
    if total == 0:
        raise LmforgeError(
            "a training batch has no target tokens (every target is IGNORE_INDEX); check the batch source"
        )
    loss_sum = 0.0
    last = len(micro_batches) - 1
    for i, ((x, y), n) in enumerate(zip(micro_batches, counts, strict=True)):
        if n == 0 and world_size == 1:  # its mean loss would be 0/0
            continue
        with gradient_sync(model, enabled=i == last):  # DDP needs the forward inside too
            with autocast():
                loss = objective(model, x, y)
            (loss * (n * world_size / total)).backward()  # n = 0: a zero gradient, to keep ranks in step
        if n:
            loss_sum += loss.item() * n
    return loss_sum / total if world_size == 1 else all_reduce_sum([loss_sum])[0] / total


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    step: int  # optimizer steps done (skipped non-finite steps included)
    stopped: str  # "max_iters" or "early_stopping"
    train_loss: float  # mean loss of the last step
    best_eval_loss: float | None  # lowest eval loss seen (None without an eval callable)
    last_eval: dict[str, float] | None  # metrics of the last evaluation
    skipped_steps: int  # steps whose update was skipped (non-finite loss or gradient)
    run_dir: Path


class Trainer:
    """Runs the loop described in the module docstring; `fit()` trains, optionally resuming a checkpoint."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: BatchSource,
        *,
        optim: OptimSection,
        train: TrainSection,
        evaluate: EvalFn | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
        objective: Objective = causal_lm,
        world: World | None = None,
        train_module: nn.Module | None = None,
    ):
        """`world` and `train_module` come from `run_training` under torchrun: this process's place in
        the job and the module the step runs (`model` in DDP, or `model` itself sharded by FSDP2, whose
        parameters `optimizer` must then hold). Without them: one process on `train.device`."""
        self.world = world or World(0, 0, 1, resolve_device(train.device), None)
        self.device = self.world.device
        self.parallel = resolve_parallel(train.parallel, self.world.world_size)
        self.precision = resolve_precision(train.precision, self.device)
        self.autocast = autocast_for(self.device, self.precision)
        self.model = model.to(self.device)
        train_module = train_module if train_module is not None else self.model
        # torch.compile wraps the forward used for training; evaluation and checkpoints use the module.
        self.forward_model = torch.compile(train_module) if train.compile else train_module
        self.optimizer = optimizer
        self.batches = batches
        self.optim_config = optim
        self.config = train
        self.evaluate = evaluate
        self.objective = objective
        self.checkpoint_meta = checkpoint_meta or {}
        self.rank, self.world_size = self.world.rank, self.world.world_size
        self.is_main = self.world.is_main
        self.run_dir = Path(train.out_dir)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=train.keep_last)
        # Progress of the run; everything here goes into trainer_state.json.
        self.step = 0
        self.best_eval_loss: float | None = None
        self.best_step: int | None = None  # the step whose model is best/ (it has best_eval_loss)
        self.evals_without_improvement = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.tokens_seen = 0
        self.history: list[dict[str, Any]] = []
        self.notes: list[str] = []  # what recovery after a crash did, printed when the run starts

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rng": rng_state(),
            "batches": self.batches.state_dict(),
            "best_eval_loss": self.best_eval_loss,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "skipped_steps": self.skipped_steps,
            "tokens_seen": self.tokens_seen,
            "precision": self.precision,
            "history": self.history,
        }

    def resume(self, ckpt_dir: str | Path) -> None:
        """Load model, optimizer, RNG, data position and counters from a checkpoint directory."""
        ckpt_dir = Path(ckpt_dir)
        try:
            if self.world_size > 1 or (ckpt_dir / SHARDS_DIR).is_dir():  # any sharding, either side
                state = load_trainer_state(ckpt_dir)
                check_model_config(ckpt_dir, self.model)
                groups = (state.get("optimizer") or {}).get("param_groups")
                load_into(ckpt_dir, model=self.model, optimizer=self.optimizer, param_groups=groups)
            else:
                state = restore_training_state(ckpt_dir, model=self.model, optimizer=self.optimizer)
        except FormatError as e:
            hint = (
                self.checkpoints.describe_fallback(ckpt_dir)
                if ckpt_dir.parent == self.checkpoints.directory
                else ""
            )
            raise FormatError(e.path, e.problem + hint) from None
        saved, now = state["batches"], self.batches.state_dict()
        shape = ("batch_size", "world_size", "accum_steps")
        changed = [
            f"{k} {saved[k]} -> {now[k]}" for k in shape if k in saved and k in now and saved[k] != now[k]
        ]
        self.batches.load_state_dict(saved)
        if changed:
            same = math.prod(saved.get(k, 1) for k in shape) == math.prod(now.get(k, 1) for k in shape)
            self.notes.append(
                f"resuming with {', '.join(changed)}: "
                + (
                    "the same global batch, so the same windows as an uninterrupted run"
                    if same
                    else "from here on the batches differ from those of an uninterrupted run"
                )
            )
        try:
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # binascii.Error is a ValueError
            raise FormatError(
                ckpt_dir / "trainer_state.json", f"'rng' is not an RNG state saved by lmforge ({e})"
            ) from None
        self.step = int(state["step"])
        self.best_step = state.get("best_step")
        self.best_eval_loss = state.get("best_eval_loss")
        if self.is_main:  # the run directory's files are rank 0's
            self.notes += self.checkpoints.set_aside_after(self.step)
            self.best_eval_loss, note = self.checkpoints.reconcile_best(ckpt_dir, state)
            if note:
                self.notes.append(note)
        best = broadcast_from_main([math.nan if self.best_eval_loss is None else self.best_eval_loss])[0]
        self.best_eval_loss = None if math.isnan(best) else best
        if self.best_eval_loss is None:
            self.best_step = None
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.history = list(state.get("history", []))

    def _lr(self, step: int) -> float:
        o = self.optim_config
        return lr_at(
            step,
            lr=o.lr,
            min_lr=o.min_lr,
            warmup_iters=o.warmup_iters,
            decay_iters=o.decay_iters or self.config.max_iters,
            schedule=o.schedule,
        )

    def _peak_flops(self) -> float:
        if self.config.peak_tflops > 0:
            return self.config.peak_tflops * 1e12
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        with torch.random.fork_rng(devices=[]):  # measuring must not move the RNG a resumed run restores
            return measure_matmul_peak(dtype=dtype, device=self.device)

    def fit(self, *, resume_from: str | Path | None = None) -> TrainResult:
        """Train until `train.max_iters` steps or early stopping; returns a summary."""
        cfg = self.config
        if resume_from is not None:
            self.resume(resume_from)
        # MFU's peak is the measured peak of one process times the processes (each measures alike)
        counts_flops = hasattr(self.model, "flops_per_token")
        peak = self._peak_flops() * self.world_size if self.is_main and counts_flops else 0.0
        logger = RunLogger(
            self.run_dir,
            total_steps=cfg.max_iters,
            initial_step=self.step,
            history=self.history,
            enabled=self.is_main,
            tensorboard=cfg.tensorboard,
            progress=cfg.progress,
        )
        self.history = logger.history  # one list: the logger appends, checkpoints save it
        logger.message(
            f"training on {self.device} ({self.precision}) from step {self.step} to {cfg.max_iters}; "
            f"run dir {self.run_dir}"
        )
        if self.world_size > 1 or cfg.grad_accum_steps > 1:
            global_batch = cfg.batch_size * cfg.grad_accum_steps * self.world_size
            logger.message(
                f"global batch {global_batch} sequences = {cfg.batch_size} per micro-batch x "
                f"{cfg.grad_accum_steps} accumulation steps x {self.world_size} processes"
                + (f" ({self.parallel}, {self.world.backend})" if self.world_size > 1 else "")
            )
        for note in self.notes:
            logger.message(note)
        self.model.train()
        stopped, train_loss, last_eval = "max_iters", float("nan"), None
        window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
        fit_start = window_start
        try:
            while self.step < cfg.max_iters:
                lr = self._lr(self.step)
                set_lr(self.optimizer, lr)
                micro = [
                    tuple(t.to(self.device) for t in self.batches.next_batch())
                    for _ in range(cfg.grad_accum_steps)
                ]
                train_loss = accumulate_gradients(
                    self.forward_model,
                    micro,
                    autocast=self.autocast,
                    objective=self.objective,
                    world_size=self.world_size,
                )
                # Clipping to inf still returns the norm, which is logged either way. Under FSDP the gradients
                # are DTensor shards and clip_grad_norm_ reduces their norms over the ranks.
                max_norm = self.optim_config.grad_clip or float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=max_norm))
                finite = math.isfinite(train_loss) and math.isfinite(grad_norm)
                if finite:
                    self.optimizer.step()
                    self.nonfinite_in_a_row = 0
                else:
                    self.nonfinite_in_a_row += 1
                    self.skipped_steps += 1
                    logger.message(
                        f"step {self.step}: non-finite loss {train_loss} or grad norm {grad_norm}; "
                        f"update skipped ({self.nonfinite_in_a_row} in a row)"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                step_tokens = sum(batch_positions(x) for x, _ in micro) * self.world_size
                self.tokens_seen += step_tokens
                window_tokens += step_tokens
                if peak:  # at each batch's own length: attention's FLOPs grow with it
                    window_flops += self.world_size * sum(
                        batch_positions(x) * self.model.flops_per_token(seq_len=x.shape[-1]) for x, _ in micro
                    )
                logger.advance()
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"stopping at step {self.step}: {self.nonfinite_in_a_row} steps in a row had a "
                        "non-finite loss or gradient; lower optim.lr, keep optim.grad_clip > 0, or resume "
                        f"from the last checkpoint in {self.checkpoints.directory}"
                    )
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_iters or not finite:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                    row = {
                        "loss": train_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": tokens_per_s,
                        "skipped": float(self.skipped_steps),
                        "elapsed_s": time.perf_counter() - fit_start,  # wall time of this process's run
                    }
                    if peak:
                        row["mfu"] = window_flops / elapsed / peak if elapsed > 0 else 0.0
                    logger.log(self.step, "train", row)
                    window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
                eval_due = self.step == cfg.max_iters or (
                    cfg.eval_interval and self.step % cfg.eval_interval == 0
                )
                if eval_due:
                    last_eval = self._evaluate_and_checkpoint(logger)
                    # evaluation time is not training time
                    window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
                    patience = cfg.early_stopping_patience
                    if patience and self.evals_without_improvement >= patience:
                        stopped = "early_stopping"
                        logger.message(
                            f"early stopping at step {self.step}: no lower eval loss in the last "
                            f"{patience} evaluations (best {self.best_eval_loss:.4f})"
                        )
                        break
        finally:
            logger.plot()
            logger.close()
        return TrainResult(
            step=self.step,
            stopped=stopped,
            train_loss=train_loss,
            best_eval_loss=self.best_eval_loss,
            last_eval=last_eval,
            skipped_steps=self.skipped_steps,
            run_dir=self.run_dir,
        )

    def _evaluate_and_checkpoint(self, logger: RunLogger) -> dict[str, float] | None:
        metrics = None
        is_best = False
        if self.evaluate is not None:
            metrics = self.evaluate(self.model)
            self.model.train()
            logger.log(self.step, "val", metrics)
            loss = metrics.get("loss")  # an eval without a loss (e.g. exact match only) tracks no best
            if loss is not None and (self.best_eval_loss is None or loss < self.best_eval_loss):
                self.best_eval_loss, self.best_step, is_best = loss, self.step, True
                self.evals_without_improvement = 0
            elif loss is not None:
                self.evals_without_improvement += 1
            logger.message(f"step {self.step}: " + ", ".join(f"{k} {_short(v)}" for k, v in metrics.items()))
        if self.config.checkpoint and (self.is_main or self.parallel == "fsdp"):
            save = self.checkpoints.save
            if self.parallel == "fsdp":
                save = functools.partial(save_sharded_checkpoint, self.checkpoints, world=self.world)
            path = save(
                self.step,
                is_best=is_best,
                model=self.model,
                optimizer=self.optimizer,
                trainer_state=self.state_dict(),
                meta=self.checkpoint_meta,
            )
            logger.message(f"step {self.step}: checkpoint {path}" + (" (best)" if is_best else ""))
        barrier(self.world)  # no rank runs ahead while rank 0 writes
        logger.plot()
        return metrics


# ---------------------------------------------------------------- the standard LM case


def run_training(
    config: Any,
    model: nn.Module,
    batches: BatchSource,
    *,
    evaluate: EvalFn | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    objective: Objective = causal_lm,
    resume: bool | str | Path = False,
    overwrite: bool = False,
) -> tuple[Trainer, TrainResult]:
    """The wiring every training command shares: process group and parallel wrapping under torchrun
    (distributed.py), optimizer, `Trainer`, the run directory's lock and checks (rundir.py: a directory
    holding a run needs `resume` or `overwrite`), resume point, the resolved config in
    `<out_dir>/config.toml`, then `fit()`. `config` has `optim` and `train` sections (`Config`, or a
    recipe's own sections dataclass). `resume=True` continues from the newest checkpoint of the run dir,
    a path from that checkpoint. Returns the trainer (its history, precision) and the result.

    Under torchrun, rank 0 alone owns the run directory; a job that torchrun restarts after a failure
    (`--max-restarts`, TORCHELASTIC_RESTART_COUNT > 0) continues from the newest checkpoint.
    """
    world = init_world(device=resolve_device(config.train.device), timeout_s=config.train.dist_timeout)
    finished = False
    try:
        if world.world_size > 1 and getattr(batches, "world_size", 1) != world.world_size:
            raise ConfigError(
                f"this training's batches are not split over the {world.world_size} processes (every rank "
                "would train on the same data); run it as a single process, without torchrun"
            )
        parallel = resolve_parallel(config.train.parallel, world.world_size)
        model = model.to(world.device)
        precision = resolve_precision(config.train.precision, world.device)
        train_module = parallelize(model, parallel=parallel, world=world, precision=precision)
        optimizer = build_optimizer(model, config.optim)  # after FSDP2 replaced the parameters by shards
        trainer = Trainer(
            model,
            optimizer,
            batches,
            optim=config.optim,
            train=config.train,
            evaluate=evaluate,
            checkpoint_meta=checkpoint_meta,
            objective=objective,
            world=world,
            train_module=train_module,
        )
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        if restarts and not resume:
            resume = trainer.checkpoints.latest() is not None
        owner = open_run_dir if world.is_main else _not_the_owner
        may_continue = bool(resume) or restarts > 0
        with owner(trainer.run_dir, resume=may_continue, overwrite=overwrite and not restarts) as notes:
            if world.is_main:
                trainer.notes += notes
                trainer.notes += trainer.checkpoints.recover()  # e.g. best/ cut short between two renames
                resume_from = _resume_point(trainer, resume)
                if restarts:
                    start = resume_from or "step 0"
                    trainer.notes.append(f"torchrun restart {restarts}: continuing from {start}")
                atomic_write_text(trainer.run_dir / "config.toml", to_toml(config))
            barrier(world)  # the other ranks find the checkpoint rank 0 found, after its recovery
            if not world.is_main:
                resume_from = _resume_point(trainer, resume)
            result = trainer.fit(resume_from=resume_from)
            finished = True
            return trainer, result
    finally:
        close_world(world, finished=finished)


@contextlib.contextmanager
def _not_the_owner(run_dir: Path, **_: Any) -> Iterator[list[str]]:
    """Ranks other than 0 leave the run directory's lock and files to rank 0."""
    yield []


def _resume_point(trainer: Trainer, resume: bool | str | Path) -> Path | None:
    if resume is True:
        latest = trainer.checkpoints.latest()
        if latest is None:
            raise ConfigError(f"--resume: no checkpoint in {trainer.checkpoints.directory}")
        return latest
    return Path(resume) if resume else None


def train_from_config(
    config: Config, *, resume: bool | str | Path = False, overwrite: bool = False
) -> TrainResult:
    """Pretraining on the prepared dataset `config.data.dir`, as `lmforge train` runs it: causal LM for a
    GPT, masked LM for a BERT (`model.architecture = "bert"`, see `mlm_setup`; its MLM decoder bias starts
    at the log unigram frequencies of the training tokens, so training starts at the unigram baseline)."""
    from lmforge.data.datasets import RandomWindows, sequential_windows, spread_windows
    from lmforge.data.shards import check_token_ids, load_meta, open_split
    from lmforge.evaluation.metrics import evaluate_lm, unigram_logprobs, unigram_loss
    from lmforge.models import BERT, GPT
    from lmforge.tokenizers import tokenizer_from_dict

    train, data = config.train, config.data
    seed_everything(train.seed)
    meta = load_meta(data.dir)
    tokenizer = tokenizer_from_dict(meta["tokenizer"], source=Path(data.dir) / "meta.json")
    bert = config.model.architecture == "bert"
    mask_id, special_ids = mlm_setup(tokenizer) if bert else (None, [])
    if "vocab_size" not in config.model.options:  # resolved: written into config.toml
        config.model.options["vocab_size"] = max(tokenizer.vocab_size, (mask_id or 0) + 1)
    model_config = config.model.build()
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids"
        )
    train_tokens, eval_tokens = open_split(data.dir, "train"), open_split(data.dir, data.eval_split)
    for split, tokens in (("train", train_tokens), (data.eval_split, eval_tokens)):
        check_token_ids(data.dir, split, tokens, tokenizer.vocab_size)  # refused before step 1
    if bert and model_config.vocab_size <= mask_id:
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} leaves no room for the [MASK] id {mask_id}; "
            f"use at least {mask_id + 1} or leave it unset"
        )
    model = BERT(model_config) if bert else GPT(model_config)
    objective = causal_lm
    if bert:
        objective = masked_lm(mask_id=mask_id, vocab_size=tokenizer.vocab_size, special_ids=special_ids)
        with torch.no_grad():  # the decoder bias starts at log p(token): the model at the unigram baseline
            model.mlm.bias.copy_(unigram_logprobs(train_tokens, vocab_size=model_config.vocab_size))
    batches = RandomWindows(
        train_tokens,
        block_size=model_config.block_size,
        batch_size=train.batch_size,
        seed=train.seed,
        rank=int(os.environ.get("RANK", 0)),
        world_size=env_world_size(),
        accum_steps=train.grad_accum_steps,
    )
    split_counts = meta["splits"][data.eval_split]
    bytes_per_token = split_counts["bytes"] / split_counts["tokens"] if split_counts["bytes"] else None
    device = resolve_device(train.device)
    autocast = autocast_for(device, resolve_precision(train.precision, device))

    def eval_windows() -> Any:
        # The windows of the global batch size, so every world size scores the same sample of the split.
        T, B = model_config.block_size, train.batch_size * env_world_size()
        if train.eval_batches:  # a fixed sample spread over the whole split, not just its first document
            return spread_windows(eval_tokens, block_size=T, batch_size=B, num_batches=train.eval_batches)
        return sequential_windows(eval_tokens, block_size=T, batch_size=B)

    if bert:  # the same masked positions at every evaluation, drawn once from their own generator
        generator = torch.Generator().manual_seed(train.seed)
        masked = [
            mask_tokens(x, mask_id=mask_id, vocab_size=tokenizer.vocab_size, special_ids=special_ids,
                        generator=generator)
            for x, _ in eval_windows()
        ]  # fmt: skip
        baseline = unigram_loss(train_tokens, [y for _, y in masked], vocab_size=model_config.vocab_size)

    def evaluate(m: nn.Module) -> dict[str, float]:
        if bert:  # masked-token loss, perplexity and accuracy, beside the unigram baseline on those tokens
            metrics = evaluate_lm(m, masked, device=device, autocast=autocast) | {"unigram_loss": baseline}
            metrics.pop("tokens")
            return metrics
        return evaluate_on_ranks(
            m,
            eval_windows(),
            device=device,
            batch_size=train.batch_size,
            autocast=autocast,
            bytes_per_token=bytes_per_token,
        )

    checkpoint_meta = {
        **({"mask_id": mask_id} if bert else {}),
        "tokenizer": meta["tokenizer"],
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
        "dataset": str(Path(data.dir).resolve()),  # absolute: eval --ckpt works from any directory
    }
    _, result = run_training(
        config,
        model,
        batches,
        evaluate=evaluate,
        checkpoint_meta=checkpoint_meta,
        objective=objective,
        resume=resume,
        overwrite=overwrite,
    )
    return result


def evaluate_on_ranks(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """`evaluate_lm` (loss, ppl, accuracy, bpb) over `batches`, split over the ranks of a torchrun job.

    Each rank scores its share of the rows in batches of `batch_size` (`distributed.shard_batches`); the
    sums loss x tokens, correct and tokens over the ranks then give exactly the single-process figures
    (up to float summation order).
    """
    from lmforge.evaluation.metrics import evaluate_lm, perplexity

    if env_world_size() == 1:
        metrics = evaluate_lm(
            model, batches, device=device, autocast=autocast, bytes_per_token=bytes_per_token
        )
        metrics.pop("tokens")
        return metrics
    mine = shard_batches(list(batches), batch_size=batch_size)
    local = evaluate_lm(model, mine, device=device, autocast=autocast)
    n = local["tokens"]
    loss_sum, correct, tokens = all_reduce_sum([local["loss"] * n, local["accuracy"] * n, n])
    loss = loss_sum / tokens
    metrics = {"loss": loss, "ppl": perplexity(loss), "accuracy": correct / tokens}
    if bytes_per_token is not None:
        metrics["bpb"] = loss / (bytes_per_token * math.log(2))
    return metrics


def mlm_setup(tokenizer: Any) -> tuple[int, list[int]]:
    """(the [MASK] id, the ids masked-LM never chooses) for a tokenizer. A WordPiece tokenizer has its
    own [MASK]; one without (char, byte-level BPE) gets the id after its last one, `vocab_size`, which
    the BERT's embedding table then includes. Special tokens ([CLS], [SEP], <|endoftext|>...) are never
    chosen."""
    special = sorted(tokenizer.special_tokens.values())
    mask_id = tokenizer.special_tokens.get("[MASK]", tokenizer.vocab_size)
    return mask_id, sorted({*special, mask_id})


def _short(value: float) -> str:
    """A metric for a log line: 4 decimals, or 4 significant digits when huge (a diverged run's
    perplexity is ~1e304 and would otherwise print 300 digits)."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
