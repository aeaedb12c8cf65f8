"""Generative image models: a VAE, a DCGAN-style GAN, and DDPM/DDIM diffusion with a small U-Net.

Read top to bottom: `GenerativeConfig` -> `VAE` (encoder to mean / log-variance, reparameterisation,
decoder, ELBO) -> `Generator` / `Discriminator` (DCGAN) -> noise schedules, `UNet`, `Diffusion`
(training loss, ancestral and DDIM sampling) -> building and checkpoints.

Pixel ranges: the VAE models pixels in [0, 1] (Bernoulli likelihood, as the PyTorch examples' VAE); the
GAN and diffusion work in [-1, 1] (tanh output; DDPM's data scaling). `to_unit` maps each model's
samples back to [0, 1] for grids and FID.

- VAE (Kingma & Welling 2014): loss per image = reconstruction (binary cross-entropy summed over pixels)
  + beta * KL(q(z|x) || N(0, I)), KL = -1/2 sum(1 + log s^2 - m^2 - s^2); beta = 1 is the ELBO,
  beta > 1 the beta-VAE of Higgins et al. 2017.
- GAN (Radford et al. 2016, DCGAN): transposed convolutions 1x1 -> 7x7 -> 14x14 -> 28x28 with batch
  norm and ReLU, tanh output; the discriminator mirrors it with LeakyReLU(0.2); weights N(0, 0.02).
  The losses (non-saturating, label smoothing) are training objectives: `lmforge.training.generative`.
- Diffusion (Ho et al. 2020, DDPM): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a U-Net predicts eps
  from (x_t, t), loss = mean (eps - eps_hat)^2. Schedules: linear betas (Ho et al.) or cosine abar
  (Nichol & Dhariwal 2021). Sampling: ancestral (x_{t-1} ~ p(x_{t-1}|x_t) with the posterior variance
  beta~_t) over all T steps, or DDIM (Song et al. 2021, eta = 0: deterministic) over a subsequence of
  the steps. Predicted x_0 is clipped to [-1, 1] in both (as diffusers' clip_sample).

Deliberately not here: the training loops and GAN losses (`training/generative.py`), FID
(`evaluation/fid.py`), attention inside the U-Net, classifier-free guidance, EMA weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.layers import sinusoidal_table

CHECKPOINT_FORMAT_VERSION = 1
KINDS = ("vae", "gan", "ddpm")
SCHEDULES = ("linear", "cosine")


@dataclass
class GenerativeConfig:
    """Every option of the three generative models; fields a kind does not use are ignored."""

    kind: str = "vae"  # "vae" | "gan" | "ddpm"
    channels: int = 1  # image channels
    image_size: int = 28  # height = width; the conv stacks halve it twice, so it must be divisible by 4
    width: int = 32  # channels of the first conv layer (doubling once)
    latent_dim: int = 16  # vae: size of z; gan: size of the noise vector fed to the generator
    beta: float = 1.0  # vae: weight of the KL term (1 = ELBO)
    label_smoothing: float = 0.0  # gan: the discriminator's target for real images is 1 - this
    timesteps: int = 400  # ddpm: number of noising steps T
    schedule: str = "linear"  # ddpm: "linear" (betas from beta_start to beta_end) | "cosine"
    beta_start: float = 1e-4  # ddpm: first beta of the linear schedule (Ho et al.: 1e-4 for T = 1000)
    beta_end: float = 0.02  # ddpm: last beta of the linear schedule (Ho et al.: 0.02)
    ddim_steps: int = 50  # ddpm: steps of the DDIM sampler used for in-training grids and FID (<= timesteps)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"model.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("channels", "image_size", "width", "latent_dim", "timesteps", "ddim_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.image_size % 4:
            raise ConfigError(f"model.image_size={self.image_size} must be divisible by 4 (two halvings)")
        if self.kind == "gan" and self.image_size != 28:
            raise ConfigError("the DCGAN generator is laid out for 28x28 images (7 -> 14 -> 28)")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"model.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError("model.beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1")
        if self.ddim_steps > self.timesteps:
            raise ConfigError(f"model.ddim_steps={self.ddim_steps} exceeds model.timesteps={self.timesteps}")
        if self.beta < 0:
            raise ConfigError(f"model.beta must be >= 0, got {self.beta}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# VAE


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) over the last dimension:
    -1/2 sum(1 + logvar - mu^2 - exp(logvar)).

    Example: mu = 1, logvar = 0 -> -1/2 (1 + 0 - 1 - 1) = 0.5 per dimension.
    """
    return -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp(), dim=-1)


