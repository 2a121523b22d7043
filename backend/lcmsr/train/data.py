"""Training patches: random HR windows from arrays or rasters, their LR, augmentation, normalisation.

Sources are numpy arrays ``(C, H, W)`` (or ``(H, W)``) or paths of anything GDAL
reads (GeoTIFF, PNG, JPEG ...).  Rasters are read through :class:`lcmsr.raster.io.WindowReader`,
imported only inside :class:`RasterSource`, so that array training works on machines without
GDAL (the CUDA servers).  Arrays and rasters share one validity rule and one fill rule
(:mod:`lcmsr.raster.validity`, numpy only), the ones inference uses.

Everything random goes through one ``numpy.random.Generator`` whose state is a
JSON-able dict (:meth:`PatchSampler.state_dict`), so a resumed run draws exactly
the patches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..normalization import INTEGER_RANGES, Normalization
from ..ops import downsample_bicubic
from ..raster.validity import fill_invalid, neutral_values, valid_values

# numpy dtype -> GDAL data-type name (what ModelInfo.data_type records).
_GDAL_NAMES = {
    np.dtype(np.uint8): "Byte", np.dtype(np.int8): "Int8", np.dtype(np.uint16): "UInt16",
    np.dtype(np.int16): "Int16", np.dtype(np.uint32): "UInt32", np.dtype(np.int32): "Int32",
    np.dtype(np.float32): "Float32", np.dtype(np.float64): "Float64",
}

HR_MULTIPLE = 64  # paper/small configs: latent grid HR/8, halved 3 more times in the denoiser


class Source(abc.ABC):
    """One image to draw patches from.  Subclasses implement :meth:`read`."""

    name: str
    width: int
    height: int
    count: int            # bands in the source
    data_type: str        # GDAL name
    band_names: list[str]
    default_bands: list[int]  # 1-based; excludes an alpha band

    @abc.abstractmethod
    def read(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Window -> (float32 ``[C, h, w]`` raw values, bool ``[C, h, w]`` per-band validity)."""

    def check_bands(self, bands: Sequence[int]) -> None:
        for b in bands:
            if not 1 <= b <= self.count:
                raise ValueError(f"{self.name}: band {b} does not exist (the source has {self.count} band(s), "
                                 f"numbered from 1)")

    def close(self) -> None:
        pass


class ArraySource(Source):
    """An in-memory ``(C, H, W)`` array; a value equal to ``nodata`` (or not finite) is invalid in its band."""

    def __init__(self, array: np.ndarray, name: str = "array", nodata: float | None = None):
        a = np.asarray(array)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"{name}: expected an array of shape (C, H, W) or (H, W), got {a.shape}")
        if a.dtype not in _GDAL_NAMES:
            raise ValueError(f"{name}: unsupported array data type {a.dtype}")
        self.array, self.name, self.nodata = a, name, nodata
        self.count, self.height, self.width = a.shape
        self.data_type = _GDAL_NAMES[a.dtype]
        self.band_names = [f"band {i + 1}" for i in range(self.count)]
        self.default_bands = list(range(1, self.count + 1))

    def read(self, x, y, w, h, bands):
        raw = self.array[[b - 1 for b in bands], y:y + h, x:x + w]
        valid = np.stack([valid_values(band, self.nodata) for band in raw])  # in the array's own type
        return raw.astype(np.float32), valid


