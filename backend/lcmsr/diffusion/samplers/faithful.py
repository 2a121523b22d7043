"""Regression: decode CondNet's latent itself, no noise and no denoiser call -- the choice that never
invents detail (the authors' CondNet baseline; "condnet" is its old name)."""
from __future__ import annotations

from .base import Sampler


class FaithfulSampler(Sampler):
    name = "faithful"

    @property
    def noise_draws(self) -> int:
        return 0

    def timesteps(self) -> list[int]:
        return []

    def sample(self, predict_x0, cond, noise=None, generator=None):
        return cond
