"""Diffusion against diffusers on the same inputs: the noise schedules, the whole ancestral sampling loop
(DDPMScheduler, fixed_small variance, clipped x0, same noise draws) and a DDIM step (DDIMScheduler, eta 0)."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.generative import Diffusion, GenerativeConfig, noise_schedule

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("schedule, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_noise_schedules(schedule, theirs):
    config = GenerativeConfig(kind="ddpm", timesteps=50, ddim_steps=5, schedule=schedule, beta_end=0.04)
    reference = diffusers.DDPMScheduler(
        num_train_timesteps=50, beta_schedule=theirs, beta_start=config.beta_start, beta_end=config.beta_end
    )
    torch.testing.assert_close(noise_schedule(config).float(), reference.betas, rtol=1e-5, atol=1e-6)


class FixedNet(torch.nn.Module):
    """A deterministic stand-in for the U-Net: eps_hat = 0.5 tanh(x) + 0.01 t."""

    def forward(self, x, t):
        return 0.5 * torch.tanh(x) + 0.01 * t.float()[:, None, None, None]


@pytest.mark.parametrize("schedule, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_ancestral_sampling_loop(schedule, theirs):
    T = 30
    config = GenerativeConfig(
        kind="ddpm", image_size=4, width=8, timesteps=T, ddim_steps=5, schedule=schedule
    )
    diffusion = Diffusion(config)
    diffusion.net = FixedNet()
    ours = diffusion.sample(3, generator=torch.Generator().manual_seed(0))

    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule=theirs,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        variance_type="fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 4, generator=generator)  # the same draws, in the same order, as ours
    for t in reversed(range(T)):
        eps = FixedNet()(x, torch.full((3,), t))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t, t_prev", [(12, 8), (4, 0), (0, -1)])
def test_ddim_step(t, t_prev):
    T, steps = 20, 5  # diffusers' "leading" spacing: 16, 12, 8, 4, 0, each step going 4 back
    config = GenerativeConfig(kind="ddpm", image_size=4, width=8, timesteps=T, ddim_steps=steps)
    diffusion = Diffusion(config)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 1, 4, 4, generator=generator), torch.randn(2, 1, 4, 4, generator=generator)
    expected = scheduler.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(diffusion.ddim_step(x, eps, t, t_prev), expected, rtol=1e-4, atol=1e-5)
