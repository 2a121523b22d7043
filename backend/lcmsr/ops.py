"""Resampling shared by training, inference and the degradation tool.

LR images are made the way the paper makes them: antialiased bicubic
downsampling of the HR image.  Keeping this in one place guarantees that the
pairs a user builds with ``lcmsr degrade`` match what the model was trained on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H // scale, W // scale], antialiased bicubic.

    H and W are cropped to multiples of ``scale`` first so pixel centres line up
    exactly with the upsampled grid.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    h, w = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    if h == 0 or w == 0:
        raise ValueError(f"image of {hr.shape[-2]}x{hr.shape[-1]} pixels is smaller than the scale {scale}")
    hr = hr[..., :h, :w]
    dtype = hr.dtype
    x = hr.float()
    lr = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    return lr.to(dtype) if dtype.is_floating_point else lr


def upsample_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, h * scale, w * scale] bicubic (the paper's LR↑ and baseline)."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
