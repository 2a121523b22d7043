"""Deterministic DDIM (eta = 0) on K evenly spaced timesteps, K denoiser calls; also the walk that
DDPM shares: predict x0 at each timestep, move x_t to the next (smaller) one, return the last x0."""
from __future__ import annotations

import abc

from .base import Sampler


class AncestralWalk(Sampler, abc.ABC):
    def sample(self, predict_x0, cond, noise=None, generator=None):
        ts = self.timesteps()
        x = self.draw(0, cond, noise, generator)
        for i, t in enumerate(ts):
            x0 = predict_x0(x, self.at(t, x))
            if i + 1 < len(ts):
                a_t, a_prev = self.schedule.abar(self.at(t, x), x), self.schedule.abar(self.at(ts[i + 1], x), x)
                x = self.step(i, x, x0, a_t, a_prev, noise, generator)
        return x0

    @abc.abstractmethod
    def step(self, i, x, x0, a_t, a_prev, noise, generator):
        """x at the next timestep, from x_t, the predicted x0 and the cumulative alphas of both timesteps."""


class DDIMSampler(AncestralWalk):
    name = "ddim"

    def step(self, i, x, x0, a_t, a_prev, noise, generator):
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