class VAE(nn.Module):
    """Conv encoder -> (mu, logvar) of q(z|x); z = mu + exp(logvar / 2) * eps; deconv decoder -> logits."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        w, C, s = config.width, config.channels, config.image_size // 4
        self.shape = (2 * w, s, s)  # the smallest feature map
        self.encoder = nn.Sequential(
            nn.Conv2d(C, w, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, H/4, W/4)
            nn.Flatten(),
        )
        self.to_stats = nn.Linear(2 * w * s * s, 2 * config.latent_dim)  # [mu, logvar]
        self.from_latent = nn.Linear(config.latent_dim, 2 * w * s * s)
        self.decoder = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, w, H/2, W/2)
            nn.ConvTranspose2d(w, C, 4, stride=2, padding=1),  # (B, C, H, W) logits of each pixel
        )
        self.beta = config.beta
        self.latent_dim = config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=-1)  # (B, latent) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (B, C, H, W); sigmoid gives the Bernoulli means, the pictures we show."""
        return self.decoder(self.from_latent(z).view(-1, *self.shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(
            mu
        )  # reparameterisation: gradients reach mu, logvar
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over the batch of reconstruction + beta * KL (nats per image); x in [0, 1]."""
        logits, mu, logvar = self(x)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = gaussian_kl(mu, logvar).mean()
        loss = reconstruction + self.beta * kl
        return loss, {"reconstruction": reconstruction.item(), "kl": kl.item()}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.to_stats.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return torch.sigmoid(self.decode(z))  # (n, C, H, W) in [0, 1]


# ---------------------------------------------------------------------------------------------------
# GAN


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02), batch-norm gains N(1, 0.02) and shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent) -> image (B, C, 28, 28) in [-1, 1]."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        w, C = config.width, config.channels
        self.latent_dim = config.latent_dim
        self.net = nn.Sequential(
            nn.ConvTranspose2d(config.latent_dim, 4 * w, 7, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),  # 7x7
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),  # 14x14
            nn.ConvTranspose2d(2 * w, C, 4, 2, 1),
            nn.Tanh(),  # 28x28
        )
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # z as a 1x1 feature map

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.net[0].weight.device
        return self(torch.randn(n, self.latent_dim, generator=generator).to(device))


class Discriminator(nn.Module):
    """image (B, C, 28, 28) -> one logit per image (B,): real vs generated."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        w, C = config.width, config.channels
        self.net = nn.Sequential(
            nn.Conv2d(C, w, 4, 2, 1),
            nn.LeakyReLU(0.2),  # 14x14
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),  # 7x7
            nn.Conv2d(2 * w, 1, 7),  # 1x1
        )
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class GAN(nn.Module):
    """The generator and the discriminator in one module, so that one checkpoint holds both."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generator.sample(n, generator=generator)


# ---------------------------------------------------------------------------------------------------
# Diffusion


def noise_schedule(config: GenerativeConfig) -> torch.Tensor:
    """betas (T,) in float64.

    linear: evenly spaced from beta_start to beta_end.
    cosine: abar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), s = 0.008, and
    beta_t = 1 - abar(t + 1) / abar(t), capped at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    Example (cosine, T = 1): abar(1) = cos^2(pi/2) / f(0) = 0, so beta_1 = 1 -> capped to 0.999.
    """
    T = config.timesteps
    if config.schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    s = 0.008
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, 1x1 conv shortcut if widths differ."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]  # one shift per channel, from the time step
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.shortcut(x)


class UNet(nn.Module):
    """eps-prediction network: (x_t (B, C, H, W), t (B,)) -> eps_hat (B, C, H, W).

    Resolutions H -> H/2 -> H/4 and back, with skip connections concatenated on the way up; the step t
    enters every residual block through a sinusoidal embedding and a 2-layer MLP.
    """

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        w, C = config.width, config.channels
        time_dim = 4 * w
        self.register_buffer("time_table", sinusoidal_table(config.timesteps, w), persistent=False)  # (T, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.inp = nn.Conv2d(C, w, 3, padding=1)
        self.down1 = ResBlock(w, w, time_dim)  # H
        self.pool1 = nn.Conv2d(w, w, 4, stride=2, padding=1)  # H -> H/2
        self.down2 = ResBlock(w, 2 * w, time_dim)  # H/2
        self.pool2 = nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1)  # H/2 -> H/4
        self.mid = ResBlock(2 * w, 2 * w, time_dim)  # H/4
        self.up2 = ResBlock(4 * w, 2 * w, time_dim)  # H/2, after the skip from down2
        self.up1 = ResBlock(3 * w, w, time_dim)  # H, after the skip from down1
        self.out = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, C, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(self.time_table[t])  # (B, time_dim)
        h1 = self.down1(self.inp(x), t_emb)  # (B, w, H, W)
        h2 = self.down2(self.pool1(h1), t_emb)  # (B, 2w, H/2, W/2)
        h = self.mid(self.pool2(h2), t_emb)  # (B, 2w, H/4, W/4)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), h2], dim=1), t_emb)  # (B, 2w, H/2, W/2)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), h1], dim=1), t_emb)  # (B, w, H, W)
        return self.out(h)


class Diffusion(nn.Module):
    """A U-Net plus the schedule tables: the training loss and the two samplers."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.net = UNet(config)
        self.timesteps = config.timesteps
        self.shape = config.input_shape
        betas = noise_schedule(config)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        # float64 tables, non-persistent: they are a function of the config, not weights
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)

    def loss(self, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """mean ||eps - eps_hat(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 with t uniform in [0, T)."""
        t = torch.randint(0, self.timesteps, (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        abar = self.alpha_bar[t].float()[:, None, None, None]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        loss = F.mse_loss(self.net(x_t, t), eps)
        return loss, {}

    def _x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        return ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling over all T steps: x_{t-1} = mean(x_t, x0_hat) + sqrt(beta~_t) z.

        With x0_hat from the predicted eps, the posterior q(x_{t-1} | x_t, x0_hat) has mean
        c0 * x0_hat + ct * x_t, c0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),
        ct = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t), and variance
        beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
        """
        device = self.betas.device
        x = torch.randn(n, *self.shape, generator=generator).to(device)
        for t in reversed(range(self.timesteps)):
            abar = self.alpha_bar[t]
            abar_prev = self.alpha_bar[t - 1] if t > 0 else torch.ones((), dtype=abar.dtype, device=device)
            beta = self.betas[t]
            eps = self.net(x, torch.full((n,), t, device=device))
            x0 = self._x0_from_eps(x, eps, abar.float())
            c0 = abar_prev.sqrt() * beta / (1 - abar)
            ct = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
            x = (c0 * x0 + ct * x).float()
            if t > 0:
                variance = beta * (1 - abar_prev) / (1 - abar)
                x = x + variance.sqrt().float() * torch.randn(x.shape, generator=generator).to(device)
        return x

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """One deterministic DDIM step (eta = 0) from step t to t_prev (-1: the clean image, abar = 1):
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat."""
        abar = self.alpha_bar[t].float()
        abar_prev = self.alpha_bar[t_prev].float() if t_prev >= 0 else torch.ones((), device=x_t.device)
        x0 = self._x0_from_eps(x_t, eps, abar)
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps

    @torch.no_grad()
    def sample_ddim(self, n: int, *, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM over `steps` evenly spaced time steps, e.g. T = 400, steps = 4: 399, 266, 133, 0."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(f"DDIM steps must be in [1, {self.timesteps}], got {steps}")
        device = self.betas.device
        times = torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()
        x = torch.randn(n, *self.shape, generator=generator).to(device)
        for t, t_prev in zip(times, [*times[1:], -1], strict=True):
            x = self.ddim_step(x, self.net(x, torch.full((n,), t, device=device)), t, t_prev)
        return x


# ---------------------------------------------------------------------------------------------------
# Building and checkpoints


def build_generative(config: GenerativeConfig) -> nn.Module:
    return {"vae": VAE, "gan": GAN, "ddpm": Diffusion}[config.kind](config)


def to_unit(samples: torch.Tensor, kind: str) -> torch.Tensor:
    """Samples in the model's pixel range -> [0, 1] (the VAE's are already there)."""
    return samples.clamp(0, 1) if kind == "vae" else ((samples + 1) / 2).clamp(0, 1)


def save_generative(
    model: nn.Module, config: GenerativeConfig, directory: str | Path, *, meta: dict[str, Any]
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(directory / "model.safetensors", dict(model.state_dict()))
    atomic_write_json(
        directory / "meta.json",
        {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "kind": "generative",
            "config": config.to_dict(),
            **meta,
        },
    )
    return directory


def load_generative(directory: str | Path) -> tuple[nn.Module, GenerativeConfig, dict[str, Any]]:
    directory = Path(directory)
    meta = read_json(directory / "meta.json", what="generative model meta")
    if not isinstance(meta, dict) or meta.get("kind") != "generative" or "config" not in meta:
        raise FormatError(directory / "meta.json", "not an lmforge generative-model checkpoint")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise FormatError(directory / "meta.json", f"format_version is not {CHECKPOINT_FORMAT_VERSION}")
    config = GenerativeConfig(**meta["config"])
    model = build_generative(config)
    try:
        model.load_state_dict(load_safetensors(directory / "model.safetensors", what="generative weights"))
    except RuntimeError as e:
        raise FormatError(directory / "model.safetensors", f"weights do not fit the config ({e})") from None
    return model.eval(), config, meta
