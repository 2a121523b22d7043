"""Building blocks shared by the encoder, decoder and denoiser."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``
    (so narrow test configs and odd widths still build)."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6, affine=True)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def zero_module(module: nn.Module) -> nn.Module:
    # Zero-initialised output layers make a residual branch start as the identity
    # (LDM's UNet does this; it keeps early denoiser training stable).
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip; optionally adds an embedding (UNet)."""

    def __init__(self, cin: int, cout: int | None = None, emb_dim: int | None = None, dropout: float = 0.0,
                 groups: int = 32, zero_out: bool = False):
        super().__init__()
        cout = cout or cin
        self.norm1 = group_norm(cin, groups)
        self.conv1 = conv3x3(cin, cout)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2 = group_norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout)
        if zero_out:
            zero_module(self.conv2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all latent positions (``head_channels`` per head)."""

    def __init__(self, channels: int, head_channels: int = 32, groups: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"attention over {channels} channels cannot be split in heads of {head_channels}")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # [b, heads, hw, ch]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest")
        return self.conv(x)


class ContrastChannelAttention(nn.Module):
    """IMDN's contrast-aware channel attention: weights from per-channel std + mean."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).clamp_min(0).sqrt()
        return x * self.fc(std + mean)


class DistillationBlock(nn.Module):
    """IMDN-style information multi-distillation block.

    Each 3x3 conv splits its output into a *distilled* part that is kept and a
    *remaining* part that is refined further; the distilled parts are
    concatenated, re-weighted by contrast-aware channel attention and fused back
    with a 1x1 conv, plus the block's input.
    """

    def __init__(self, channels: int, distill_rate: float = 0.25, reduction: int = 16):
        super().__init__()
        self.distilled = max(1, int(channels * distill_rate))
        self.remaining = channels - self.distilled
        if self.remaining < 1:
            raise ValueError(f"distillation of {channels} channels at rate {distill_rate} leaves nothing to refine")
        self.c1 = conv3x3(channels, channels)
        self.c2 = conv3x3(self.remaining, channels)
        self.c3 = conv3x3(self.remaining, channels)
        self.c4 = conv3x3(self.remaining, self.distilled)
        self.cca = ContrastChannelAttention(4 * self.distilled, reduction)
        self.fuse = nn.Conv2d(4 * self.distilled, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = []
        h = x
        for conv in (self.c1, self.c2, self.c3):
            h = F.leaky_relu(conv(h), 0.05)
            d, h = torch.split(h, (self.distilled, self.remaining), dim=1)
            kept.append(d)
        kept.append(self.c4(h))
        return self.fuse(self.cca(torch.cat(kept, dim=1))) + x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim] of (possibly fractional) scalar inputs."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EmbeddingMLP(nn.Module):
    """Sinusoidal features of a scalar (or of several, concatenated) -> MLP -> embedding."""

    def __init__(self, freq_dim: int, emb_dim: int, inputs: int = 1):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim * inputs, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.ndim == 1:
            values = values[:, None]
        feats = torch.cat([timestep_embedding(values[:, i], self.freq_dim) for i in range(values.shape[1])], dim=-1)
        return self.mlp(feats)


def gaussian_noise(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) on ``device`` drawn from ``generator`` even when the generator lives on another
    device (a CPU generator then gives the same numbers on every device)."""
    device = torch.device(device)
    if generator is None or generator.device.type == device.type:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
