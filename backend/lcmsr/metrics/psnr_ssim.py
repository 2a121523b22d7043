"""PSNR and SSIM as the SR literature computes them (and the paper reports them).

* Inputs: torch tensors or numpy arrays, ``[B, C, H, W]`` or ``[C, H, W]``, any
  bands; values in the units of ``data_range`` (255 for 8-bit, 1 or 2 for
  normalised data).  No clipping or rounding happens here.
* ``border``: pixels cropped from every side before measuring; the paper crops
  ``scale`` pixels, because bicubic and SR outputs are unreliable at the edge.
* PSNR: one MSE over all bands and pixels of an image (RGB PSNR, as BasicSR),
  averaged over the batch of per-image values.
* SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01,
  K2 = 0.03, "valid" windows only (no padding), population (not sample)
  statistics, computed per band and averaged, then averaged over the batch —
  the MATLAB ``ssim_index`` / BasicSR convention.  skimage's default differs
  (uniform 7x7 window, sample covariance), so its numbers are not comparable.
All arithmetic is float64 on the input's device.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name} must be [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def _prepare(a, b, data_range, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not data_range or data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    border = int(border)
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border:
        h, w = a.shape[-2:]
        if h <= 2 * border or w <= 2 * border:
            raise ValueError(f"a border of {border} px leaves nothing of a {h}x{w} image")
        a = a[..., border:h - border, border:w - border]
        b = b[..., border:h - border, border:w - border]
    return a, b.to(a.device)


def psnr_per_image(a, b, data_range: float, border: int = 0) -> torch.Tensor:
    """[B] float64 PSNR in dB of each image; ``inf`` where the images are identical."""
    a, b = _prepare(a, b, data_range, border)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)  # mse 0 -> +inf


def psnr(a, b, data_range: float, border: int = 0) -> float:
    """Mean over the batch of per-image PSNR (dB)."""
    return float(psnr_per_image(a, b, data_range, border).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a, b, data_range: float, border: int = 0) -> torch.Tensor:
    """[B, C, H - 10, W - 10] float64 SSIM of every valid 11x11 window, per band."""
    a, b = _prepare(a, b, data_range, border)
    n, c, h, w = a.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the border crop, got {h}x{w}")
    win = gaussian_window(device=a.device).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(x):  # depthwise, "valid": every window lies inside the image
        return F.conv2d(x, win, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim_per_image(a, b, data_range: float, border: int = 0) -> torch.Tensor:
    """[B] float64 SSIM of each image (mean over bands of the mean SSIM map)."""
    return ssim_map(a, b, data_range, border).mean(dim=(2, 3)).mean(dim=1)


def ssim(a, b, data_range: float, border: int = 0) -> float:
    """Mean over the batch of per-image SSIM (1.0 for identical images)."""
    return float(ssim_per_image(a, b, data_range, border).mean())


def psnr_from_mse(mse: float, data_range: float) -> float:
    """PSNR of a known MSE (for pooling over tiles: average MSE, then convert)."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)
