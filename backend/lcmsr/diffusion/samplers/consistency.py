"""The method's sampler: x_T ~ N(0, I) -> z = f(x_T, T-1); with more steps, re-noise z to the next
timestep with a fresh draw and apply f again (the consistency models' multistep sampling)."""
from __future__ import annotations

from .base import Sampler


class ConsistencySampler(Sampler):
    name = "consistency"

    def __init__(self, schedule, steps: int = 1):
        if not 1 <= steps <= 4:
            raise ValueError(f"consistency sampling takes 1 to 4 steps, got {steps}")
        super().__init__(schedule, steps)

    @property
    def noise_draws(self) -> int:
        return self.steps

    def sample(self, predict_x0, cond, noise=None, generator=None):
        ts = self.timesteps()
        x = self.draw(0, cond, noise, generator)
        for i, t in enumerate(ts):
            z = predict_x0(x, self.at(t, x))
            if i + 1 < len(ts):
                x = self.schedule.q_sample(z, self.at(ts[i + 1], z), self.draw(i + 1, z, noise, generator))
        return z
