"""The residual encoder E(HR, LR↑) (stage 1, training only) and CondNet (stage 2).

Both share the LDM "Encoder" body: residual blocks at widths base x mults, three
stride-2 downsamples (the latent grid is HR/8), GroupNorm + SiLU, no attention.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import EncoderConfig
from .blocks import Downsample, ResBlock, conv3x3, gaussian_noise, group_norm


class EncoderBody(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, cfg: EncoderConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = conv3x3(in_channels, cfg.base_channels)
        layers: list[nn.Module] = []
        cin = cfg.base_channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, width, groups=cfg.norm_groups))
                cin = width
            if level < len(widths) - 1:
                layers.append(Downsample(cin))
        layers += [ResBlock(cin, cin, groups=cfg.norm_groups) for _ in range(cfg.mid_res_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = group_norm(cin, cfg.norm_groups)
        self.conv_out = conv3x3(cin, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class DiagonalGaussian:
    """The posterior q(z | HR, LR↑) = N(mean, exp(logvar))."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        # The clamp keeps exp() finite when an untrained encoder emits extreme values.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = self.std.pow(2)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean + self.std * gaussian_noise(self.mean.shape, generator, self.mean.device, self.mean.dtype)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements: shape [B]."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class ResidualEncoder(nn.Module):
    """E(HR, LR↑): sees both images, so the latent only has to carry what bicubic misses."""

    def __init__(self, bands: int, latent_channels: int, cfg: EncoderConfig):
        super().__init__()
        self.body = EncoderBody(2 * bands, 2 * latent_channels, cfg)

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.body(torch.cat([hr, lr_up], dim=1)))


class CondNet(nn.Module):
    """CondNet(LR↑) -> the 4-channel condition at HR/8 (also a regression estimate of z)."""

    def __init__(self, bands: int, latent_channels: int, cfg: EncoderConfig):
        super().__init__()
        self.body = EncoderBody(bands, latent_channels, cfg)

    def forward(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.body(lr_up)