class RasterSource(Source):
    """A file read window by window through :class:`lcmsr.raster.io.WindowReader`, as inference reads."""

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        try:
            from ..raster import io  # GDAL lives in lcmsr.raster; imported here so array training needs none
        except ImportError as exc:
            raise RuntimeError(f"training on {self.name} needs GDAL (python3-gdal / osgeo), which is not "
                               f"importable here ({exc}); convert the rasters to (C, H, W) .npy arrays where "
                               f"GDAL is installed") from None
        if not os.path.exists(self.name):
            raise FileNotFoundError(f"training source {self.name} does not exist")
        lay = io.layout(self.name)  # a RasterError (a ValueError) names the file and the problem
        self.width, self.height, self.count = lay.width, lay.height, lay.count
        self.data_type, self.band_names, self.default_bands = lay.data_type, lay.band_names, lay.default_bands
        if not self.default_bands:
            raise ValueError(f"{self.name}: every band is an alpha band")
        self._io, self._readers = io, {}

    def read(self, x, y, w, h, bands):
        key = tuple(bands)
        if key not in self._readers:
            self._readers[key] = self._io.WindowReader(self.name, list(bands))
        return self._readers[key].read(x, y, w, h)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _npy_source(path: str) -> ArraySource:
    """A ``(C, H, W)`` ``.npy`` array (what `scripts/pack_training_data.py` writes), memory-mapped, so
    training runs where GDAL is missing (the GPU machine).  ``allow_pickle=False``: a .npy holding
    Python objects is refused, never unpickled."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a plain numeric .npy array ({exc})") from None
    return ArraySource(array, name=path)


def open_source(src, index: int = 0) -> Source:
    """An array, a path, or an already opened :class:`Source`."""
    if isinstance(src, Source):
        return src
    if isinstance(src, np.ndarray):
        return ArraySource(src, name=f"array #{index}")
    if isinstance(src, (str, os.PathLike)):
        if os.fspath(src).lower().endswith(".npy"):
            return _npy_source(os.fspath(src))
        return RasterSource(src)
    raise TypeError(f"training source #{index} is a {type(src).__name__}; expected a path or a numpy array")


def describe_source(src, index: int = 0) -> str:
    """A JSON-able description (checkpoint options, model metadata)."""
    if isinstance(src, np.ndarray):
        return f"<array #{index} {'x'.join(map(str, src.shape))} {src.dtype}>"
    if isinstance(src, Source):
        return src.name
    return os.fspath(src)


@dataclass
class SourceSet:
    """Opened sources with a common band selection and data type."""

    sources: list[Source]
    bands: list[int]          # 1-based
    data_type: str
    band_names: list[str]

    @classmethod
    def open(cls, items: Sequence, bands: Sequence[int] | None = None, what: str = "training") -> "SourceSet":
        if not items:
            raise ValueError(f"no {what} sources given")
        sources = [open_source(s, i) for i, s in enumerate(items)]
        if bands is None:
            bands = sources[0].default_bands
        bands = [int(b) for b in bands]
        if not bands:
            raise ValueError("the band selection is empty")
        for s in sources:
            s.check_bands(bands)
        types = {s.data_type for s in sources}
        if len(types) > 1:
            listed = ", ".join(f"{s.data_type} ({s.name})" for s in sources)
            raise ValueError(f"the {what} sources mix data types: {listed}; one model needs one data type")
        return cls(sources, bands, types.pop(), [sources[0].band_names[b - 1] for b in bands])


def compute_normalization(sset: SourceSet, rng: np.random.Generator, max_pixels: int = 262144,
                          window: int = 64) -> Normalization:
    """Per-band range of the training data: 0/255 for Byte, else the 1st/99th percentiles.

    Percentiles come from at most ``max_pixels`` valid pixels of random windows, so a
    10 GB raster costs the same as a small one (USERS.md: memory must not grow with size).
    """
    if sset.data_type == "Byte":
        return Normalization.for_dtype("Byte", len(sset.bands))
    per_source = max(1, max_pixels // len(sset.sources))
    samples = []
    for s in sset.sources:
        w, h = min(window, s.width), min(window, s.height)
        n_windows = max(1, min(math.ceil(per_source / (w * h)), (s.width * s.height) // (w * h)))
        for _ in range(n_windows):
            x, y = int(rng.integers(0, s.width - w + 1)), int(rng.integers(0, s.height - h + 1))
            data, valid = s.read(x, y, w, h, sset.bands)
            valid = valid.all(axis=0)  # pixels with every band valid, so bands keep their pairing
            if valid.any():
                samples.append(data[:, valid])
    if not samples:
        raise ValueError("no valid (non-nodata) pixels found in the training sources to compute the "
                         "normalisation from: " + ", ".join(s.name for s in sset.sources))
    return Normalization.from_percentiles(np.concatenate(samples, axis=1), 1.0, 99.0)


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90° rotations of ``[..., H, W]`` (k in 0..7)."""
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


def make_lr(hr_raw: torch.Tensor, scale: int, data_type: str) -> torch.Tensor:
    """LR the way ``lcmsr degrade`` writes it: antialiased bicubic, then rounded to the data type.

    Rounding matters: at inference the LR raster of an integer type is quantised, so
    training on unquantised LR would show the model cleaner inputs than it will ever get.
    """
    lr = downsample_bicubic(hr_raw, scale)
    if data_type in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[data_type]
        lr = lr.round().clamp(lo, hi)
    return lr


