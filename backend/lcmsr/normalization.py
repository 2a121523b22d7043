"""Per-band mapping between raw raster values and the networks' model space [-1, 1].

``y = 2 (x - lo) / (hi - lo) - 1`` per band, so the training data's robust range
fills [-1, 1].  ``lo``/``hi`` travel inside the model file: a model trained on
8-bit imagery and one trained on 16-bit reflectance read their inputs correctly
without the user knowing the difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .normalizers import robust_range

# Full ranges of GDAL integer types for which no statistics are needed.
_DTYPE_RANGES = {"Byte": (0.0, 255.0)}
# Value ranges of the GDAL integer types a model can be trained on (ModelInfo.data_type).
INTEGER_RANGES = {"Byte": (0, 255), "Int8": (-128, 127), "UInt16": (0, 65535), "Int16": (-32768, 32767),
                  "UInt32": (0, 2**32 - 1), "Int32": (-2**31, 2**31 - 1)}
# Model space is computed in float32: lo and hi must stay float32-sized, with at least ~16 float32
# steps between them (2**-20 of their magnitude).  A flat UInt16 band (hi = lo + 1 at 65535) passes.
MAX_FLOAT_MAGNITUDE = 1e30
MIN_RELATIVE_SPAN = 2.0 ** -20


@dataclass
class Normalization:
    lo: list[float]
    hi: list[float]

    def __post_init__(self):
        self.lo = [float(v) for v in self.lo]
        self.hi = [float(v) for v in self.hi]
        if len(self.lo) != len(self.hi) or not self.lo:
            raise ValueError(f"normalisation needs one lo and one hi per band, got {len(self.lo)} lo and "
                             f"{len(self.hi)} hi values")
        for band, (lo, hi) in enumerate(zip(self.lo, self.hi), start=1):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"normalisation of band {band} is not finite (lo={lo}, hi={hi})")
            if hi <= lo:
                raise ValueError(f"normalisation of band {band} has hi={hi} <= lo={lo}")

    @property
    def bands(self) -> int:
        return len(self.lo)

    def check_range(self, data_type: str, stretched: bool = False) -> None:
        """Refuse (ValueError naming the band) a range no real data of ``data_type`` has -- one that maps
        every input to one output value, or overflows float32: lo/hi inside the type's range widened by
        that range on both sides (float data: +-1e30), a span of at least a hundredth of a grey level
        (float data: 1e-20) and 2**-20 of the magnitude.  ``stretched``: the model stretches each input
        band to 0..1 first (domain normalisation "input_percentile"), so lo/hi are in those units."""
        if stretched:
            lo_lim, hi_lim, min_span, what = -1e3, 1e3, 1e-3, "inputs stretched to 0..1"
        elif data_type in INTEGER_RANGES:
            tmin, tmax = INTEGER_RANGES[data_type]
            lo_lim, hi_lim, min_span, what = 2 * tmin - tmax, 2 * tmax - tmin, 1e-2, f"{data_type} data"
        else:
            lo_lim, hi_lim, min_span, what = -MAX_FLOAT_MAGNITUDE, MAX_FLOAT_MAGNITUDE, 1e-20, f"{data_type} data"
        for band, (lo, hi) in enumerate(zip(self.lo, self.hi), start=1):
            if not lo_lim <= lo < hi <= hi_lim:
                raise ValueError(f"normalisation of band {band} ({lo:g}..{hi:g}) lies outside {lo_lim:g}..{hi_lim:g}, "
                                 f"beyond any {what}")
            if hi - lo < max(min_span, MIN_RELATIVE_SPAN * max(abs(lo), abs(hi))):
                raise ValueError(f"normalisation of band {band} spans only {hi - lo:g} ({lo:g}..{hi:g}): every "
                                 f"{what} would map to one value")

    def _params(self, x):
        """lo and (hi - lo) shaped to broadcast over [..., C, H, W] of ``x``."""
        if x.ndim < 3 or x.shape[-3] != self.bands:
            raise ValueError(f"expected an array of shape [..., {self.bands}, H, W], got {tuple(x.shape)}")
        lo = np.asarray(self.lo, dtype=np.float64)[:, None, None]
        span = (np.asarray(self.hi, dtype=np.float64) - np.asarray(self.lo, dtype=np.float64))[:, None, None]
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.dtype.is_floating_point else torch.float32
            return torch.as_tensor(lo, dtype=dtype, device=x.device), torch.as_tensor(span, dtype=dtype,
                                                                                       device=x.device)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return lo.astype(dtype), span.astype(dtype)

    def forward(self, x):
        """Raw values -> model space.  Works on torch tensors and numpy arrays [..., C, H, W]."""
        lo, span = self._params(x)
        if isinstance(x, torch.Tensor) and not x.dtype.is_floating_point:
            x = x.float()
        elif isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        return (x - lo) / span * 2 - 1

    def inverse(self, y, inplace: bool = False):
        """Model space -> raw values (not rounded or clipped: the caller knows the output type).

        ``inplace=True`` overwrites a float tensor ``y`` (same operations, same order, no new buffer:
        the raster pipeline de-normalises every batch this way)."""
        lo, span = self._params(y)
        if inplace:
            if not (isinstance(y, torch.Tensor) and y.dtype.is_floating_point):
                raise TypeError("inplace inverse needs a floating-point torch tensor")
            return y.add_(1).mul_(0.5).mul_(span).add_(lo)
        return (y + 1) * 0.5 * span + lo

    __call__ = forward

    def to_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        """From a file's JSON: 'lo' and 'hi' must be lists of numbers (no strings, booleans or nulls)."""
        def numbers(v):   # an int beyond float's range would raise OverflowError in float()
            return isinstance(v, list) and all(isinstance(x, float) or (isinstance(x, int) and not isinstance(x, bool)
                                                                        and abs(x) < 1e300) for x in v)

        if not (isinstance(data, dict) and numbers(data.get("lo")) and numbers(data.get("hi"))):
            raise ValueError(f"normalisation must have 'lo' and 'hi' lists of numbers, got {data!r:.120}")
        return cls(lo=data["lo"], hi=data["hi"])

    @classmethod
    def for_dtype(cls, data_type: str, bands: int) -> "Normalization":
        """Fixed range of a GDAL data type (only "Byte": 0..255); others need statistics."""
        if data_type not in _DTYPE_RANGES:
            raise ValueError(f"data type '{data_type}' has no fixed range for normalisation: "
                             "use Normalization.from_percentiles on the training data")
        lo, hi = _DTYPE_RANGES[data_type]
        return cls([lo] * bands, [hi] * bands)

    @classmethod
    def from_percentiles(cls, samples, low: float = 1.0, high: float = 99.0) -> "Normalization":
        """Robust range from pixel samples: ``samples`` is [C, N] (or a list of C 1-D arrays).

        NaNs are ignored.  A constant band gets hi = lo + 1 so it maps to -1 instead
        of dividing by zero.
        """
        lo, hi = [], []
        for index, values in enumerate(samples, start=1):
            try:
                a, b = robust_range(values, low, high)
            except ValueError:
                raise ValueError(f"band {index} has no valid pixel values to compute a normalisation from") from None
            lo.append(a)
            hi.append(b)
        return cls(lo, hi)
