"""PatchGAN discriminator (Isola et al. 2017) for the optional adversarial term of stage 1.

Each output logit judges one receptive-field patch (70x70 px with 3 layers) as real HR
or decoded; the hinge loss of the LDM autoencoder is applied to the whole logit map.
Training-only: never part of a model file.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PatchDiscriminator(nn.Module):
    """``[B, C, H, W]`` model-space image -> ``[B, 1, h, w]`` logits (positive = real)."""

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the discriminator needs at least one layer, got {layers}")
        seq: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1  # the last layer keeps the resolution (pix2pix)
            seq += [nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                    nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pix2pix initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 (E[relu(1 - D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())
