"""Score an SR result against its HR reference the way the paper does.

PSNR / SSIM with a border crop of ``scale`` pixels over all (selected) bands,
LPIPS (AlexNet v0.1) on the uncropped image.  ``evaluate_arrays`` works on
in-memory images; ``evaluate_rasters`` streams two rasters tile by tile so a
large scene never has to fit in memory; ``write_html_report`` writes a small
self-contained table.

Rasters are read through :class:`lcmsr.raster.io.WindowReader` (imported on use, so this
module and ``evaluate_arrays`` run on machines without GDAL), with the validity rule of
inference and training: nodata is excluded from every metric.
"""
from __future__ import annotations

import base64
import html
import importlib.util
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import AtomicPath
from ..paths import check_file_output, check_outputs
from .psnr_ssim import SSIM_WINDOW, psnr, psnr_from_mse, ssim, ssim_map

METRIC_KEYS = ("psnr", "ssim", "lpips")
# Pixels per tile side when a raster is read window-wise (float64 SSIM of a
# 1024^2 3-band tile needs a few hundred MB; larger tiles buy nothing).
DEFAULT_TILE = 1024


def _to_model_space(x: torch.Tensor, data_range: float, offset: float) -> torch.Tensor:
    # LPIPS wants [-1, 1]: values in [offset, offset + data_range] map onto it.
    return (x.double() - offset) / data_range * 2.0 - 1.0


def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    t = t.unsqueeze(0) if t.ndim == 3 else t
    if t.ndim != 4:
        raise ValueError(f"{name} must be [C, H, W] or [B, C, H, W], got shape {tuple(t.shape)}")
    return t


def evaluate_arrays(sr, hr, scale: int, data_range: float, lpips: bool = True, *,
                    offset: float = 0.0, device: str | torch.device = "cpu") -> dict:
    """``{"psnr": dB, "ssim": float, "lpips": float | None}`` of SR vs HR images.

    ``sr``/``hr``: ``[C, H, W]`` or ``[B, C, H, W]`` with values in
    ``[offset, offset + data_range]`` (e.g. 0..255 for 8-bit).  Batch values are
    means of per-image values.  ``lpips=False`` gives ``"lpips": None``.
    """
    sr_t, hr_t = _as_tensor(sr, "sr"), _as_tensor(hr, "hr")
    if sr_t.shape != hr_t.shape:
        raise ValueError(f"SR and HR differ in shape: {tuple(sr_t.shape)} vs {tuple(hr_t.shape)}")
    result = {"psnr": psnr(sr_t, hr_t, data_range, border=scale),
              "ssim": ssim(sr_t, hr_t, data_range, border=scale),
              "lpips": None}
    if lpips:
        from .lpips import get_lpips

        net = get_lpips(device)
        with torch.no_grad():
            d = net(_to_model_space(sr_t, data_range, offset).to(device),
                    _to_model_space(hr_t, data_range, offset).to(device))
        result["lpips"] = float(d.mean())
    return result


# --------------------------------------------------------------------------- rasters

def _rio():
    """lcmsr.raster.io, the one GDAL reader; imported on use so this module runs without GDAL."""
    try:
        from ..raster import io as rio
    except ImportError as exc:
        raise RuntimeError("reading rasters needs GDAL (python3-gdal / osgeo), which is not importable here; "
                           "use evaluate_arrays on arrays, or .npy images") from exc
    return rio


def _reader(path, what: str, bands: Sequence[int] | None):
    rio = _rio()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} raster {path} does not exist")
    try:
        return rio.WindowReader(path, list(bands) if bands else None)
    except rio.RasterError as exc:
        raise ValueError(f"{what} raster {exc}") from None


def _pair(sr, hr, x: int, y: int, w: int, h: int, neutral: float):
    """SR and HR windows as float64 plus where both are valid (lcmsr.raster.validity's rule).

    Values invalid in either get HR's filled value (validity.fill_invalid) in both, so a hole
    adds no error and reaches LPIPS the way holes reach every network of lcmsr."""
    from ..raster.validity import fill_invalid

    a, va = sr.read(x, y, w, h)
    b, vb = hr.read(x, y, w, h)
    ok = va & vb
    fill_invalid(b, ok, neutral)
    a[~ok] = b[~ok]
    return a.astype(np.float64), b.astype(np.float64), ok


def _valid_range(reader, tile: int) -> tuple[float, float]:
    """(min, max) of the reader's valid values, read window by window."""
    lo, hi = math.inf, -math.inf
    for y0, y1, _ in _tiles(0, reader.height, tile):
        for x0, x1, _ in _tiles(0, reader.width, tile):
            v, ok = reader.read(x0, y0, x1 - x0, y1 - y0)
            if ok.any():
                lo, hi = min(lo, float(v[ok].min())), max(hi, float(v[ok].max()))
    return lo, hi


def _tiles(start: int, stop: int, tile: int):
    # Pixel blocks [p0, p1) partition [start, stop); each read reaches SSIM_WINDOW - 1
    # pixels further so the valid 11x11 windows of successive tiles partition the
    # image's windows exactly (whole-image SSIM, not a mean of tile SSIMs).
    for p0 in range(start, stop, tile):
        yield p0, min(p0 + tile, stop), min(p0 + tile + SSIM_WINDOW - 1, stop)


