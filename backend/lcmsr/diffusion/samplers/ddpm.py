"""Ancestral DDPM on K evenly spaced timesteps, K denoiser calls: x_prev ~ q(x_prev | x_t, x0) with
the posterior of the (strided) forward process, one fresh draw per move."""
from __future__ import annotations

from .ddim import AncestralWalk


class DDPMSampler(AncestralWalk):
    name = "ddpm"

    @property
    def noise_draws(self) -> int:
        return self.steps

    def step(self, i, x, x0, a_t, a_prev, noise, generator):
        beta = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        return mean + var.clamp_min(0).sqrt() * self.draw(i + 1, x, noise, generator)
