"""The one validity rule and the one fill rule for pixels that hold no data (numpy only, no GDAL).

Validity is per band: a value is invalid in its band when it equals that band's nodata value
(compared in the band's own type, as GDAL does), when the band's mask or alpha band is 0
(:class:`lcmsr.raster.io.WindowReader` reads those), or when it is not finite (NaN, ±inf).
A pixel whose every band is invalid is nodata as a whole.

Invalid values never reach a network: :func:`fill_invalid` replaces them, in training patches,
inference tiles, degrading and the LPIPS of evaluation alike, by the mean of valid neighbours
grown ``FILL_ITERATIONS`` pixels deep, beyond that the band's valid mean in the window, and in
a band with no valid value at all a neutral value (the middle of the model's range).  A
neighbour mean carries no edge into the network, so the hole does not ring into valid pixels.

Used by :mod:`lcmsr.raster.io` (GDAL rasters) and :mod:`lcmsr.train.data` (``.npy`` arrays,
on machines without GDAL), so an array and a GeoTIFF with the same nodata give the same mask.
"""
from __future__ import annotations

import math

import numpy as np

FILL_ITERATIONS = 8  # holes are filled from valid neighbours this many pixels deep


def valid_values(band: np.ndarray, nodata: float | None) -> np.ndarray:
    """Bool mask of the values of ``band`` (in its own dtype) that are data: not ``nodata``, finite."""
    if nodata is None:
        valid = np.ones(band.shape, bool)
    elif math.isnan(nodata):
        valid = ~np.isnan(band)
    elif band.dtype.kind in "iu":
        info = np.iinfo(band.dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            valid = np.ones(band.shape, bool)  # a value the type cannot hold marks nothing
        else:
            valid = band != int(nodata)
    else:
        # A float32 band's -3.4e38 nodata only matches after rounding it to float32.
        valid = band != band.dtype.type(nodata)
    if band.dtype.kind == "f":
        valid &= np.isfinite(band)
    return valid


def neutral_values(norm) -> np.ndarray:
    """Per band, the middle of a normalisation's ``lo``..``hi``: what fills a band with no valid value
    (model space 0, so an empty band asks the network for nothing)."""
    return np.array([(lo + hi) / 2 for lo, hi in zip(norm.lo, norm.hi)], np.float32)


def fill_invalid(values: np.ndarray, valid: np.ndarray, neutral) -> None:
    """In place on float ``values [C, h, w]``: every value where ``valid [C, h, w]`` is False is
    replaced (see the module doc); ``neutral`` (per band or one number, see :func:`neutral_values`)
    fills a band with no valid value in the window."""
    neutral = np.broadcast_to(np.asarray(neutral, np.float32), (values.shape[0],))
    for c in range(values.shape[0]):
        ok = valid[c]
        if ok.all():
            continue
        v = values[c]
        if not ok.any():
            v[:] = neutral[c]
            continue
        known = ok.astype(np.float32)
        # float64 sums: nine float32 values near 3.4e38 (valid data) would overflow to inf in float32.
        acc = np.where(ok, v, 0).astype(np.float64)
        for _ in range(FILL_ITERATIONS):
            missing = known == 0
            if not missing.any():
                break
            s, n = _box3(acc * known), _box3(known)
            grow = missing & (n > 0)
            acc[grow] = s[grow] / n[grow]
            known[grow] = 1
        rest = known == 0
        acc[rest] = v[ok].mean(dtype=np.float64)
        v[~ok] = acc[~ok]


def _box3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1)
    h, w = a.shape
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
