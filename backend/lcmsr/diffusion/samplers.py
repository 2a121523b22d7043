"""Samplers over one x0-predictor: the one/few-step consistency sampler and the
multi-step DDIM/DDPM baselines.

Every sampler takes ``predict_x0(x_t, t) -> x0`` — the consistency function
f(x_t, t) of the trained denoiser with the condition bound — so the baselines
and the single step differ only in how they walk the timesteps.  Each call of
``predict_x0`` is exactly one denoiser evaluation.
"""
from __future__ import annotations

import abc
from typing import Callable

import torch

from ..nn.blocks import gaussian_noise
from .schedule import NoiseSchedule

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Sampler:
    name = ""

    def __init__(self, schedule: NoiseSchedule, steps: int = 1):
        if steps < 1 or steps > schedule.num_timesteps:
            raise ValueError(f"{self.name} sampler steps must be in 1..{schedule.num_timesteps}, got {steps}")
        self.schedule = schedule
        self.steps = int(steps)

    def timesteps(self) -> list[int]:
        """Decreasing integer timesteps starting at T-1, one per denoiser call."""
        T = self.schedule.num_timesteps
        return [int(round((T - 1) * (1 - i / self.steps))) for i in range(self.steps)]

    @property
    def noise_draws(self) -> int:
        """How many latent-shaped noise fields one run consumes (x_T included)."""
        return 1

    def _noise(self, i: int, x: torch.Tensor, noise: torch.Tensor | None, generator):
        # A 5-D ``noise`` [draws, B, C, h, w] supplies every draw (deterministic tiling);
        # otherwise draws after x_T come from the generator.
        if noise is not None and noise.ndim == 5 and i < noise.shape[0]:
            return noise[i].to(x.device, x.dtype)
        return gaussian_noise(x.shape, generator, x.device, x.dtype)

    def _x_T(self, shape, noise, generator, device, dtype):
        if noise is None:
            return gaussian_noise(shape, generator, device, dtype)
        first = noise[0] if noise.ndim == 5 else noise
        if tuple(first.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(first.shape)}, expected {tuple(shape)}")
        return first.to(device=device, dtype=dtype)


class ConsistencySampler(_Sampler):
    """x_T ~ N(0, I) -> z = f(x_T, T-1); for more steps re-noise z to the next t and apply f again."""
    name = "consistency"

    def __init__(self, schedule: NoiseSchedule, steps: int = 1):
        if not 1 <= steps <= 4:
            raise ValueError(f"consistency sampling takes 1 to 4 steps, got {steps}")
        super().__init__(schedule, steps)

    @property
    def noise_draws(self) -> int:
        return self.steps

    def sample(self, predict_x0: Predictor, shape, *, noise=None, generator=None, device="cpu",
               dtype=torch.float32) -> torch.Tensor:
        ts = self.timesteps()
        x = self._x_T(shape, noise, generator, device, dtype)
        z = x
        for i, t in enumerate(ts):
            z = predict_x0(x, torch.full((shape[0],), t, device=x.device, dtype=torch.long))
            if i + 1 < len(ts):
                x = self.schedule.q_sample(z, torch.full((shape[0],), ts[i + 1], dtype=torch.long),
                                           self._noise(i + 1, z, noise, generator))
        return z


class _AncestralWalk(_Sampler, abc.ABC):
    """Shared walk of the multi-step baselines: predict x0 at each timestep, then move x_t to the
    next (smaller) timestep with :meth:`_step`; the last prediction is the result."""

    def sample(self, predict_x0: Predictor, shape, *, noise=None, generator=None, device="cpu",
               dtype=torch.float32) -> torch.Tensor:
        ts = self.timesteps()
        x = self._x_T(shape, noise, generator, device, dtype)
        x0 = x
        for i, t in enumerate(ts):
            tt = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
            x0 = predict_x0(x, tt)
            if i + 1 == len(ts):
                break
            a_t = self.schedule.abar(tt, x)
            a_prev = self.schedule.abar(torch.full((shape[0],), ts[i + 1], dtype=torch.long), x)
            x = self._step(i, x, x0, a_t, a_prev, noise, generator)
        return x0

    @abc.abstractmethod
    def _step(self, i, x, x0, a_t, a_prev, noise, generator) -> torch.Tensor:
        """x at the next timestep, from x_t, the predicted x0 and the two cumulative alphas."""


class DDIMSampler(_AncestralWalk):
    """Deterministic DDIM (eta = 0) on K evenly spaced timesteps: K denoiser calls."""
    name = "ddim"

    def _step(self, i, x, x0, a_t, a_prev, noise, generator):
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


class DDPMSampler(_AncestralWalk):
    """Ancestral DDPM on K evenly spaced timesteps (posterior q(x_prev | x_t, x0)): K calls."""
    name = "ddpm"

    @property
    def noise_draws(self) -> int:
        return self.steps

    def _step(self, i, x, x0, a_t, a_prev, noise, generator):
        beta = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        return mean + var.clamp_min(0).sqrt() * self._noise(i + 1, x, noise, generator)


SAMPLERS = {"consistency": ConsistencySampler, "ddim": DDIMSampler, "ddpm": DDPMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, steps: int = 1) -> _Sampler:
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}': use one of {', '.join(SAMPLERS)} or condnet") from None
    return cls(schedule, steps)
