"""The SR decoder D(LR, z): an IMDN-style SR network on the LR image that the latent steers.

Latent branch: conv latent -> latent_width, residual blocks, then one level of
residual blocks per distillation group; after each level a 1x1 "transfer" conv
maps to the SR width and the map is resized (nearest) to the LR grid.  SR
branch: head conv, groups of distillation blocks where group k's input is the
previous output plus the k-th latent feature, pixel-shuffle upsampler, conv to
the bands, plus a bicubic(LR) skip — so z only has to carry the residual.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DecoderConfig
from ..ops import upsample_bicubic
from .blocks import DistillationBlock, ResBlock, conv3x3


def _upsampler(features: int, scale: int) -> nn.Sequential:
    # x4 and x8 as cascades of x2 pixel shuffles; x2 and x3 in one stage.
    factors = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}[scale]
    layers: list[nn.Module] = []
    for f in factors:
        layers += [conv3x3(features, features * f * f), nn.PixelShuffle(f)]
    return nn.Sequential(*layers)


class SRDecoder(nn.Module):
    def __init__(self, bands: int, scale: int, latent_channels: int, cfg: DecoderConfig):
        super().__init__()
        self.scale = scale
        if cfg.latent_resize not in ("nearest", "bilinear"):
            raise ValueError(f"decoder.latent_resize must be 'nearest' or 'bilinear', got '{cfg.latent_resize}'")
        self.latent_resize = cfg.latent_resize
        g = cfg.norm_groups
        self.latent_in = conv3x3(latent_channels, cfg.latent_width)
        self.latent_mid = nn.Sequential(*[ResBlock(cfg.latent_width, cfg.latent_width, groups=g)
                                          for _ in range(cfg.mid_res_blocks)])
        self.latent_levels = nn.ModuleList()
        self.transfers = nn.ModuleList()
        cin = cfg.latent_width
        for width in cfg.level_widths:
            blocks = []
            for _ in range(cfg.level_res_blocks):
                blocks.append(ResBlock(cin, width, groups=g))
                cin = width
            self.latent_levels.append(nn.Sequential(*blocks))
            self.transfers.append(nn.Conv2d(cin, cfg.features, 1))

        self.head = conv3x3(bands, cfg.features)
        self.groups = nn.ModuleList(
            nn.Sequential(*[DistillationBlock(cfg.features, cfg.distill_rate, cfg.cca_reduction)
                            for _ in range(cfg.blocks_per_group)])
            for _ in cfg.level_widths)
        self.body_out = conv3x3(cfg.features, cfg.features)
        self.upsample = _upsampler(cfg.features, scale)
        self.tail = conv3x3(cfg.features, bands)
        # Zero-initialised tail: an untrained decoder is exactly bicubic (the skip below), so training only
        # ever adds detail to the baseline instead of first unlearning random noise (measured: with a random
        # tail the small config was still 1.8 dB below bicubic after 500 steps on NEON imagery).
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def latent_features(self, z: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        h = self.latent_mid(self.latent_in(z))
        feats = []
        for level, transfer in zip(self.latent_levels, self.transfers):
            h = level(h)
            f = transfer(h)
            if self.latent_resize == "nearest":
                feats.append(F.interpolate(f, size=size, mode="nearest"))
            else:
                feats.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
        return feats

    def forward(self, lr: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        size = (lr.shape[-2], lr.shape[-1])
        feats = self.latent_features(z, size)
        head = self.head(lr)
        h = head
        for group, feat in zip(self.groups, feats):
            h = group(h + feat)
        h = self.body_out(h) + head
        return self.tail(self.upsample(h)) + upsample_bicubic(lr, self.scale)