def evaluate_rasters(sr_path, hr_path, scale: int, bands: Sequence[int] | None = None, *,
                     data_range: float | None = None, lpips: bool = True,
                     device: str | torch.device = "cpu", tile: int = DEFAULT_TILE) -> dict:
    """Metrics of an SR raster against an HR raster of the same size (1-based ``bands``;
    None: every band except alpha bands).

    Nodata is excluded: a value invalid in SR or HR by :mod:`lcmsr.raster.validity`'s rule
    (the band's nodata value, its mask, non-finite) counts in no PSNR sum, no SSIM window
    that covers it counts, and LPIPS sees it filled the same in both.
    ``data_range``: 255 for Byte rasters; for other types the range of HR's valid values
    (max - min over the selected bands), unless given.  PSNR and SSIM are exact
    whole-image values even when read tile by tile; LPIPS is the mean of per-tile LPIPS
    weighted by valid pixels when the raster is larger than one ``tile``.
    Returns ``psnr``, ``ssim``, ``lpips`` (None when off) plus ``data_range``,
    ``bands``, ``width``, ``height``.
    """
    sr, hr = _reader(sr_path, "SR", bands), _reader(hr_path, "HR", bands)
    try:
        return _evaluate_readers(sr, hr, sr_path, hr_path, scale, data_range, lpips, device, tile)
    finally:
        sr.close()
        hr.close()


def check_grids(sr, sr_path, others) -> None:
    """The georeferencing check of evaluation, before any pixel is read: each of ``others`` — ``(reader,
    path, what, ratio)``, its pixels ``ratio`` times SR's — must lie on SR's grid where both are
    georeferenced (same CRS; corners within a quarter of an SR pixel: :func:`lcmsr.raster.io.grid_problem`);
    a reference in another CRS or elsewhere would give numbers that mean nothing.  ValueError in one line."""
    for reader, path, what, ratio in others:
        if reader is None or isinstance(reader, _ArrayReader) or isinstance(sr, _ArrayReader):
            continue
        rio = _rio()
        try:
            problem = rio.grid_problem(sr, f"SR {sr_path}", reader, f"{what} {path}", ratio)
        except rio.RasterError as exc:
            raise ValueError(str(exc)) from None
        if problem:
            raise ValueError(problem)


def _evaluate_readers(sr, hr, sr_path, hr_path, scale, data_range, lpips, device, tile) -> dict:
    if (sr.width, sr.height) != (hr.width, hr.height):
        raise ValueError(f"SR {sr_path} is {sr.width}x{sr.height} pixels but HR {hr_path} is "
                         f"{hr.width}x{hr.height}; they must match")
    check_grids(sr, sr_path, [(hr, hr_path, "HR", 1)])
    _rio().check_size(hr.width, hr.height, hr_path)   # the SR command's size guard, before any read
    if len(sr.bands) != len(hr.bands):
        raise ValueError(f"SR {sr_path} has {len(sr.bands)} band(s) but HR {hr_path} has {len(hr.bands)} "
                         f"(alpha bands excluded); pass bands= to compare a selection")
    w, h = hr.width, hr.height
    if h <= 2 * scale + SSIM_WINDOW - 1 or w <= 2 * scale + SSIM_WINDOW - 1:
        raise ValueError(f"{hr_path} ({w}x{h}) is too small for a {scale}-pixel border crop and 11x11 SSIM windows")
    tile = max(int(tile), SSIM_WINDOW + 1)

    offset = 0.0
    if data_range is None:
        if hr.dtypes[0] == np.uint8:
            data_range = 255.0
        else:
            lo, hi = _valid_range(hr, tile)
            if lo > hi:
                raise ValueError(f"HR {hr_path} has no valid pixel in the selected bands (all nodata)")
            offset, data_range = lo, hi - lo
            if data_range <= 0:
                raise ValueError(f"HR {hr_path} is constant (value {offset}); give data_range explicitly")
    neutral = offset + data_range / 2

    from .lpips import MIN_LPIPS_SIZE, get_lpips

    net = get_lpips(device) if lpips else None
    sq_err, n_px = 0.0, 0
    ssim_sum, n_win = 0.0, 0
    lp_sum, lp_area = 0.0, 0
    # PSNR/SSIM on the border-cropped region, LPIPS on the whole image (see module doc).
    for y0, y1, y2 in _tiles(scale, h - scale, tile):
        for x0, x1, x2 in _tiles(scale, w - scale, tile):
            a, b, ok = _pair(sr, hr, x0, y0, x2 - x0, y2 - y0, neutral)
            core = ok[:, :y1 - y0, :x1 - x0]
            sq_err += float(((a[:, :y1 - y0, :x1 - x0] - b[:, :y1 - y0, :x1 - x0]) ** 2)[core].sum())
            n_px += int(core.sum())
            if a.shape[1] >= SSIM_WINDOW and a.shape[2] >= SSIM_WINDOW:
                m = ssim_map(torch.from_numpy(a), torch.from_numpy(b), data_range)[0]
                # A window counts, per band, only when all its pixels are valid there.
                holes = torch.from_numpy((~ok).astype(np.float64))[:, None]
                whole = torch.nn.functional.avg_pool2d(holes, SSIM_WINDOW, stride=1)[:, 0] == 0
                ssim_sum += float(m[whole].sum())
                n_win += int(whole.sum())
    if n_px == 0:
        raise ValueError(f"no pixel inside the {scale}-pixel border is valid in both SR {sr_path} and HR {hr_path}")
    if net is not None:
        for y0, y1, _ in _tiles(0, h, tile):
            for x0, x1, _ in _tiles(0, w, tile):
                if min(y1 - y0, x1 - x0) < MIN_LPIPS_SIZE:
                    continue  # a sliver at the edge: too small for AlexNet, carries little area
                a, b, ok = _pair(sr, hr, x0, y0, x1 - x0, y1 - y0, neutral)
                area = int(ok.any(axis=0).sum())
                if area == 0:
                    continue
                with torch.no_grad():
                    d = net(_to_model_space(torch.from_numpy(a)[None], data_range, offset).to(device),
                            _to_model_space(torch.from_numpy(b)[None], data_range, offset).to(device))
                lp_sum += float(d.mean()) * area
                lp_area += area
    return {"psnr": psnr_from_mse(sq_err / n_px, data_range),
            "ssim": ssim_sum / n_win if n_win else math.nan,
            "lpips": lp_sum / lp_area if net is not None and lp_area else None,
            "data_range": data_range, "bands": hr.bands, "width": w, "height": h}


