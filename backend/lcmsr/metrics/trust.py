"""Whether to trust a super-resolved result: does it agree with its input, does it keep the input's
colours, and does its uncertainty map point at its errors.

Arrays are numpy ``[C, H, W]`` in data units (any dtype; computed in float64); ``valid`` masks are
``[H, W]`` booleans on the array's own grid (``True`` = a pixel to count).  No GDAL: the raster side
(reading, nodata) is :mod:`lcmsr.metrics.evaluate`'s.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops import downsample_bicubic


def _f64(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be [C, H, W] or [H, W], got shape {a.shape}")
    return a


def degrade(sr, scale: int) -> np.ndarray:
    """The project's own antialiased bicubic downsampling (:func:`lcmsr.ops.downsample_bicubic`), in float64."""
    t = torch.from_numpy(_f64(sr, "sr")[None].copy())
    return downsample_bicubic(t, int(scale))[0].numpy()


def lr_consistency(sr, lr, scale: int, valid=None) -> dict:
    """How far degrading ``sr`` again lands from its input ``lr``: ``{"mae", "rmse", "max"}`` in data units.

    The definition of "keeps the radiometry of the input": an SR result whose ×``scale`` antialiased
    bicubic reduction is ``lr`` again added detail without changing what the LR pixels said.
    ``valid`` is on the LR grid.
    """
    lr = _f64(lr, "lr")
    down = degrade(sr, scale)
    h, w = min(down.shape[1], lr.shape[1]), min(down.shape[2], lr.shape[2])
    diff = np.abs(down[:, :h, :w] - lr[:, :h, :w])
    if valid is not None:
        diff = diff[:, np.asarray(valid, bool)[:h, :w]]
    if diff.size == 0:
        return {"mae": None, "rmse": None, "max": None}
    return {"mae": float(diff.mean()), "rmse": float(np.sqrt((diff ** 2).mean())), "max": float(diff.max())}


def angles(a, b) -> np.ndarray:
    """Per-pixel spectral angle (degrees, ``[H, W]``) between the band vectors of ``a`` and ``b``; NaN where
    either vector is zero (no direction)."""
    a, b = _f64(a, "a"), _f64(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"spectral angle of arrays of different shapes: {a.shape} vs {b.shape}")
    norm = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip((a * b).sum(0) / norm, -1.0, 1.0)
    return np.where(norm > 0, np.degrees(np.arccos(cos)), np.nan)


def spectral_angle(a, b, valid=None) -> float | None:
    """Mean spectral angle (degrees) between the band vectors of ``a`` and ``b``, pixel by pixel.

    0 when every pixel keeps its colour (its band ratios), whatever its brightness; a hue rotation shows
    here and not in PSNR's average.  ``None`` for one band (no angle) or no pixel to count; pixels where
    either vector is zero have no direction and are left out.
    """
    ang = angles(a, b)
    if _f64(a, "a").shape[0] < 2:
        return None
    keep = np.isfinite(ang)
    if valid is not None:
        keep &= np.asarray(valid, bool)
    return float(ang[keep].mean()) if keep.any() else None


def block_means(x, block: int, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-block means of ``[H, W]`` ``x`` over whole ``block``-square blocks, and which blocks count
    (every pixel valid)."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[0] // block * block, x.shape[1] // block * block
    tiles = x[:h, :w].reshape(h // block, block, w // block, block)
    means = tiles.mean(axis=(1, 3))
    ok = np.ones_like(means, dtype=bool)
    if valid is not None:
        ok = np.asarray(valid, bool)[:h, :w].reshape(h // block, block, w // block, block).all(axis=(1, 3))
    return means, ok


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or sorted_x[i] != sorted_x[start]:
            ranks[order[start:i]] = (start + i + 1) / 2.0
            start = i
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equally long 1-D samples; ``None`` if either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"samples of different lengths: {a.size} vs {b.size}")
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return None if den == 0 else float((ra * rb).sum() / den)


def block_pairs(uncertainty, error, block: int = 16, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-block mean uncertainty and mean absolute error (both ``[H, W]``), over the whole blocks whose
    every pixel is valid: the samples :func:`uncertainty_error_correlation` ranks."""
    u, ok = block_means(uncertainty, block, valid)
    e, _ = block_means(error, block)
    return u[ok], e[ok]


def uncertainty_error_correlation(uncertainty, error, block: int = 16, valid=None) -> float | None:
    """Whether the uncertainty map means something: Spearman's correlation between per-block mean
    uncertainty and per-block mean absolute error (both ``[H, W]``), over blocks with every pixel valid."""
    return spearman(*block_pairs(uncertainty, error, block, valid))
