"""VAE, GAN and diffusion: losses worked by hand, schedules by formula, samplers with an oracle network."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.generative import (
    VAE,
    Diffusion,
    GenerativeConfig,
    build_generative,
    gaussian_kl,
    load_generative,
    noise_schedule,
    save_generative,
    to_unit,
)
from lmforge.training.generative import discriminator_loss, generator_loss


def test_gaussian_kl_by_hand():
    """mu = 1, logvar = 0: 0.5 per dimension; mu = 0, logvar = ln 2: -1/2 (1 + ln 2 - 0 - 2) = 0.1534."""
    assert gaussian_kl(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.5)
    assert gaussian_kl(torch.zeros(1, 1), torch.full((1, 1), math.log(2))).item() == pytest.approx(
        -0.5 * (1 + math.log(2) - 2)
    )


def test_vae_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    config = GenerativeConfig(kind="vae", image_size=8, width=4, latent_dim=3, beta=4.0)
    model = VAE(config)
    x = torch.rand(5, 1, 8, 8)
    torch.manual_seed(1)
    loss, parts = model.loss(x)
    assert loss.item() == pytest.approx(parts["reconstruction"] + 4.0 * parts["kl"], rel=1e-5)
    torch.manual_seed(1)
    logits, mu, logvar = model(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    assert parts["reconstruction"] == pytest.approx(bce.mean().item(), rel=1e-5)
    assert model.sample(4).shape == (4, 1, 8, 8)


def test_gan_losses_by_hand():
    """Logits 0: BCE against 1 or 0 is ln 2; against 0.9 it is still ln 2 (-0.9 ln .5 - 0.1 ln .5).
    Logit 2 for a real image, smoothing 0.1: 0.9 softplus(-2) + 0.1 softplus(2)."""
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero, label_smoothing=0.0).item() == pytest.approx(2 * math.log(2))
    assert discriminator_loss(zero, zero, label_smoothing=0.1).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    real = torch.full((1,), 2.0)
    softplus = lambda v: math.log1p(math.exp(v))
    expected = (
        0.9 * softplus(-2) + 0.1 * softplus(2) + softplus(-5)
    )  # fake logit -5 -> BCE vs 0 = softplus(-5)
    assert discriminator_loss(real, torch.full((1,), -5.0), label_smoothing=0.1).item() == pytest.approx(
        expected
    )


def test_dcgan_shapes():
    gan = build_generative(GenerativeConfig(kind="gan", width=4, latent_dim=8))
    images = gan.sample(3)
    assert images.shape == (3, 1, 28, 28) and images.abs().max() <= 1
    assert gan.discriminator(images).shape == (3,)


def test_noise_schedules():
    linear = noise_schedule(
        GenerativeConfig(kind="ddpm", timesteps=3, ddim_steps=3, beta_start=0.1, beta_end=0.3)
    )
    torch.testing.assert_close(linear, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    # cosine, T = 2: f(t) = cos^2((t/2 + s)/(1 + s) pi/2); beta_1 = 1 - f(1)/f(0);
    # beta_2 = 1 - f(2)/f(1) = 1 (f(2) = cos^2(pi/2) = 0) -> capped at 0.999
    s = 0.008
    f = [math.cos((t / 2 + s) / (1 + s) * math.pi / 2) ** 2 for t in range(3)]
    cosine = noise_schedule(GenerativeConfig(kind="ddpm", timesteps=2, ddim_steps=2, schedule="cosine"))
    torch.testing.assert_close(cosine, torch.tensor([1 - f[1] / f[0], 0.999], dtype=torch.float64))


class Oracle(torch.nn.Module):
    """The ideal eps-predictor when the data is always the image `x0`:
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, x0: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.x0, self.alpha_bar = x0, alpha_bar

    def forward(self, x_t, t):
        abar = self.alpha_bar[t].float()[:, None, None, None]
        return (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_both_samplers_recover_the_data_with_an_oracle(schedule):
    """With a perfect noise predictor and a one-image data set, every reverse step's x0 estimate is the
    image: DDIM returns it exactly, and the ancestral sampler's last step (t = 0: c0 = 1, ct = 0, no noise)
    too."""
    config = GenerativeConfig(
        kind="ddpm", image_size=4, width=8, timesteps=20, ddim_steps=5, schedule=schedule
    )
    diffusion = Diffusion(config)
    x0 = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    diffusion.net = Oracle(x0, diffusion.alpha_bar)
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(
        diffusion.sample_ddim(3, steps=5, generator=generator), x0.expand(3, -1, -1, -1)
    )
    torch.testing.assert_close(diffusion.sample(3, generator=generator), x0.expand(3, -1, -1, -1))


def test_diffusion_loss_and_unet_shapes():
    torch.manual_seed(0)
    diffusion = Diffusion(GenerativeConfig(kind="ddpm", image_size=8, width=8, timesteps=10, ddim_steps=2))
    loss, _ = diffusion.loss(torch.rand(4, 1, 8, 8) * 2 - 1)
    assert loss.ndim == 0 and loss.item() > 0
    assert diffusion.net(torch.randn(2, 1, 8, 8), torch.tensor([0, 9])).shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="DDIM steps"):
        diffusion.sample_ddim(1, steps=11)


def test_config_errors_and_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="divisible by 4"):
        GenerativeConfig(image_size=30)
    with pytest.raises(ConfigError, match="model.kind"):
        GenerativeConfig(kind="flow")
    with pytest.raises(ConfigError, match="ddim_steps=50 exceeds"):
        GenerativeConfig(kind="ddpm", timesteps=10)
    config = GenerativeConfig(kind="vae", image_size=8, width=4, latent_dim=2)
    model = build_generative(config)
    save_generative(model, config, tmp_path, meta={})
    loaded, loaded_config, _ = load_generative(tmp_path)
    z = torch.randn(2, 2)
    torch.testing.assert_close(loaded.decode(z), model.decode(z))
    assert loaded_config == config
    torch.testing.assert_close(to_unit(torch.tensor([-1.0, 0.0, 1.0]), "gan"), torch.tensor([0.0, 0.5, 1.0]))