def read_image(path) -> np.ndarray:
    """An image file as ``[C, H, W]`` (``.npy`` as stored; others through GDAL, else Pillow)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = np.load(path, allow_pickle=False)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"{path}: expected a [C, H, W] array, got shape {a.shape}")
        return a
    if importlib.util.find_spec("osgeo") is None:
        try:
            from PIL import Image
        except ImportError:
            raise RuntimeError(f"{path}: reading images needs GDAL or Pillow; neither is importable here") from None
        a = np.asarray(Image.open(path))
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if not path.exists():
        raise FileNotFoundError(f"image raster {path} does not exist")
    rio = _rio()
    try:
        reader = rio.WindowReader(path, list(range(1, rio.layout(path).count + 1)))  # alpha too: images
    except rio.RasterError as exc:
        raise ValueError(f"image raster {exc}") from None
    try:
        values, _ = reader.read(0, 0, reader.width, reader.height)
    finally:
        reader.close()
    # In the file's own data type (callers tell 8-bit from other data by it); the reader's float32
    # holds every 8- and 16-bit value exactly (32-bit integers above 2**24 are rounded).
    return values.astype(np.result_type(*reader.dtypes), copy=False)


# --------------------------------------------------------------------------- trust
# Whether to trust a result (lcmsr.metrics.trust): does degrading it give back its input, did it keep the
# input's colours, does its uncertainty point at its errors; and the report's pictures.  Streamed block by
# block like the paper's metrics.

TRUST_KEYS = ("lr_mae", "lr_rmse", "lr_max", "sam_input", "sam_reference", "uncertainty_spearman")
REACH_LR = 2      # LR pixels either side that antialiased bicubic reduction / bicubic enlargement reach
MARGIN_LR = 3     # read this much more around each block, so a block sees what the whole image shows it
CROP = 128        # side of the side-by-side crops (SR pixels), shown twice as large in the report
MAP_SIDE = 512    # the whole-scene heat maps are at most about this many cells a side
CORR_BLOCK = 16   # uncertainty vs error: Spearman over 16x16 blocks (the test)


class _ArrayReader:
    """A ``.npy`` image behind WindowReader's interface; valid = finite (the rule for arrays)."""

    def __init__(self, path, bands):
        a = read_image(path)
        self.values = a[[b - 1 for b in bands]] if bands else a
        self.bands = list(bands) if bands else list(range(1, a.shape[0] + 1))
        self.height, self.width = a.shape[1:]
        self.dtypes = [a.dtype] * len(self.bands)

    def read(self, x, y, w, h):
        v = self.values[:, y:y + h, x:x + w].astype(np.float32)
        return v, np.isfinite(v)

    def close(self):
        pass


def _open(path, what: str, bands):
    if path is None:
        return None
    return _ArrayReader(path, bands) if Path(path).suffix.lower() == ".npy" else _reader(path, what, bands)


def _read0(reader, x, y, w, h):
    """A window with its invalid values set to 0: every output they reach is left out of every count, so
    their value never matters (0 keeps the arithmetic finite)."""
    v, ok = reader.read(x, y, w, h)
    return np.where(ok, v, 0).astype(np.float64), ok


def _reach(bad: np.ndarray) -> np.ndarray:
    """``bad`` ``[..., h, w]`` grown by REACH_LR pixels: the LR pixels whose reduction or enlargement a bad
    value touches."""
    out = bad.copy()
    for axis in (-2, -1):       # rows, then columns: a square, as the separable kernels reach
        src = out.copy()
        for r in range(1, REACH_LR + 1):
            n = out.shape[axis]
            head, tail = [slice(None)] * out.ndim, [slice(None)] * out.ndim
            head[axis], tail[axis] = slice(r, n), slice(0, n - r)
            out[tuple(head)] |= src[tuple(tail)]
            out[tuple(tail)] |= src[tuple(head)]
    return out


