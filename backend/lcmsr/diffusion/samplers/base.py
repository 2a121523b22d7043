"""The sampler protocol: how one ``LCMSR.sr`` call turns the condition into the latent it decodes.

A sampler is built as ``Sampler(schedule, steps)`` and answers three things:

* ``sample(predict_x0, cond, noise=None, generator=None) -> z``: the latent to decode.
  ``predict_x0(x_t, t) -> x0`` is the consistency function f(x_t, t) of the trained
  denoiser with the condition bound (``t``: a [B] long tensor); each call is exactly one
  denoiser evaluation.  ``cond`` is CondNet's latent, the regression estimate of z; it also
  fixes the latent's shape, device and dtype.
* ``noise_draws``: how many latent-shaped noise fields one run consumes (x_T included).
* ``timesteps()``: the timesteps at which it calls ``predict_x0``, in call order.

Noise comes from :meth:`Sampler.draw` only, so a caller's ``noise`` (one field, or all of them:
``[draws, B, C, h, w]``) reproduces a run exactly (the raster pipeline's seamless position noise).
"""
from __future__ import annotations

import abc
from typing import Callable

import torch

from ...nn.blocks import gaussian_noise
from ..schedule import NoiseSchedule

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler(abc.ABC):
    name = ""

    def __init__(self, schedule: NoiseSchedule, steps: int = 1):
        if not 1 <= steps <= schedule.num_timesteps:
            raise ValueError(f"{self.name} sampler steps must be in 1..{schedule.num_timesteps}, got {steps}")
        self.schedule = schedule
        self.steps = int(steps)

    @property
    def noise_draws(self) -> int:
        return 1

    def timesteps(self) -> list[int]:
        """Decreasing integer timesteps from T-1, evenly spaced; none at t = 0, where f(x, 0) = x."""
        T = self.schedule.num_timesteps
        return [int(round((T - 1) * (1 - i / self.steps))) for i in range(self.steps)]

    @abc.abstractmethod
    def sample(self, predict_x0: Predictor, cond: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent to decode, shaped like ``cond``."""

    @staticmethod
    def draw(i: int, like: torch.Tensor, noise: torch.Tensor | None, generator) -> torch.Tensor:
        """Noise field number ``i`` (0 is x_T), shaped like ``like``: taken from ``noise`` when it holds
        that draw (a 4-D ``noise`` holds draw 0 only), otherwise drawn from ``generator``."""
        if noise is not None:
            fields = noise if noise.ndim == 5 else noise[None]
            if tuple(fields.shape[1:]) != tuple(like.shape):
                expect = tuple(like.shape) if noise.ndim != 5 else (noise.shape[0],) + tuple(like.shape)
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {expect} "
                                 "(see LCMSR.latent_shape)")
            if i < fields.shape[0]:
                return fields[i].to(like.device, like.dtype)
        return gaussian_noise(like.shape, generator, like.device, like.dtype)

    @staticmethod
    def at(t: int, like: torch.Tensor) -> torch.Tensor:
        """Timestep ``t`` for every sample of the batch ``like``, as ``predict_x0`` takes it."""
        return torch.full((like.shape[0],), int(t), device=like.device, dtype=torch.long)