class PatchSampler:
    """Random HR/LR patch pairs in model space.

    ``normalization`` maps raw values to model space (``.forward``).  Patches with more
    than ``max_nodata`` of their values invalid are redrawn; the few invalid values of an
    accepted patch are filled by :func:`lcmsr.raster.validity.fill_invalid`, as inference fills them.
    """

    def __init__(self, sset: SourceSet, scale: int, patch: int, normalization, seed: int,
                 augment: bool = True, max_nodata: float = 0.1, max_tries: int = 200,
                 multiple: int = HR_MULTIPLE):
        # The networks take HR sizes of `multiple` (config.hr_multiple) without padding;
        # padded training patches would teach the model replicate-padded borders.
        if patch <= 0 or patch % multiple or patch % scale:
            raise ValueError(f"the HR patch size must be a positive multiple of {multiple} and of the scale "
                             f"{scale}, got {patch}")
        usable = [s for s in sset.sources if s.width >= patch and s.height >= patch]
        if not usable:
            sizes = ", ".join(f"{s.name} ({s.width}x{s.height})" for s in sset.sources)
            raise ValueError(f"every training source is smaller than the HR patch {patch}x{patch}: {sizes}")
        self.sset, self.sources = sset, usable
        self.skipped = [s.name for s in sset.sources if s not in usable]
        self.scale, self.patch, self.norm = scale, patch, normalization
        self.neutral = neutral_values(normalization)
        self.augment, self.max_nodata, self.max_tries = augment, max_nodata, max_tries
        area = np.array([(s.width - patch + 1) * (s.height - patch + 1) for s in usable], np.float64)
        self.weights = area / area.sum()
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def _patch(self) -> np.ndarray:
        p = self.patch
        for _ in range(self.max_tries):
            s = self.sources[int(self.rng.choice(len(self.sources), p=self.weights))]
            x, y = int(self.rng.integers(0, s.width - p + 1)), int(self.rng.integers(0, s.height - p + 1))
            data, valid = s.read(x, y, p, p, self.sset.bands)
            if 1.0 - valid.mean() > self.max_nodata:
                continue
            fill_invalid(data, valid, self.neutral)
            if self.augment:
                data = dihedral(data, int(self.rng.integers(0, 8)))
            return np.ascontiguousarray(data)
        raise ValueError(f"no {p}x{p} patch with at most {self.max_nodata:.0%} nodata found in "
                         f"{self.max_tries} tries in: " + ", ".join(s.name for s in self.sources))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hr ``[B, C, P, P]``, lr ``[B, C, P/s, P/s]``), float32, model space, on the CPU."""
        hr_raw = torch.from_numpy(np.stack([self._patch() for _ in range(batch)]))
        lr_raw = make_lr(hr_raw, self.scale, self.sset.data_type)
        return self.norm.forward(hr_raw).float(), self.norm.forward(lr_raw).float()


def validation_pairs(sset: SourceSet, scale: int, crop: int, normalization, max_crops: int = 4,
                     max_nodata: float = 0.1, multiple: int = HR_MULTIPLE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed crops (no randomness) of the validation sources: up to ``max_crops`` per source,
    spread over the image, each ``[1, C, crop, crop]`` HR with its LR, model space."""
    pairs = []
    for s in sset.sources:
        step_px = multiple * scale // math.gcd(multiple, scale)
        c = min(crop, s.width, s.height) // step_px * step_px
        if c == 0:
            raise ValueError(f"validation source {s.name} ({s.width}x{s.height}) is smaller than "
                             f"{step_px}x{step_px} pixels")
        nx, ny = s.width // c, s.height // c
        positions = [((i % nx) * c, (i // nx) * c) for i in range(nx * ny)]
        step = max(1, len(positions) // max_crops)
        taken = 0
        for x, y in positions[::step]:
            if taken == max_crops:
                break
            data, valid = s.read(x, y, c, c, sset.bands)
            if 1.0 - valid.mean() > max_nodata:
                continue
            fill_invalid(data, valid, neutral_values(normalization))
            hr_raw = torch.from_numpy(data)[None]
            lr_raw = make_lr(hr_raw, scale, sset.data_type)
            pairs.append((normalization.forward(hr_raw).float(), normalization.forward(lr_raw).float()))
            taken += 1
    if not pairs:
        raise ValueError("no validation crop with valid pixels in: " + ", ".join(s.name for s in sset.sources))
    return pairs



# --- fine-tuning: inference's per-band stretch, and true LR/HR pairs ----------------------------------

class StretchedBand(Source):
    """One band of a source stretched by a robust range, ``(x - lo) / (hi - lo)`` (Float32): what a band-wise
    model with the domain normalisation "input_percentile" sees of that band at inference
    (:func:`lcmsr.raster.pipeline`'s per-band 1-99 % stretch)."""

    def __init__(self, source: Source, band: int, lo: float, hi: float, role: str | None = None):
        source.check_bands([band])
        if not hi > lo:
            raise ValueError(f"{source.name}: band {band} has an empty value range ({lo:g}..{hi:g})")
        self.source, self.band, self.lo, self.hi = source, int(band), float(lo), float(hi)
        self.name = f"{source.name} band {band}"
        self.width, self.height, self.count = source.width, source.height, 1
        self.data_type = "Float32"
        self.band_names = [role or source.band_names[band - 1]]
        self.default_bands = [1]

    def read(self, x, y, w, h, bands):
        data, valid = self.source.read(x, y, w, h, [self.band])
        return ((data - self.lo) / (self.hi - self.lo)).astype(np.float32), valid

    def close(self) -> None:
        self.source.close()


class PairSource(Source):
    """A true LR/HR pair: ``hr`` and its co-registered ``lr`` (the same extent, LR pixels ``scale`` times
    the HR ones, so LR pixel (i, j) covers HR pixels (scale*i.., scale*j..))."""

    def __init__(self, hr: Source, lr: Source, scale: int):
        if lr.count != hr.count or lr.data_type != hr.data_type:
            raise ValueError(f"LR {lr.name} ({lr.count} band(s) {lr.data_type}) does not match HR {hr.name} "
                             f"({hr.count} band(s) {hr.data_type}): a pair needs the same bands and data type")
        if abs(lr.width * scale - hr.width) >= scale or abs(lr.height * scale - hr.height) >= scale:
            raise ValueError(f"LR {lr.name} is {lr.width}x{lr.height} but HR {hr.name} is {hr.width}x{hr.height}: "
                             f"a co-registered pair covers the same extent with LR pixels {scale} times the HR "
                             f"ones (expected LR {hr.width // scale}x{hr.height // scale})")
        self.hr, self.lr, self.scale = hr, lr, scale
        self.name = f"{hr.name} (LR {lr.name})"
        self.width, self.height, self.count = hr.width, hr.height, hr.count
        self.data_type, self.band_names, self.default_bands = hr.data_type, hr.band_names, hr.default_bands

    def read(self, x, y, w, h, bands):
        return self.hr.read(x, y, w, h, bands)

    def read_lr(self, x, y, w, h, bands):
        return self.lr.read(x, y, w, h, bands)

    def close(self) -> None:
        self.hr.close()
        self.lr.close()


class PairSampler(PatchSampler):
    """Random patches of true LR/HR pairs (:class:`PairSource`): the HR window at a multiple of the scale
    and the LR window under it, both augmented by the same flip/rotation.  Same state as PatchSampler."""

    def __init__(self, sset: SourceSet, scale: int, patch: int, normalization, seed: int, **kw):
        if not all(isinstance(s, PairSource) for s in sset.sources):
            raise ValueError("true LR/HR pairs need an LR raster for every HR raster")
        super().__init__(sset, scale, patch, normalization, seed, **kw)

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.patch, self.scale
        for _ in range(self.max_tries):
            src = self.sources[int(self.rng.choice(len(self.sources), p=self.weights))]
            x = s * int(self.rng.integers(0, (src.width - p) // s + 1))
            y = s * int(self.rng.integers(0, (src.height - p) // s + 1))
            hr, hr_valid = src.read(x, y, p, p, self.sset.bands)
            lr, lr_valid = src.read_lr(x // s, y // s, p // s, p // s, self.sset.bands)
            if 1.0 - min(hr_valid.mean(), lr_valid.mean()) > self.max_nodata:
                continue
            fill_invalid(hr, hr_valid, self.neutral)
            fill_invalid(lr, lr_valid, self.neutral)
            if self.augment:
                k = int(self.rng.integers(0, 8))
                hr, lr = dihedral(hr, k), dihedral(lr, k)
            return np.ascontiguousarray(hr), np.ascontiguousarray(lr)
        raise ValueError(f"no {p}x{p} patch pair with at most {self.max_nodata:.0%} nodata found in "
                         f"{self.max_tries} tries in: " + ", ".join(s.name for s in self.sources))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._pair() for _ in range(batch)]
        hr_raw = torch.from_numpy(np.stack([h for h, _ in pairs]))
        lr_raw = torch.from_numpy(np.stack([lr for _, lr in pairs]))
        return self.norm.forward(hr_raw).float(), self.norm.forward(lr_raw).float()