def _cells(x: np.ndarray, ok: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``x`` ``[h, w]`` over its valid pixels and their counts, per ``k``-square cell."""
    h, w = x.shape
    pad = ((0, -h % k), (0, -w % k))
    xs, n = np.pad(np.where(ok, x, 0.0), pad), np.pad(ok, pad).astype(np.int64)
    shape = (xs.shape[0] // k, k, xs.shape[1] // k, k)
    return xs.reshape(shape).sum((1, 3)), n.reshape(shape).sum((1, 3))


class _Grid:
    """Per-cell sums and counts over the whole SR grid, filled window by window."""

    def __init__(self, h: int, w: int, k: int):
        self.k = k
        self.sum = np.zeros((-(-h // k), -(-w // k)))
        self.n = np.zeros(self.sum.shape, np.int64)

    def add(self, x0: int, y0: int, x: np.ndarray, ok: np.ndarray) -> None:
        s, n = _cells(x, ok, self.k)
        cy, cx = y0 // self.k, x0 // self.k
        self.sum[cy:cy + s.shape[0], cx:cx + s.shape[1]] += s
        self.n[cy:cy + s.shape[0], cx:cx + s.shape[1]] += n

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.sum / np.maximum(self.n, 1), np.nan)


def evaluate_trust(sr_path, scale: int | None = None, bands: Sequence[int] | None = None, *, lr=None,
                   lr_bands: Sequence[int] | None = None, hr=None, uncertainty=None, pictures: bool = False,
                   tile: int = 256) -> dict:
    """The trust metrics of an SR raster (or ``.npy``), given its LR input and/or its HR reference.

    * ``lr_mae`` / ``lr_rmse`` / ``lr_max``: |degrade(SR) - LR| (:func:`lcmsr.metrics.trust.lr_consistency`,
      the project's antialiased bicubic) in the LR's data units (grey levels for 8-bit: ``unit``);
    * ``sam_input``: mean spectral angle (degrees) between SR and the bicubic enlargement of the LR: how
      much SR changed the input's colours; ``sam_reference``: the same against HR;
    * ``uncertainty_spearman``: Spearman's correlation of per-16x16-block uncertainty (``uncertainty``,
      on the SR grid; several bands are averaged) with per-block mean |SR - HR|.
    A metric whose inputs are not given is None and ``notes`` says what it needs.  ``scale``: the SR
    factor; with an LR it may be None (SR size / LR size) and must agree with the sizes.  ``bands``
    select SR's and HR's bands, ``lr_bands`` the LR's (default ``bands``).

    Nodata: a value invalid by :mod:`lcmsr.raster.validity`'s rule counts nowhere, nor does any output
    it reaches (an LR pixel whose reduction reads an invalid SR value, an SR pixel whose bicubic reads
    an invalid LR value, a pixel invalid in any band of either image for the angles, a block with any
    invalid pixel for the correlation).  With ``pictures``, ``"pictures"`` holds the report's pictures
    (see :func:`write_html_report`).
    """
    sr, lr_r, hr_r, un_r, scale = _open_checked(sr_path, scale, bands, lr, lr_bands, hr, uncertainty)
    try:
        return dict(_trust(sr, lr_r, hr_r, un_r, int(scale), pictures, tile), scale=int(scale))
    finally:
        for r in (sr, lr_r, hr_r, un_r):
            if r is not None:
                r.close()


def check_pair(sr, hr=None, scale: int | None = None, bands: Sequence[int] | None = None, *, lr=None,
               lr_bands: Sequence[int] | None = None, uncertainty=None) -> int:
    """Every check :func:`evaluate_pair` makes before reading pixels — each raster readable, band counts,
    sizes and scale, and the georeferencing (:func:`check_grids`) — without computing anything: the
    commands run it on every pair of a folder before the first is scored.  -> the scale."""
    readers = _open_checked(sr, scale, bands, lr, lr_bands, hr, uncertainty)
    for r in readers[:4]:
        if r is not None:
            r.close()
    return int(readers[4])


def _open_checked(sr_path, scale, bands, lr, lr_bands, hr, uncertainty):
    """(SR, LR, HR, uncertainty readers, scale), checked against each other; the readers are closed on error."""
    sr = _open(sr_path, "SR", bands)
    readers = [sr]
    try:
        lr_r = _open(lr, "LR", lr_bands or bands)
        hr_r = _open(hr, "HR", bands)
        un_r = _open(uncertainty, "uncertainty", None)
        readers += [lr_r, hr_r, un_r]
        if lr_r is not None:
            if len(lr_r.bands) != len(sr.bands):
                raise ValueError(f"LR {lr} has {len(lr_r.bands)} band(s) but SR {sr_path} has {len(sr.bands)} "
                                 "(alpha bands excluded); select the LR's bands in the SR's order")
            found = sr.width // lr_r.width if lr_r.width else 0
            if scale is None:
                scale = found
            if found < 1 or (sr.width // scale, sr.height // scale) != (lr_r.width, lr_r.height):
                raise ValueError(f"SR {sr_path} ({sr.width}x{sr.height}) is not LR {lr} ({lr_r.width}x"
                                 f"{lr_r.height}) enlarged {scale or found} times")
        if scale is None or int(scale) < 1:
            raise ValueError(f"give the scale factor of SR {sr_path}")
        for other, path, what in ((hr_r, hr, "HR"), (un_r, uncertainty, "uncertainty")):
            if other is not None and (other.width, other.height) != (sr.width, sr.height):
                raise ValueError(f"SR {sr_path} is {sr.width}x{sr.height} pixels but {what} {path} is "
                                 f"{other.width}x{other.height}; they must match")
        if hr_r is not None and len(hr_r.bands) != len(sr.bands):
            raise ValueError(f"SR {sr_path} has {len(sr.bands)} band(s) but HR {hr} has {len(hr_r.bands)}")
        check_grids(sr, sr_path, [(hr_r, hr, "HR", 1), (un_r, uncertainty, "uncertainty", 1),
                                  (lr_r, lr, "LR", int(scale))])
        if not isinstance(sr, _ArrayReader):
            _rio().check_size(sr.width, sr.height, os.fspath(sr_path))   # the SR command's guard
        return sr, lr_r, hr_r, un_r, int(scale)
    except BaseException:
        for r in readers:
            if r is not None:
                r.close()
        raise


def _trust(sr, lr, hr, unc, scale, pictures, tile) -> dict:
    from ..ops import upsample_bicubic
    from . import trust

    s = scale if lr is not None else 1          # the loop's grid: the LR's, or SR's own without an LR
    gw, gh = (lr.width, lr.height) if lr is not None else (sr.width, sr.height)
    W, H = gw * s, gh * s                       # the SR region scored (an SR cropped to a multiple of s)
    k = 1 << max(0, math.ceil(math.log2(max(H, W) / MAP_SIDE)))   # heat-map cell side, a power of two
    cell = max(CORR_BLOCK, k)
    step = cell // math.gcd(cell, s)            # blocks of whole map cells and whole 16x16 blocks
    block = step * max(1, tile // step)
    lr_sum = lr_sq = lr_max = 0.0
    lr_n = 0
    sam = {"input": [0.0, 0], "reference": [0.0, 0]}
    err_map, unc_map = _Grid(H, W, k), _Grid(H, W, k)
    corr_u, corr_e = _Grid(H, W, CORR_BLOCK), _Grid(H, W, CORR_BLOCK)
    detail = _Grid(H, W, CORR_BLOCK), _Grid(H, W, CORR_BLOCK)     # luminance sums and squares: the crop
    for y in range(0, gh, block):
        for x in range(0, gw, block):
            bw, bh = min(block, gw - x), min(block, gh - y)
            x0, y0 = max(0, x - MARGIN_LR), max(0, y - MARGIN_LR)
            x1, y1 = min(gw, x + bw + MARGIN_LR), min(gh, y + bh + MARGIN_LR)
            oy, ox = y - y0, x - x0
            core = (slice(oy * s, (oy + bh) * s), slice(ox * s, (ox + bw) * s))
            sv, sok = _read0(sr, x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s)
            srv, srok = sv[:, core[0], core[1]], sok[:, core[0], core[1]].all(0)
            if lr is not None:
                lv, lok = _read0(lr, x0, y0, x1 - x0, y1 - y0)
                c = sv.shape[0]
                sr_bad = (~sok).reshape(c, y1 - y0, s, x1 - x0, s).any(axis=(2, 4))
                ok = (lok & ~_reach(sr_bad))[:, oy:oy + bh, ox:ox + bw]
                d = np.abs(trust.degrade(sv, s) - lv)[:, oy:oy + bh, ox:ox + bw][ok]
                if d.size:
                    lr_sum, lr_sq, lr_max = lr_sum + d.sum(), lr_sq + (d * d).sum(), max(lr_max, float(d.max()))
                    lr_n += d.size
                up = upsample_bicubic(torch.from_numpy(lv)[None], s)[0].numpy()[:, core[0], core[1]]
                up_ok = (~_reach(~lok.all(0))).repeat(s, 0).repeat(s, 1)[core]
                _add_angles(sam["input"], trust.angles(srv, up), srok & up_ok)
            if hr is not None:
                hv, hok = _read0(hr, x * s, y * s, bw * s, bh * s)
                both = srok & hok.all(0)
                _add_angles(sam["reference"], trust.angles(srv, hv), both)
                err = np.abs(srv - hv).mean(0)
                err_map.add(x * s, y * s, err, both)
                detail[0].add(x * s, y * s, hv.mean(0), hok.all(0))
                detail[1].add(x * s, y * s, hv.mean(0) ** 2, hok.all(0))
            else:
                detail[0].add(x * s, y * s, srv.mean(0), srok)
                detail[1].add(x * s, y * s, srv.mean(0) ** 2, srok)
            if unc is not None:
                uv, uok = _read0(unc, x * s, y * s, bw * s, bh * s)
                u, uok = uv.mean(0), uok.all(0)
                unc_map.add(x * s, y * s, u, uok)
                if hr is not None:
                    corr_u.add(x * s, y * s, u, uok & both)
                    corr_e.add(x * s, y * s, err, uok & both)

    byte = all(d == np.uint8 for d in (lr if lr is not None else sr).dtypes)
    one_band = len(sr.bands) < 2
    out = {k: None for k in TRUST_KEYS}
    out["unit"] = "grey levels" if byte else "data units"
    notes = []
    if lr is not None:
        if lr_n:
            out.update(lr_mae=lr_sum / lr_n, lr_rmse=math.sqrt(lr_sq / lr_n), lr_max=lr_max)
        else:
            notes.append("no LR pixel is valid together with the SR pixels it reduces: no LR-consistency")
    else:
        notes.append("LR-consistency and the spectral angle to the input need the LR input raster")
    if hr is None:
        notes.append("PSNR, SSIM, LPIPS, the spectral angle to the reference and the error map need a "
                     "reference (HR) raster")
    if one_band:
        notes.append("one band: a spectral angle needs two bands or more")
    for key, (total, n) in sam.items():
        out[f"sam_{key}"] = total / n if n and not one_band else None
    if unc is not None:
        if hr is None:
            notes.append("the uncertainty/error correlation needs a reference (HR) raster")
        else:
            full = (corr_u.n == CORR_BLOCK ** 2) & (corr_e.n == CORR_BLOCK ** 2)
            out["uncertainty_spearman"] = trust.spearman(corr_u.sum[full], corr_e.sum[full])
    out["notes"] = notes
    if pictures:
        out["pictures"] = _pictures(sr, lr, hr, s, W, H, detail, err_map, unc_map, byte, out["unit"])
    return out


def _add_angles(acc, ang, ok):
    keep = ok & np.isfinite(ang)
    acc[0] += float(ang[keep].sum())
    acc[1] += int(keep.sum())


def _robust_max(x: np.ndarray) -> float:
    """The 99th percentile of a map's finite values: a few wild pixels do not wash the ramp out."""
    x = x[np.isfinite(x)]
    v = float(np.percentile(x, 99)) if x.size else 0.0
    return v if v > 0 else (float(x.max()) if x.size and x.max() > 0 else 1.0)


def _crop_place(detail, W, H) -> tuple[int, int, int]:
    """(x, y, side) of the crop: the CROP-square (on the 16-pixel grid) of highest luminance variance in
    the reference (the SR without one), among those with every pixel valid if any is."""
    side = min(CROP, W // CORR_BLOCK * CORR_BLOCK, H // CORR_BLOCK * CORR_BLOCK)
    if side < CORR_BLOCK:
        return 0, 0, min(W, H)
    c = side // CORR_BLOCK

    def window_sums(a):
        a = np.pad(np.cumsum(np.cumsum(a, 0), 1), ((1, 0), (1, 0)))
        return a[c:, c:] - a[:-c, c:] - a[c:, :-c] + a[:-c, :-c]

    s1, s2, n = window_sums(detail[0].sum), window_sums(detail[1].sum), window_sums(detail[0].n)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n > 0, s2 / np.maximum(n, 1) - (s1 / np.maximum(n, 1)) ** 2, -1.0)
    full = n == side * side
    var = np.where(full, var, -1.0) if full.any() else var
    cy, cx = np.unravel_index(int(np.argmax(var)), var.shape)
    return int(cx) * CORR_BLOCK, int(cy) * CORR_BLOCK, side


def _display_order(reader) -> list[int]:
    """Which selected bands the crops show as red, green, blue: by the bands' roles where the raster names
    them (lcmsr.raster.facts: descriptions, colour interpretation, sensor band names), else the first three
    (one band: grey)."""
    first = list(range(min(3, len(reader.bands)))) if len(reader.bands) >= 3 else [0]
    if isinstance(reader, _ArrayReader) or len(reader.bands) < 3:
        return first
    from ..raster.facts import input_facts

    roles = input_facts(reader.path).roles
    mine = [roles[b - 1] if b - 1 < len(roles) else None for b in reader.bands]
    try:
        return [mine.index(r) for r in ("red", "green", "blue")]
    except ValueError:
        return first


def _pictures(sr, lr, hr, s, W, H, detail, err_map, unc_map, byte, unit) -> list[dict]:
    """The report's pictures: the crops side by side (bicubic | SR | reference), the crop's error, and the
    whole-scene error and uncertainty maps, each ramp with its legend."""
    from ..ops import upsample_bicubic
    from . import pictures as pic

    cx, cy, side = _crop_place(detail, W, H)
    where = f"{side}x{side} pixels at x={cx} y={cy}; nodata in cyan"
    crops = []
    if lr is not None:
        lx0, ly0 = max(0, cx // s - MARGIN_LR), max(0, cy // s - MARGIN_LR)
        lx1 = min(lr.width, (cx + side - 1) // s + 1 + MARGIN_LR)
        ly1 = min(lr.height, (cy + side - 1) // s + 1 + MARGIN_LR)
        lv, lok = _read0(lr, lx0, ly0, lx1 - lx0, ly1 - ly0)
        up = upsample_bicubic(torch.from_numpy(lv)[None], s)[0].numpy()
        ok = (~_reach(~lok.all(0))).repeat(s, 0).repeat(s, 1)
        at = (slice(cy - ly0 * s, cy - ly0 * s + side), slice(cx - lx0 * s, cx - lx0 * s + side))
        crops.append(("crop_bicubic", "bicubic (the input enlarged)", up[:, at[0], at[1]], ok[at]))
    v, ok = _read0(sr, cx, cy, side, side)
    crops.append(("crop_sr", "super-resolved", v, ok.all(0)))
    if hr is not None:
        hv, hok = _read0(hr, cx, cy, side, side)
        crops.append(("crop_reference", "reference", hv, hok.all(0)))
    order = _display_order(sr)
    shown = "bands " + ",".join(str(sr.bands[i]) for i in order) + (" as red, green, blue" if len(order) == 3
                                                                   else " in grey")
    lo, hi = pic.display_range(crops[-1][2][order], crops[-1][3], byte)   # the reference's stretch, else SR's
    out = [dict(name=n, title=t, rgb=pic.stretch(a[order], m, lo, hi), group="crops", note=f"{where}; {shown}")
           for n, t, a, m in crops]
    if hr is not None:
        emap = err_map.mean()
        vmax = _robust_max(emap)
        err = np.where(ok.all(0) & hok.all(0), np.abs(v - hv).mean(0), np.nan)
        legend = f"0 (black) to {vmax:.3g} {unit} (pale yellow) and above"
        out.append(dict(name="crop_error", title=f"|SR - reference| ({unit})", group="crops", note=where,
                        legend=legend, rgb=pic.with_legend(pic.ramp(err, vmax), vmax)))
        out.append(dict(name="error_map", title=f"|SR - reference|, mean over bands ({unit})", group="maps",
                        note=f"whole scene, {err_map.k}x{err_map.k}-pixel cells; nodata in cyan", legend=legend,
                        rgb=pic.with_legend(pic.ramp(emap, vmax), vmax)))
    if unc_map.n.any():
        umap = unc_map.mean()
        vmax = _robust_max(umap)
        out.append(dict(name="uncertainty_map", title="uncertainty (spread of the samples)", group="maps",
                        note=f"whole scene, {unc_map.k}x{unc_map.k}-pixel cells; nodata in cyan",
                        legend=f"0 (black) to {vmax:.3g} (pale yellow) and above",
                        rgb=pic.with_legend(pic.ramp(umap, vmax), vmax)))
    return out


# --------------------------------------------------------------------------- one pair, one model
# What `lcmsr eval` and the plugin's evaluate algorithm both run.

def evaluate_pair(sr, hr=None, scale: int | None = None, bands: Sequence[int] | None = None, *, lr=None,
                  lr_bands: Sequence[int] | None = None, uncertainty=None, pictures: bool = False,
                  data_range: float | None = None, lpips: bool = True, device: str | torch.device = "cpu",
                  progress=None) -> dict:
    """Metrics of one SR image: against its HR reference (PSNR / SSIM / LPIPS, two rasters streamed by
    :func:`evaluate_rasters` or two ``.npy`` arrays ``[C, H, W]`` by :func:`evaluate_arrays`, data range as
    for rasters) and the trust metrics of :func:`evaluate_trust` (LR-consistency and the spectral angle to
    the input with ``lr``, to the reference with ``hr``, the uncertainty/error correlation with both
    ``uncertainty`` and ``hr``).  ``hr`` or ``lr`` must be given; without ``hr`` the paper's metrics are
    None and ``notes`` says so.  ``scale``: the SR factor (with ``lr``, None reads it from the sizes).

    With ``progress`` given, missing LPIPS weights are a warning and LPIPS is None; without, they raise
    :class:`~lcmsr.metrics.fetch_weights.MetricWeightsMissing` (whose message says how to get them).
    """
    from .fetch_weights import MetricWeightsMissing

    if hr is None and lr is None:
        raise ValueError(f"nothing to score SR {sr} against: give its reference (HR) raster, its LR input, or both")
    trusted = evaluate_trust(sr, scale, bands, lr=lr, lr_bands=lr_bands, hr=hr, uncertainty=uncertainty,
                             pictures=pictures)
    scale = trusted["scale"]
    result = dict({k: None for k in METRIC_KEYS}, **trusted)
    if hr is None:
        return result
    if lpips and progress is not None:
        try:
            return dict(result, **_paper_pair(sr, hr, scale, bands, data_range, True, device))
        except MetricWeightsMissing as exc:
            progress.warn(f"LPIPS skipped: {exc}")
            lpips = False
    return dict(result, **_paper_pair(sr, hr, scale, bands, data_range, lpips, device))


def _paper_pair(sr, hr, scale, bands, data_range, lpips, device) -> dict:
    sr, hr = Path(sr), Path(hr)
    if sr.suffix.lower() != ".npy" and hr.suffix.lower() != ".npy":
        return evaluate_rasters(sr, hr, scale, bands=bands, data_range=data_range, lpips=lpips, device=device)
    # Arrays saved by numpy; GDAL cannot read them.
    a, b = read_image(sr), read_image(hr)
    if bands:
        a, b = a[[i - 1 for i in bands]], b[[i - 1 for i in bands]]
    if a.shape != b.shape:
        raise ValueError(f"SR {sr} has shape {a.shape} but HR {hr} has {b.shape}; they must match")
    offset = 0.0
    if data_range is None:
        if b.dtype == np.uint8:
            data_range = 255.0
        else:
            offset, data_range = float(b.min()), float(b.max()) - float(b.min())
    return evaluate_arrays(a, b, scale, data_range, lpips, offset=offset, device=device)


def evaluate_model(model, hr, work_dir, bands: Sequence[int] | None = None, *, options=None, lpips: bool = True,
                   pictures: bool = False, device: str | torch.device = "cpu", progress=None,
                   samples: int = 0) -> dict:
    """The paper's protocol on one HR raster: degrade it by the model's scale as training does, super-resolve
    the result with ``model`` (an LCMSR or a model file) and score it against the reference.

    ``bands``: the reference's bands in the model's order (default: all but an alpha band).  ``options``: the
    :class:`~lcmsr.raster.pipeline.SROptions` of the super-resolution (its ``bands`` are set here).
    The LR, SR and bicubic rasters are written into ``work_dir``.  Returns :func:`evaluate_pair`'s dict (the
    trust metrics against that LR and the reference; ``pictures`` as there) plus ``"sr"`` and ``"lr"`` (the
    rasters' paths), ``"scale"``, and ``"bicubic"``: the same metrics of bicubic upsampling of the same LR
    (the baseline every SR paper reports; its raster is ``"bicubic_sr"``).
    ``progress`` as for :func:`evaluate_pair`.  ``samples`` = K > 1 also writes the SR's uncertainty raster
    (the spread of K samples, ``"uncertainty"``) and scores it: its map and its block correlation with the error.
    """
    import dataclasses

    from ..progress import Progress, SubProgress
    from ..raster import io as rio
    from ..raster.bicubic import bicubic_upsample
    from ..raster.degrade import degrade
    from ..raster.pipeline import SROptions, superresolve
    from ..weights import read_info

    progress = progress or Progress()
    scale = int((read_info(model) if isinstance(model, (str, os.PathLike)) else model.info).scale)
    lr, sr, bic, unc = (os.path.join(work_dir, f"{name}.tif") for name in ("lr", "sr", "bicubic", "uncertainty"))
    if not samples:
        unc = None
    elif samples < 2:
        raise ValueError(f"uncertainty samples must be at least 2 (a spread needs two draws), got {samples}")
    check_outputs([(f"the {name} raster", path) for name, path in (("LR", lr), ("SR", sr), ("bicubic", bic),
                                                                     ("uncertainty", unc)) if path]
                  + [("the band subset", os.path.join(work_dir, "reference.vrt"))],
                  [("the reference raster", hr), ("the model file", model if isinstance(model, (str, os.PathLike))
                                                   else getattr(model, "source_path", None))])
    os.makedirs(work_dir, exist_ok=True)
    ds = rio.open_raster(hr)
    bands, count = rio.select_bands(ds, bands, os.fspath(hr)), ds.RasterCount
    ds = None
    progress.info(f"Degrading {hr} x{scale} into {lr}")
    # The LR holds the chosen bands in model order, so the SR has them in that order too ...
    degrade(hr, lr, scale, SubProgress(progress, 0.0, 0.1), bands=bands)
    progress.info(f"Super-resolving into {sr}")
    options = dataclasses.replace(options or SROptions(), bands=None)
    if unc:
        options = dataclasses.replace(options, uncertainty=unc, samples=samples)
    superresolve(lr, sr, model, options, SubProgress(progress, 0.1, 0.85))
    progress.info(f"Bicubic baseline into {bic}")
    bicubic_upsample(lr, bic, scale, SubProgress(progress, 0.85, 0.9))
    # ... and it is scored against those bands of the reference, in that order.
    reference = hr if bands == list(range(1, count + 1)) else rio.band_subset(
        hr, os.path.join(work_dir, "reference.vrt"), bands)
    progress.check()
    progress.report(0.9, "scoring")
    # The trust metrics against the LR the model saw (the degraded reference, in its data type).
    result = evaluate_pair(sr, reference, scale, lr=lr, uncertainty=unc, pictures=pictures, lpips=lpips,
                           device=device, progress=progress)
    # Scored like the SR; LPIPS only if the SR got one (missing weights warn once, not twice).
    baseline = evaluate_pair(bic, reference, scale, lr=lr, lpips=result["lpips"] is not None, device=device)
    progress.report(1.0, "done")
    return dict(result, sr=sr, lr=lr, scale=scale, bicubic={k: baseline[k] for k in METRIC_KEYS + TRUST_KEYS},
                bicubic_sr=bic, uncertainty=unc)


# --------------------------------------------------------------------------- report

def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4f}"
    if value is None:
        return "–"
    return html.escape(str(value))


_EXPLAINED = {
    "psnr": "PSNR / SSIM / LPIPS against the reference (border of <i>scale</i> pixels cropped for PSNR and SSIM)",
    "lr_mae": "lr_mae / lr_rmse / lr_max: |degrade(SR) - LR input| with the project's antialiased bicubic, "
              "in the input's units (grey levels for 8-bit): 0 when the result keeps the input's radiometry",
    "sam_input": "sam_input: mean spectral angle (degrees) between SR and the bicubic-enlarged input: how much "
                 "SR changed the input's colours",
    "sam_reference": "sam_reference: mean spectral angle (degrees) between SR and the reference",
    "uncertainty_spearman": "uncertainty_spearman: Spearman correlation of per-16x16-block uncertainty with "
                            "per-block |SR - reference|: above 0.3 the uncertainty map points at the errors",
}


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)) or "image"


# Every picture a report can hold (evaluate_trust's ``pictures``): each is also written beside the report.
PICTURE_NAMES = ("crop_bicubic", "crop_sr", "crop_reference", "crop_error", "error_map", "uncertainty_map")


def picture_path(report, section: str, name: str) -> Path:
    """Where :func:`write_html_report` writes picture ``name`` of ``section`` ("" for a one-image report):
    ``<report stem>_<section>_<name>.png`` beside the report."""
    report = Path(report)
    return report.parent / ("_".join(_safe_name(t) for t in (report.stem, section, name) if t) + ".png")


def report_outputs(report, sections=("",), what: str = "the report") -> list[tuple[str, str]]:
    """The report and every picture file it may write beside it (for ``sections``, the images it covers), as
    ``(what, path)`` outputs for :func:`lcmsr.paths.check_outputs`: declared before any work, so no
    picture replaces an input."""
    if not report:
        return []
    out = [(what, os.fspath(report))]
    for section in dict.fromkeys(sections or ("",)):
        out += [(f"a picture of {what}", os.fspath(picture_path(report, section, name))) for name in PICTURE_NAMES]
    return out


def write_html_report(path, results: dict, title: str, pictures=None, notes=None, inputs=()) -> Path:
    """A self-contained HTML table (no scripts, no external files), written atomically.

    ``results`` is either one row ``{"psnr": .., "ssim": ..}`` or named rows
    ``{"scene_1": {...}, "mean": {...}}``; columns are the union of row keys,
    the paper's metrics first, then the trust metrics.  ``pictures``: a list of pictures
    (``{"name", "title", "rgb": [H, W, 3] uint8, "group": "crops"|"maps", "note", "legend"}``, as
    :func:`evaluate_trust` makes them) or ``{section: list}`` (one section per image): each is
    embedded in the page as a PNG and also written beside it as ``<report>_<section>_<name>.png``.
    ``notes``: lines shown under the table (what could not be measured, and why).  ``inputs``: ``(what,
    path)`` pairs none of the report's files may be (:func:`report_outputs`); checked before anything is
    written.
    """
    from .pictures import png_bytes

    check_file_output(path, "the report")
    sections = pictures if isinstance(pictures, dict) else {"": pictures or []}
    check_outputs(report_outputs(path, list(sections)), inputs)

    rows = results if results and all(isinstance(v, dict) for v in results.values()) else {"result": results}
    order = METRIC_KEYS + TRUST_KEYS
    # A trust metric no row could measure is left out (the notes say why); the paper's columns always show.
    cols = [k for k in order if any(k in r for r in rows.values())
            and (k in METRIC_KEYS or any(r.get(k) is not None for r in rows.values()))]
    cols += sorted({k for r in rows.values() for k in r} - set(order))
    arrows = {"psnr": " (dB, ↑)", "ssim": " (↑)", "lpips": " (↓)", "fid": " (↓)", "lr_mae": " (↓)",
              "lr_rmse": " (↓)", "lr_max": " (↓)", "sam_input": " (°)", "sam_reference": " (°, ↓)",
              "uncertainty_spearman": " (↑)"}
    head = "".join(f"<th>{html.escape(c)}{arrows.get(c, '')}</th>" for c in cols)
    body = "\n".join(
        f"<tr><th>{html.escape(str(name))}</th>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
        for name, r in rows.items())
    explained = "".join(f"<li>{text}</li>" for key, text in _EXPLAINED.items() if key in cols)
    notes_html = "".join(f"<li>{html.escape(str(n))}</li>" for n in dict.fromkeys(notes or []))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = []
    for section, pics in sections.items():
        if not pics:
            continue
        if section:
            figures.append(f"<h2>{html.escape(str(section))}</h2>")
        for group in dict.fromkeys(p.get("group", "") for p in pics):
            cells = []
            for p in (p for p in pics if p.get("group", "") == group):
                data = png_bytes(p["rgb"])
                name = picture_path(path, section, p["name"]).name
                with AtomicPath(path.parent / name) as tmp:
                    Path(tmp).write_bytes(data)
                h, w = p["rgb"].shape[:2]
                zoom = 2 if group == "crops" else 1
                caption = "<br>".join(html.escape(str(t)) for t in (p.get("title"), p.get("note"), p.get("legend"))
                                      if t)
                cells.append(f'<figure><img alt="{html.escape(p["name"])}" width="{w * zoom}" height="{h * zoom}" '
                             f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                             f"<figcaption>{caption}<br><small>{html.escape(name)}</small></figcaption></figure>")
            figures.append(f'<div class="row">{"".join(cells)}</div>')
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
th,td{{border:1px solid #bbb;padding:.3em .8em;text-align:right}}thead th{{background:#eee}}
.row{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}}figure{{margin:0}}
img{{image-rendering:pixelated;border:1px solid #bbb}}figcaption{{font-size:90%;max-width:30em}}</style>
</head><body><h1>{html.escape(title)}</h1>
<table><thead><tr><th></th>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
{f"<ul class=notes>{notes_html}</ul>" if notes_html else ""}
{f"<ul>{explained}</ul>" if explained else ""}
{chr(10).join(figures)}
</body></html>
"""
    with AtomicPath(path) as tmp:
        Path(tmp).write_text(doc, encoding="utf-8")
    return path
