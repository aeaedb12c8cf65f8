"""Training the generative image models (VAE, GAN, DDPM) and the pictures each run leaves behind.

`train_generative(config)` is what `lmforge vision generate --config configs/fashion-vae.toml` runs.
The run config has the sections of a classifier run (`[data]`, `[optim]`, `[train]`, from
`training/vision.py`) with `[model]` a `GenerativeConfig`. The pixel range follows the model
(VAE [0, 1], GAN and DDPM [-1, 1]), so `data.mean` / `data.std` are set from the kind, not read.

One loop serves the VAE and DDPM (a single loss from `model.loss(x)`); the GAN alternates a
discriminator step and a generator step with two Adam optimizers (DCGAN: lr 2e-4, betas (0.5, 0.999)
from `[optim]`). Both reuse `lr_at`, gradient clipping and `RunLogger` as the classifier loop does.

GAN objectives (Goodfellow et al. 2014; the non-saturating generator loss of section 3):
    discriminator: BCE(D(x), 1 - label_smoothing) + BCE(D(G(z)), 0)   (one-sided smoothing, Salimans
                   et al. 2016: only the real targets are softened)
    generator:     BCE(D(G(z)), 1) = -log sigmoid(D(G(z)))  (instead of minimising log(1 - D(G(z))),
                   whose gradient vanishes when D confidently rejects the samples early in training)

Every `train.eval_interval` steps a grid of samples from the SAME noise is saved under samples/, so the
grids show one set of samples improving; progress.png stacks them. Final pictures: samples.png, and per
kind reconstructions.png + traversal.png (VAE), losses.png (GAN), samples_ddim.png (DDPM).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.images import ImageBatches, check_image_shape
from lmforge.evaluation.vision import image_grid, save_image_grid, save_png
from lmforge.fileio import atomic_write_json, atomic_write_text
from lmforge.models.generative import GenerativeConfig, build_generative, save_generative, to_unit
from lmforge.training.config import OptimSection, load_config, to_toml
from lmforge.training.logging import RunLogger
from lmforge.training.optim import build_optimizer, lr_at, set_lr
from lmforge.training.trainer import resolve_device
from lmforge.training.vision import ImageDataSection, ImageTrainSection, load_splits

GRID_SIZE = 64  # samples per grid (8 x 8)


@dataclass
class GenerativeRunConfig:
    data: ImageDataSection = field(default_factory=ImageDataSection)
    model: GenerativeConfig = field(default_factory=GenerativeConfig)
    optim: OptimSection = field(default_factory=lambda: OptimSection(warmup_iters=0, weight_decay=0.0))
    train: ImageTrainSection = field(default_factory=ImageTrainSection)


def load_generative_config(path: str | Path | None, *, overrides: Sequence[str] = ()) -> GenerativeRunConfig:
    """Read a TOML run config and apply `section.key=value` overrides; every field is validated."""
    config = load_config(path, overrides=overrides, sections=GenerativeRunConfig)
    # the pixel range belongs to the model: VAE [0, 1], GAN and DDPM [-1, 1]
    config.data.mean, config.data.std = (0.0, 1.0) if config.model.kind == "vae" else (0.5, 0.5)
    return config


# ---------------------------------------------------------------------------------------------------
# GAN objectives


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, *, label_smoothing: float
) -> torch.Tensor:
    """BCE(D(x), 1 - label_smoothing) + BCE(D(G(z)), 0), each averaged over the batch.

    Example: all logits 0 (D undecided) -> ln 2 + ln 2 = 1.386 without smoothing.
    """
    real = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, 1.0 - label_smoothing)
    )
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: BCE(D(G(z)), 1) = mean softplus(-logit). Example: logit 0 -> ln 2 = 0.693."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------------------------
# The loops


def _lr(step: int, optim: OptimSection, max_iters: int) -> float:
    return lr_at(
        step,
        lr=optim.lr,
        min_lr=optim.min_lr,
        warmup_iters=optim.warmup_iters,
        decay_iters=optim.decay_iters or max_iters,
        schedule=optim.schedule,
    )


def _clip(parameters: Any, optim: OptimSection) -> float:
    return float(torch.nn.utils.clip_grad_norm_(list(parameters), max_norm=optim.grad_clip or float("inf")))


def _fit_single_loss(
    model: nn.Module,
    batches: ImageBatches,
    config: GenerativeRunConfig,
    logger: RunLogger,
    snapshot: Any,
    device: torch.device,
) -> None:
    """VAE and DDPM: minimise `model.loss(x)`."""
    optim, train = config.optim, config.train
    optimizer = build_optimizer(model, optim)
    start = time.perf_counter()
    for step in range(train.max_iters):
        lr = _lr(step, optim, train.max_iters)
        set_lr(optimizer, lr)
        x, _ = batches.next_batch()
        loss, parts = model.loss(x.to(device))
        loss.backward()
        grad_norm = _clip(model.parameters(), optim)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logger.advance()
        done = step + 1
        if done % train.log_interval == 0 or done == train.max_iters:
            logger.log(
                done,
                "train",
                {
                    "loss": loss.item(),
                    **parts,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "elapsed_s": time.perf_counter() - start,
                },
            )
        snapshot(done)


def _fit_gan(
    model: nn.Module,
    batches: ImageBatches,
    config: GenerativeRunConfig,
    logger: RunLogger,
    snapshot: Any,
    device: torch.device,
) -> None:
    """Alternate: one discriminator step on a real and a generated batch, then one generator step."""
    optim, train = config.optim, config.train
    G, D = model.generator, model.discriminator
    betas = (optim.beta1, optim.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=optim.lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=optim.lr, betas=betas)
    start = time.perf_counter()
    for step in range(train.max_iters):
        lr = _lr(step, optim, train.max_iters)
        set_lr(opt_g, lr)
        set_lr(opt_d, lr)
        real, _ = batches.next_batch()
        real = real.to(device)
        z = torch.randn(len(real), G.latent_dim, device=device)
        fake = G(z)
        # discriminator: fake detached, so this step does not move the generator
        d_loss = discriminator_loss(D(real), D(fake.detach()), label_smoothing=config.model.label_smoothing)
        d_loss.backward()
        d_norm = _clip(D.parameters(), optim)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        # generator: through the just-updated discriminator
        g_loss = generator_loss(D(fake))
        g_loss.backward()
        g_norm = _clip(G.parameters(), optim)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)  # the generator's backward also filled D's gradients
        logger.advance()
        done = step + 1
        if done % train.log_interval == 0 or done == train.max_iters:
            logger.log(
                done,
                "train",
                {
                    "loss": g_loss.item() + d_loss.item(),
                    "d_loss": d_loss.item(),
                    "g_loss": g_loss.item(),
                    "lr": lr,
                    "grad_norm": g_norm,
                    "d_grad_norm": d_norm,
                    "elapsed_s": time.perf_counter() - start,
                },
            )
        snapshot(done)


def _plot_series(history: list[dict[str, Any]], keys: Sequence[str], path: Path, *, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    rows = [r for r in history if r["split"] == "train"]
    for key in keys:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_generative(config: GenerativeRunConfig) -> dict[str, Any]:
    """Train the model of `config.model.kind`; write checkpoint, grids and results.json into train.out_dir."""
    from lmforge.training.rng import seed_everything

    train, mc = config.train, config.model
    seed_everything(train.seed)
    train_set, _ = load_splits(config.data, seed=train.seed)
    check_image_shape(train_set, mc.input_shape, what=f"data set '{config.data.dataset}' (train split)")
    out = Path(train.out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(config))
    device = resolve_device(train.device)
    if train.threads:
        torch.set_num_threads(train.threads)
    model = build_generative(mc).to(device)
    model.train()
    batches = ImageBatches(
        train_set,
        batch_size=train.batch_size,
        mean=config.data.mean,
        std=config.data.std,
        seed=train.seed,
        crop_padding=config.data.crop_padding,
        flip=config.data.flip,
    )
    logger = RunLogger(
        out, total_steps=train.max_iters, tensorboard=train.tensorboard, progress=train.progress
    )
    grids: list[np.ndarray] = []
    interval = train.eval_interval or train.max_iters

    def sample(n: int, seed: int, **options: Any) -> torch.Tensor:
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        if options:
            samples = model.sample_ddim(n, generator=generator, **options)
        else:
            samples = model.sample(n, generator=generator)
        model.train()
        return to_unit(samples, mc.kind).cpu()

    def snapshot(step: int) -> None:
        # DDPM's ancestral sampler runs all T steps; DDIM gives the in-training pictures in a fraction
        if step % interval == 0 or step == train.max_iters:
            options = {"steps": mc.ddim_steps} if mc.kind == "ddpm" else {}
            images = sample(16, 0, **options)
            save_image_grid(images, out / "samples" / f"step_{step:06d}.png", nrow=16)
            grids.append(image_grid(images, nrow=16))

    start = time.perf_counter()
    try:
        fit = _fit_gan if mc.kind == "gan" else _fit_single_loss
        fit(model, batches, config, logger, snapshot, device)
    finally:
        logger.plot()
        logger.close()
    train_seconds = time.perf_counter() - start
    save_generative(model, mc, out / "model", meta={"dataset": config.data.dataset, "steps": train.max_iters})
    save_png(np.concatenate(grids, axis=0), out / "progress.png", scale=2)
    results: dict[str, Any] = {
        "kind": mc.kind,
        "steps": train.max_iters,
        "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": logger.history[-1]["loss"],
    }
    timer = time.perf_counter()
    save_image_grid(sample(GRID_SIZE, 1), out / "samples.png")
    results["sample_seconds_64"] = time.perf_counter() - timer
    if mc.kind == "ddpm":
        timer = time.perf_counter()
        save_image_grid(sample(GRID_SIZE, 1, steps=mc.ddim_steps), out / "samples_ddim.png")
        results[f"ddim{mc.ddim_steps}_sample_seconds_64"] = time.perf_counter() - timer
    if mc.kind == "vae":
        _vae_pictures(model, train_set.images[:16], out)
    if mc.kind == "gan":
        _plot_series(logger.history, ("d_loss", "g_loss"), out / "losses.png", ylabel="loss (BCE)")
    atomic_write_json(out / "results.json", results)
    return results


@torch.no_grad()
def _vae_pictures(model: nn.Module, originals: np.ndarray, out: Path) -> None:
    """reconstructions.png (originals above, reconstructions from the means below) and traversal.png
    (rows: one latent dimension each, moved from -3 to +3 while the others stay 0)."""
    model.eval()
    device = model.to_stats.weight.device
    x = torch.from_numpy(originals).float().div(255).to(device)
    mu, _ = model.encode(x)
    reconstructions = torch.sigmoid(model.decode(mu))
    save_image_grid(torch.cat([x, reconstructions]).cpu(), out / "reconstructions.png", nrow=16)
    dims = min(8, model.latent_dim)
    values = torch.linspace(-3, 3, 11)
    z = torch.zeros(dims, len(values), model.latent_dim)
    for d in range(dims):
        z[d, :, d] = values
    images = torch.sigmoid(model.decode(z.view(-1, model.latent_dim).to(device)))
    save_image_grid(images.cpu(), out / "traversal.png", nrow=len(values))
