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

Distributed-ready: no module-level state; `rank`/`world_size` decide who logs and checkpoints, and the
batch source is expected to be sharded by rank (RandomWindows(rank=, world_size=)). Wrapping the model
in DDP/FSDP (and all-reducing N across ranks) is not written yet: a world size above 1 is refused.
Deliberately not here: the losses themselves (objectives.py), sampling, checkpoint files (checkpoint.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmforge.errors import ConfigError, FormatError, LmforgeError
from lmforge.fileio import atomic_write_text
from lmforge.training.checkpoint import CheckpointManager, restore_training_state
from lmforge.training.config import Config, OptimSection, TrainSection, to_toml
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
) -> float:
    """Forward + backward over micro-batches; returns the mean loss over all their scored targets.

    Each micro-batch's mean loss is weighted by its share n_i / N of the scored targets (IGNORE_INDEX
    targets do not count), so the accumulated gradients equal those of one batch made of all micro-batches.
    Example: n = (3, 1) target tokens with mean losses (2.0, 6.0) -> 3/4 * 2.0 + 1/4 * 6.0 = 3.0, the
    mean over the 4 tokens; the naive (2.0 + 6.0) / 2 = 4.0 would over-weight the short micro-batch.
    """
    counts = [count_targets(y) for _, y in micro_batches]
    total = sum(counts)
    if total == 0:
        raise LmforgeError(
            "a training batch has no target tokens (every target is IGNORE_INDEX); check the batch source"
        )
    loss_sum = 0.0
    for (x, y), n in zip(micro_batches, counts, strict=True):
        if n == 0:  # its mean loss would be 0/0
            continue
        with autocast():
            loss = objective(model, x, y)
        (loss * (n / total)).backward()
        loss_sum += loss.item() * n
    return loss_sum / total


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
        rank: int = 0,
        world_size: int = 1,
    ):
        self.device = resolve_device(train.device)
        self.precision = resolve_precision(train.precision, self.device)
        self.autocast = autocast_for(self.device, self.precision)
        self.model = model.to(self.device)
        # torch.compile wraps the forward used for training; evaluation and checkpoints use the module.
        self.forward_model = torch.compile(self.model) if train.compile else self.model
        self.optimizer = optimizer
        self.batches = batches
        self.optim_config = optim
        self.config = train
        self.evaluate = evaluate
        self.objective = objective
        self.checkpoint_meta = checkpoint_meta or {}
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
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
            state = restore_training_state(ckpt_dir, model=self.model, optimizer=self.optimizer)
        except FormatError as e:
            hint = (
                self.checkpoints.describe_fallback(ckpt_dir)
                if ckpt_dir.parent == self.checkpoints.directory
                else ""
            )
            raise FormatError(e.path, e.problem + hint) from None
        saved, now = state["batches"], self.batches.state_dict()
        changed = [
            f"{k} {saved[k]} -> {now[k]}"
            for k in ("batch_size", "world_size")
            if k in saved and k in now and saved[k] != now[k]
        ]
        self.batches.load_state_dict(saved)
        if changed:
            self.notes.append(
                f"resuming with {', '.join(changed)}: from here on the batches differ from those of an "
                "uninterrupted run"
            )
        try:
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # binascii.Error is a ValueError
            raise FormatError(
                ckpt_dir / "trainer_state.json", f"'rng' is not an RNG state saved by lmforge ({e})"
            ) from None
        self.step = int(state["step"])
        self.notes += self.checkpoints.set_aside_after(self.step)
        self.best_step = state.get("best_step")
        self.best_eval_loss, note = self.checkpoints.reconcile_best(ckpt_dir, state)
        if note:
            self.notes.append(note)
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
        flops_per_token = self.model.flops_per_token() if hasattr(self.model, "flops_per_token") else 0.0
        peak = self._peak_flops() if self.is_main and flops_per_token else 0.0
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
        for note in self.notes:
            logger.message(note)
        self.model.train()
        stopped, train_loss, last_eval = "max_iters", float("nan"), None
        window_tokens, window_start = 0, time.perf_counter()
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
                    self.forward_model, micro, autocast=self.autocast, objective=self.objective
                )
                # Clipping to inf still returns the norm, which is logged either way.
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
                step_tokens = sum(x.numel() for x, _ in micro) * self.world_size
                self.tokens_seen += step_tokens
                window_tokens += step_tokens
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
                        row["mfu"] = tokens_per_s * flops_per_token / peak
                    logger.log(self.step, "train", row)
                    window_tokens, window_start = 0, time.perf_counter()
                eval_due = self.step == cfg.max_iters or (
                    cfg.eval_interval and self.step % cfg.eval_interval == 0
                )
                if eval_due:
                    last_eval = self._evaluate_and_checkpoint(logger)
                    window_tokens, window_start = 0, time.perf_counter()  # eval time is not training time
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
        if self.config.checkpoint and self.is_main:
            path = self.checkpoints.save(
                self.step,
                is_best=is_best,
                model=self.model,
                optimizer=self.optimizer,
                trainer_state=self.state_dict(),
                meta=self.checkpoint_meta,
            )
            logger.message(f"step {self.step}: checkpoint {path}" + (" (best)" if is_best else ""))
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
    """The wiring every training command shares: optimizer, `Trainer`, the run directory's lock and checks
    (rundir.py: a directory holding a run needs `resume` or `overwrite`), resume point, the resolved config
    in `<out_dir>/config.toml`, then `fit()`. `config` has `optim` and `train` sections (`Config`, or a
    recipe's own sections dataclass). `resume=True` continues from the newest checkpoint of the run dir,
    a path from that checkpoint. Returns the trainer (its history, precision) and the result.
    """
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        raise ConfigError("distributed training (torchrun) is not implemented yet; run a single process")
    optimizer = build_optimizer(model, config.optim)
    trainer = Trainer(
        model,
        optimizer,
        batches,
        optim=config.optim,
        train=config.train,
        evaluate=evaluate,
        checkpoint_meta=checkpoint_meta,
        objective=objective,
        rank=rank,
        world_size=world_size,
    )
    with open_run_dir(trainer.run_dir, resume=bool(resume), overwrite=overwrite) as notes:
        trainer.notes += notes
        trainer.notes += trainer.checkpoints.recover()  # e.g. best/ cut short between two renames
        resume_from = _resume_point(trainer, resume)
        atomic_write_text(trainer.run_dir / "config.toml", to_toml(config))
        return trainer, trainer.fit(resume_from=resume_from)


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
    GPT, masked LM for a BERT (`model.architecture = "bert"`, see `mlm_setup`)."""
    from lmforge.data.datasets import RandomWindows, sequential_windows, spread_windows
    from lmforge.data.shards import check_token_ids, load_meta, open_split
    from lmforge.evaluation.metrics import evaluate_lm, unigram_loss
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
    batches = RandomWindows(
        train_tokens,
        block_size=model_config.block_size,
        batch_size=train.batch_size,
        seed=train.seed,
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )
    split_counts = meta["splits"][data.eval_split]
    bytes_per_token = split_counts["bytes"] / split_counts["tokens"] if split_counts["bytes"] else None
    device = resolve_device(train.device)
    autocast = autocast_for(device, resolve_precision(train.precision, device))

    def eval_windows() -> Any:
        T, B = model_config.block_size, train.batch_size
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
        else:
            metrics = evaluate_lm(
                m, eval_windows(), device=device, autocast=autocast, bytes_per_token=bytes_per_token
            )
        metrics.pop("tokens")
        return metrics

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
