"""A sparse autoencoder (dictionary learning) on one hook point's activations, and how to judge it.

    acts = point_activations(model, windows, "blocks.2.resid_post")        # (N, C) from built-in text
    sae, history = train_sae(acts, SAEConfig(n_features=512, l1=1e-2))
    sae_metrics(sae, acts)             # MSE, explained variance, L0, dead features
    patched_losses(model, windows, "blocks.2.resid_post", sae)            # the model's loss with x_hat

The autoencoder (Bricken et al. 2023, "Towards Monosemanticity"):

    f     = ReLU((x - b_dec) @ W_enc + b_enc)          # (N, F) feature activations, F > C
    x_hat = f @ W_dec + b_dec                         # (N, C); every row of W_dec has unit norm
    loss  = mean_n ||x - x_hat||^2 / C  +  l1 * mean_n sum_f f_nf

with x first multiplied by one constant `scale` chosen so that the mean of ||x||^2 is C (and x_hat
divided by it), so that the same l1 suits layers of any magnitude (Bricken et al. normalise likewise).

The unit-norm decoder rows stop the L1 penalty from being dodged by shrinking f and growing W_dec; they
are renormalised after every optimiser step. Judged by:
- explained variance 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (1 = perfect, 0 = the mean);
- L0, the mean number of active features per input (sparsity: the smaller the better);
- dead features, those that never fire on the data; every `resample_every` steps, features dead since the
  last check are re-initialised towards inputs the autoencoder reconstructs worst (Bricken et al.'s
  resampling, simplified: directions of the worst residuals, encoder scaled to 0.2);
- the model's own next-token loss with x_hat patched in place of x, against the clean loss and the loss
  with x replaced by its mean (the "zero-ablation" baseline of the field, mean-ablated here because the
  stream is not centred): the fraction of the loss gap the SAE recovers.

Deliberately not here: top-k / gated / JumpReLU variants, ghost gradients, feature steering; SAEs on
attention outputs of individual heads.

References: Bricken et al. 2023, "Towards Monosemanticity: Decomposing Language Models With Dictionary
Learning"; Cunningham et al. 2023, "Sparse Autoencoders Find Highly Interpretable Features in Language
Models"; Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError, check, is_int, is_number
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.interpret.hooks import capture, patch
from lmforge.models.gpt import GPT
from lmforge.tokenizers.base import Tokenizer

SAE_FORMAT_VERSION = 1


@dataclass
class SAEConfig:
    """Size and training of a sparse autoencoder."""

    n_features: int = 512  # dictionary size F (a few times the activation width C)
    l1: float = 1e-2  # weight of the L1 penalty on feature activations (inputs scaled to mean ||x||^2 = C)
    lr: float = 1e-3  # Adam learning rate
    steps: int = 3000  # optimiser steps
    batch_size: int = 256  # activations per step
    resample_every: int = 1000  # steps between dead-feature checks (0 = never resample)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_features", "steps", "batch_size"):
            check(
                is_int(getattr(self, name), 1), f"sae.{name}", getattr(self, name), "use a positive integer"
            )
        check(is_int(self.resample_every, 0), "sae.resample_every", self.resample_every, "use 0 or more")
        for name in ("l1", "lr"):
            value = getattr(self, name)
            check(is_number(value) and value >= 0, f"sae.{name}", value, "use a non-negative number")


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, n_features: int):
        super().__init__()
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # inputs are multiplied by `scale` (set by train_sae so that the mean squared norm is d_in) before
        # encoding and divided by it after decoding, so that l1 means the same for any layer's magnitude
        self.register_buffer("scale", torch.ones(()))
        nn.init.kaiming_uniform_(self.W_dec)
        with torch.no_grad():
            self.normalize_decoder()
            self.W_enc.copy_(self.W_dec.T)  # tied at the start, as in Bricken et al.

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C) -> feature activations (N, F), non-negative."""
        return F.relu((x * self.scale - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f (N, F) -> x_hat (N, C), in the units of x."""
        return (f @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def sae_loss(sae: SparseAutoencoder, x: torch.Tensor, l1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C) -> (total loss, reconstruction MSE), both in the scaled units (x * sae.scale):
    MSE = mean over inputs and dims of (x - x_hat)^2 * scale^2."""
    x_hat, f = sae(x)
    mse = ((x - x_hat) * sae.scale).pow(2).mean()
    return mse + l1 * f.sum(-1).mean(), mse


@torch.no_grad()
def resample_dead(
    sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor, generator: torch.Generator
) -> int:
    """Point each dead feature (bool mask (F,)) at an input of `x` drawn with probability proportional to
    its squared reconstruction error: decoder row = that residual, normalised; encoder column = the same
    direction scaled to 0.2; encoder bias 0. Returns how many were resampled."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    residual = (x - sae(x)[0]) * sae.scale  # (N, C), in the SAE's scaled units
    weights = residual.pow(2).sum(-1)
    if float(weights.sum()) == 0.0:
        return 0
    chosen = torch.multinomial(weights, n_dead, replacement=True, generator=generator)
    directions = F.normalize(residual[chosen], dim=-1)  # (n_dead, C)
    sae.W_dec[dead] = directions
    sae.W_enc[:, dead] = 0.2 * directions.T
    sae.b_enc[dead] = 0.0
    return n_dead


def train_sae(
    activations: torch.Tensor, config: SAEConfig, *, log: Callable[[str], None] | None = None
) -> tuple[SparseAutoencoder, list[dict[str, float]]]:
    """activations (N, C) float -> the trained autoencoder and a history (step 1, then every 100 steps:
    step, loss, mse, L0 of the batch, features resampled so far)."""
    if activations.ndim != 2 or activations.size(0) < config.batch_size:
        raise ConfigError(
            f"an SAE needs activations (N, C) with N >= batch_size ({config.batch_size}); got "
            f"{tuple(activations.shape)}"
        )
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    x = activations.float()
    sae = SparseAutoencoder(x.size(1), config.n_features)
    with torch.no_grad():
        sae.scale.fill_(float((x.size(1) / x.pow(2).sum(-1).mean()).sqrt()))  # mean ||x * scale||^2 = C
        sae.b_dec.copy_((x * sae.scale).median(dim=0).values)  # start the decoder bias at the data's centre
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    fired = torch.zeros(config.n_features, dtype=torch.bool)
    history: list[dict[str, float]] = []
    resampled = 0
    for step in range(1, config.steps + 1):
        batch = x[torch.randint(x.size(0), (config.batch_size,), generator=generator)]
        loss, mse = sae_loss(sae, batch, config.l1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        with torch.no_grad():
            f = sae.encode(batch)
        fired |= (f > 0).any(0)
        if config.resample_every and step % config.resample_every == 0 and step < config.steps:
            resampled += resample_dead(
                sae, x[torch.randperm(x.size(0), generator=generator)[:4096]], ~fired, generator
            )
            fired.zero_()
        if step == 1 or step % 100 == 0 or step == config.steps:
            entry = {
                "step": step,
                "loss": float(loss.detach()),
                "mse": float(mse.detach()),
                "l0": float((f > 0).float().sum(-1).mean()),
                "resampled": resampled,
            }
            history.append(entry)
            if log is not None:
                log(f"step {step:>5}  loss {entry['loss']:.5f}  mse {entry['mse']:.5f}  L0 {entry['l0']:.1f}")
    return sae.eval(), history


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, activations: torch.Tensor) -> dict[str, float]:
    """activations (N, C) -> mse, explained_variance, l0 (mean active features per input), dead (features
    that fire on none of the inputs) and n_features."""
    x = activations.float()
    x_hat, f = sae(x)
    total = (x - x.mean(0)).pow(2).sum()
    return {
        "mse": float((x - x_hat).pow(2).mean()),
        "explained_variance": float(1 - (x - x_hat).pow(2).sum() / total),
        "l0": float((f > 0).float().sum(-1).mean()),
        "dead": int((f.amax(0) <= 0).sum()),
        "n_features": f.size(1),
    }


def point_activations(model: GPT, windows: torch.Tensor, point: str, *, batch_size: int = 32) -> torch.Tensor:
    """windows (B, T) -> the activations at `point` for every token, (B * T, C) float."""
    parts = []
    for start in range(0, windows.size(0), batch_size):
        acts = capture(model, windows[start : start + batch_size], [point])[point]
        parts.append(acts.reshape(-1, acts.size(-1)).float())
    return torch.cat(parts)


@torch.no_grad()
def patched_losses(
    model: GPT, windows: torch.Tensor, point: str, sae: SparseAutoencoder, *, batch_size: int = 32
) -> dict[str, float]:
    """The model's mean next-token loss on `windows` (B, T): clean, with `point` replaced by the SAE's
    reconstruction, and with it replaced by the activation's mean over these windows (the baseline).
    `recovered` = (mean_ablated - sae) / (mean_ablated - clean): 1 = the SAE loses nothing."""
    mean = point_activations(model, windows, point, batch_size=batch_size).mean(0)

    def loss_of(replace: dict) -> float:
        total = 0.0
        for start in range(0, windows.size(0), batch_size):
            ids = windows[start : start + batch_size]
            logits = patch(model, ids, replace) if replace else capture(model, ids, [])["logits"]
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum"
            )
            total += float(loss)
        return total / (windows.size(0) * (windows.size(1) - 1))

    def reconstruct(activation: torch.Tensor) -> torch.Tensor:
        return sae(activation.float())[0].to(activation.dtype)

    clean = loss_of({})
    with_sae = loss_of({point: reconstruct})
    ablated = loss_of({point: lambda a: mean.to(a.dtype).expand_as(a)})
    return {
        "clean": clean,
        "sae": with_sae,
        "mean_ablated": ablated,
        "recovered": (ablated - with_sae) / (ablated - clean),
    }


@torch.no_grad()
def top_activations(
    sae: SparseAutoencoder, activations: torch.Tensor, feature: int, *, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """activations (N, C) -> the k largest activations of `feature` and the indices of their inputs."""
    if not 0 <= feature < sae.W_dec.size(0):
        raise ConfigError(f"feature {feature} is out of range; this SAE has {sae.W_dec.size(0)} features")
    return sae.encode(activations.float())[:, feature].topk(k)


def save_sae(sae: SparseAutoencoder, directory: str | Path, *, meta: dict) -> None:
    """sae.safetensors (the four tensors) + sae.json (format version, shape and `meta`)."""
    directory = Path(directory)
    save_safetensors(
        directory / "sae.safetensors", {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    )
    d_in, n_features = sae.W_enc.shape
    atomic_write_json(
        directory / "sae.json",
        {"format_version": SAE_FORMAT_VERSION, "d_in": d_in, "n_features": n_features, **meta},
    )


def load_sae(directory: str | Path) -> tuple[SparseAutoencoder, dict]:
    """A directory written by `save_sae` -> (autoencoder in eval mode, sae.json as a dict)."""
    directory = Path(directory)
    meta = read_json(directory / "sae.json", what="sparse autoencoder description")
    if not isinstance(meta, dict) or meta.get("format_version") != SAE_FORMAT_VERSION:
        raise FormatError(
            directory / "sae.json", f"expected format_version {SAE_FORMAT_VERSION}; retrain the SAE"
        )
    if not (is_int(meta.get("d_in"), 1) and is_int(meta.get("n_features"), 1)):
        raise FormatError(directory / "sae.json", "d_in and n_features must be positive integers")
    sae = SparseAutoencoder(meta["d_in"], meta["n_features"])
    tensors = load_safetensors(directory / "sae.safetensors", what="sparse autoencoder weights")
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    if {k: tuple(v.shape) for k, v in tensors.items()} != expected:
        raise FormatError(
            directory / "sae.safetensors", f"expected tensors {expected}; the file does not match sae.json"
        )
    sae.load_state_dict(tensors)
    return sae.eval(), meta


def text_windows(tokenizer: Tokenizer, text: str, *, n_windows: int, length: int, seed: int) -> torch.Tensor:
    """`n_windows` windows of `length` tokens from random places of `text` -> ids (n_windows, length).

    Each window encodes a stretch of characters starting at a random offset (long enough for `length`
    tokens at 8 characters per token) and keeps its first `length` tokens.
    """
    span = 8 * length
    if len(text) <= span:
        raise ConfigError(
            f"the text has {len(text)} characters; windows of {length} tokens need more than {span}"
        )
    starts = torch.randint(len(text) - span, (n_windows,), generator=torch.Generator().manual_seed(seed))
    rows = []
    for start in starts.tolist():
        tokens = tokenizer.encode_ordinary(text[start : start + span])
        if len(tokens) < length:
            raise ConfigError(f"{span} characters gave only {len(tokens)} tokens; use shorter windows")
        rows.append(tokens[:length])
    return torch.tensor(rows)
