"""The forward process q(x_t | x_0) with LDM's "linear" beta schedule."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ScheduleConfig


def make_betas(cfg: ScheduleConfig) -> torch.Tensor:
    """beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, in float64, on the CPU (also under a
    ``with torch.device("meta")`` model build: a meta linspace imports sympy, which a system copy too old
    for torch breaks inside QGIS)."""
    return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.timesteps, dtype=torch.float64,
                          device="cpu") ** 2


class NoiseSchedule(nn.Module):
    """Holds the schedule as non-persistent buffers: they follow ``.to(device)`` but are
    rebuilt from the config rather than stored in model files."""

    def __init__(self, cfg: ScheduleConfig):
        super().__init__()
        self.num_timesteps = cfg.timesteps
        betas = make_betas(cfg)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt().float(), persistent=False)
        # Noise-to-signal ratio sigma_t = sqrt((1 - abar) / abar), increasing in t; used to map
        # continuous (Karras/iCT) noise levels onto the discrete timesteps.
        self.register_buffer("sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float(), persistent=False)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=values.device).long().reshape(-1)
        out = values[t].to(like.dtype).to(like.device)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per sample."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def abar(self, t, like: torch.Tensor) -> torch.Tensor:
        return self._at(self.alphas_cumprod, t, like)

    def timestep_for_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The discrete timestep whose sigma_t is nearest above ``sigma`` (clamped to [1, T-1])."""
        idx = torch.searchsorted(self.sigmas, sigma.to(self.sigmas.device).float().contiguous())
        return idx.clamp(1, self.num_timesteps - 1)
