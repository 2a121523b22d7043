"""How a model's inputs are brought into its value range: one strategy per ``Domain.normalization`` name.

Torch-free (the plugin and :mod:`lcmsr.domain` read it).  A model file stores a range per band (``lo``/``hi``,
:class:`lcmsr.normalization.Normalization`) and its domain names the strategy that says what that range means:

* ``fixed``: the range is in the input's own units (0..255 for 8-bit RGB): the model reads raw values.
* ``input_percentile``: each input band is first stretched by its own robust range, the 1st and 99th
  percentiles of its valid pixels (:func:`robust_range`), so 8-bit, 16-bit and float rasters of one sensor
  family meet one model; the stored range is in those stretched units.  Training data is stretched the same way
  (``scripts/satellite_data.py``, fine-tuning), at inference the pipeline measures each band of the input.

A new strategy is one class here and one :data:`NORMALIZERS` line; training and inference both ask it.
"""
from __future__ import annotations

import abc
import math

import numpy as np

STRETCH_PERCENTILES = (1.0, 99.0)
_HALF_MAX = float(np.finfo(np.float64).max) / 2


def robust_range(values, low: float = STRETCH_PERCENTILES[0], high: float = STRETCH_PERCENTILES[1]) -> tuple[float, float]:
    """(lo, hi) percentiles of the finite values; hi > lo always (a flat band gets hi = lo + 1)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no valid pixel values to measure a range from")
    lo, hi = (float(p) for p in np.percentile(v, [low, high]))
    # Float64 data near ±1.8e308: a span that overflows is halved at both ends, so hi - lo stays finite.
    if not math.isfinite(hi - lo):
        lo, hi = max(lo, -_HALF_MAX), min(hi, _HALF_MAX)
    if not hi > lo:
        hi = lo + max(1.0, abs(lo) * 2.0 ** -20)  # lo + 1 == lo for |lo| >= 2**53
    return lo, hi


class Normalizer(abc.ABC):
    """A strategy: what the stored range means and how an input's range is found from it."""
    name = ""
    label = ""              # one phrase for `lcmsr info` and the domain summary
    stretched = False       # the stored range is in units of the input's own stretch, not raw values
    measures_input = False  # inference needs each band's robust range of the input

    @abc.abstractmethod
    def input_range(self, lo: list[float], hi: list[float], ranges, bands: int) -> tuple[list[float], list[float]]:
        """The raw-value range (lo, hi per input band) that maps an input to the model's range; ``ranges`` per
        input band (p1, p99, min, max) where :attr:`measures_input`; ``bands``: input bands (a band-wise model
        stores one range for all)."""


class Fixed(Normalizer):
    name, label = "fixed", "the fixed range above"

    def input_range(self, lo, hi, ranges, bands):
        if len(lo) == 1 and bands > 1:
            return lo * bands, hi * bands
        return list(lo), list(hi)


class InputPercentile(Normalizer):
    name, label = "input_percentile", "per band, the input's own 1-99 % range (then the file's range above)"
    stretched = measures_input = True

    def input_range(self, lo, hi, ranges, bands):
        # x -> (x - p1) / (p99 - p1) -> model space: one linear map per band.
        mlo, mhi = lo[0], hi[0]
        return ([p1 + mlo * (p99 - p1) for p1, p99, _, _ in ranges],
                [p1 + mhi * (p99 - p1) for p1, p99, _, _ in ranges])

    @staticmethod
    def stretch(values: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """A band stretched to its own 1-99 % range (float32, NaN kept) and that range: training data."""
        lo, hi = robust_range(values[np.isfinite(values)])
        return ((values - lo) / (hi - lo)).astype(np.float32), [lo, hi]


NORMALIZERS: dict[str, Normalizer] = {n.name: n for n in (Fixed(), InputPercentile())}

