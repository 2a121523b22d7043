"""Score an SR result against its HR reference the way the paper does.

PSNR / SSIM with a border crop of ``scale`` pixels over all (selected) bands,
LPIPS (AlexNet v0.1) on the uncropped image.  ``evaluate_arrays`` works on
in-memory images; ``evaluate_rasters`` streams two rasters tile by tile so a
large scene never has to fit in memory; ``write_html_report`` writes a small
self-contained table.

GDAL is imported lazily inside the raster readers only, so this module (and
``evaluate_arrays``) runs on machines without GDAL.
"""
from __future__ import annotations

import html
import importlib.util
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

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

def _gdal():
    """GDAL as the raster package uses it: the process-wide exception mode is left as the host set it
    (QGIS shares it), so every call goes through lcmsr.raster.io, which works in either mode."""
    try:
        from osgeo import gdal  # lazy: only raster evaluation needs GDAL
    except ImportError as exc:
        raise RuntimeError("reading rasters needs GDAL (python3-gdal / osgeo), which is not importable here; "
                           "use evaluate_arrays on arrays, or .npy images") from exc
    return gdal


def _open(path, what: str):
    _gdal()
    from ..raster import io as rio

    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} raster {path} does not exist")
    try:
        return rio.open_raster(path)
    except rio.RasterError as exc:
        raise ValueError(f"{what} raster {exc}") from None


def _check_bands(ds, path, bands: Sequence[int] | None) -> list[int]:
    n = ds.RasterCount
    bands = list(bands) if bands else list(range(1, n + 1))
    for b in bands:
        if not 1 <= int(b) <= n:
            raise ValueError(f"{path} has {n} bands; band {b} does not exist (bands are numbered from 1)")
    return [int(b) for b in bands]


def _read(ds, bands: list[int], x: int, y: int, w: int, h: int) -> np.ndarray:
    from ..raster import io as rio

    where = f"reading window x={x} y={y} {w}x{h} of {ds.GetDescription()}"
    return np.stack([rio._call(where, ds.GetRasterBand(b).ReadAsArray, x, y, w, h) for b in bands]
                    ).astype(np.float64)


def _tiles(start: int, stop: int, tile: int):
    # Pixel blocks [p0, p1) partition [start, stop); each read reaches SSIM_WINDOW - 1
    # pixels further so the valid 11x11 windows of successive tiles partition the
    # image's windows exactly (whole-image SSIM, not a mean of tile SSIMs).
    for p0 in range(start, stop, tile):
        yield p0, min(p0 + tile, stop), min(p0 + tile + SSIM_WINDOW - 1, stop)


def evaluate_rasters(sr_path, hr_path, scale: int, bands: Sequence[int] | None = None, *,
                     data_range: float | None = None, lpips: bool = True,
                     device: str | torch.device = "cpu", tile: int = DEFAULT_TILE) -> dict:
    """Metrics of an SR raster against an HR raster of the same size (1-based ``bands``).

    ``data_range``: 255 for Byte rasters; for other types the HR range
    (max - min over the selected bands), unless given.  PSNR and SSIM are exact
    whole-image values even when read tile by tile; LPIPS is the area-weighted
    mean of per-tile LPIPS when the raster is larger than one ``tile``.
    Returns ``psnr``, ``ssim``, ``lpips`` (None when off) plus ``data_range``,
    ``bands``, ``width``, ``height``.
    """
    sr_ds, hr_ds = _open(sr_path, "SR"), _open(hr_path, "HR")
    if (sr_ds.RasterXSize, sr_ds.RasterYSize) != (hr_ds.RasterXSize, hr_ds.RasterYSize):
        raise ValueError(f"SR {sr_path} is {sr_ds.RasterXSize}x{sr_ds.RasterYSize} pixels but HR {hr_path} is "
                         f"{hr_ds.RasterXSize}x{hr_ds.RasterYSize}; they must match")
    b_hr = _check_bands(hr_ds, hr_path, bands)
    b_sr = _check_bands(sr_ds, sr_path, bands)
    if len(b_sr) != len(b_hr) or (bands is None and sr_ds.RasterCount != hr_ds.RasterCount):
        raise ValueError(f"SR {sr_path} has {sr_ds.RasterCount} bands but HR {hr_path} has {hr_ds.RasterCount}; "
                         f"pass bands= to compare a selection")
    w, h = hr_ds.RasterXSize, hr_ds.RasterYSize
    if h <= 2 * scale + SSIM_WINDOW - 1 or w <= 2 * scale + SSIM_WINDOW - 1:
        raise ValueError(f"{hr_path} ({w}x{h}) is too small for a {scale}-pixel border crop and 11x11 SSIM windows")

    gdal = _gdal()
    offset = 0.0
    if data_range is None:
        if hr_ds.GetRasterBand(b_hr[0]).DataType == gdal.GDT_Byte:
            data_range = 255.0
        else:
            mins, maxs = zip(*(hr_ds.GetRasterBand(b).ComputeRasterMinMax(False) for b in b_hr))
            offset, data_range = float(min(mins)), float(max(maxs) - min(mins))
            if data_range <= 0:
                raise ValueError(f"HR {hr_path} is constant (value {offset}); give data_range explicitly")

    from .lpips import MIN_LPIPS_SIZE, get_lpips

    net = get_lpips(device) if lpips else None
    sq_err, n_px = 0.0, 0
    ssim_sum, n_win = 0.0, 0
    lp_sum, lp_area = 0.0, 0
    tile = max(int(tile), SSIM_WINDOW + 1)
    # PSNR/SSIM on the border-cropped region, LPIPS on the whole image (see module doc).
    for y0, y1, y2 in _tiles(scale, h - scale, tile):
        for x0, x1, x2 in _tiles(scale, w - scale, tile):
            a = _read(sr_ds, b_sr, x0, y0, x2 - x0, y2 - y0)
            b = _read(hr_ds, b_hr, x0, y0, x2 - x0, y2 - y0)
            sq_err += float(((a[:, :y1 - y0, :x1 - x0] - b[:, :y1 - y0, :x1 - x0]) ** 2).sum())
            n_px += a.shape[0] * (y1 - y0) * (x1 - x0)
            if a.shape[1] >= SSIM_WINDOW and a.shape[2] >= SSIM_WINDOW:
                m = ssim_map(torch.from_numpy(a), torch.from_numpy(b), data_range)
                ssim_sum += float(m.mean(dim=1).sum())
                n_win += m.shape[-2] * m.shape[-1]
    if net is not None:
        for y0, y1, _ in _tiles(0, h, tile):
            for x0, x1, _ in _tiles(0, w, tile):
                if min(y1 - y0, x1 - x0) < MIN_LPIPS_SIZE:
                    continue  # a sliver at the edge: too small for AlexNet, carries little area
                a = torch.from_numpy(_read(sr_ds, b_sr, x0, y0, x1 - x0, y1 - y0))[None]
                b = torch.from_numpy(_read(hr_ds, b_hr, x0, y0, x1 - x0, y1 - y0))[None]
                with torch.no_grad():
                    d = net(_to_model_space(a, data_range, offset).to(device),
                            _to_model_space(b, data_range, offset).to(device))
                area = (y1 - y0) * (x1 - x0)
                lp_sum += float(d.mean()) * area
                lp_area += area
    return {"psnr": psnr_from_mse(sq_err / n_px, data_range),
            "ssim": ssim_sum / n_win,
            "lpips": lp_sum / lp_area if net is not None else None,
            "data_range": data_range, "bands": b_hr, "width": w, "height": h}


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
    from ..raster import io as rio

    ds = _open(path, "image")
    # In the file's own data type (callers tell 8-bit from other data by it).
    return np.stack([rio._call(f"reading band {b} of {path}", ds.GetRasterBand(b).ReadAsArray)
                     for b in range(1, ds.RasterCount + 1)])


# --------------------------------------------------------------------------- one pair, one model
# What `lcmsr eval` and the plugin's evaluate algorithm both run.

def evaluate_pair(sr, hr, scale: int, bands: Sequence[int] | None = None, *, data_range: float | None = None,
                  lpips: bool = True, device: str | torch.device = "cpu", progress=None) -> dict:
    """Metrics of one SR image against its HR reference: two rasters (streamed, :func:`evaluate_rasters`)
    or two ``.npy`` arrays ``[C, H, W]`` (:func:`evaluate_arrays`; data range as for rasters).

    With ``progress`` given, missing LPIPS weights are a warning and LPIPS is None; without, they raise
    :class:`~lcmsr.metrics.fetch_weights.MetricWeightsMissing` (whose message says how to get them).
    """
    from .fetch_weights import MetricWeightsMissing

    if lpips and progress is not None:
        try:
            return evaluate_pair(sr, hr, scale, bands, data_range=data_range, lpips=True, device=device)
        except MetricWeightsMissing as exc:
            progress.warn(f"LPIPS skipped: {exc}")
            lpips = False
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
                   device: str | torch.device = "cpu", progress=None) -> dict:
    """The paper's protocol on one HR raster: degrade it by the model's scale as training does, super-resolve
    the result with ``model`` (an LCMSR or a model file) and score it against the reference.

    ``bands``: the reference's bands in the model's order (default: all but an alpha band).  ``options``: the
    :class:`~lcmsr.raster.pipeline.SROptions` of the super-resolution (its ``bands`` are set here).
    The LR and SR rasters are written into ``work_dir``.  Returns :func:`evaluate_pair`'s dict plus
    ``"sr"`` (the SR raster's path) and ``"scale"``.  ``progress`` as for :func:`evaluate_pair`.
    """
    import dataclasses

    from ..progress import Progress, SubProgress
    from ..raster import io as rio
    from ..raster.degrade import degrade
    from ..raster.pipeline import SROptions, superresolve
    from ..weights import read_info

    progress = progress or Progress()
    scale = int((read_info(model) if isinstance(model, (str, os.PathLike)) else model.info).scale)
    os.makedirs(work_dir, exist_ok=True)
    lr, sr = os.path.join(work_dir, "lr.tif"), os.path.join(work_dir, "sr.tif")
    ds = rio.open_raster(hr)
    bands, count = rio.select_bands(ds, bands, os.fspath(hr)), ds.RasterCount
    ds = None
    progress.info(f"Degrading {hr} x{scale} into {lr}")
    # The LR holds the chosen bands in model order, so the SR has them in that order too ...
    degrade(hr, lr, scale, SubProgress(progress, 0.0, 0.1), bands=bands)
    progress.info(f"Super-resolving into {sr}")
    options = dataclasses.replace(options or SROptions(), bands=None)
    superresolve(lr, sr, model, options, SubProgress(progress, 0.1, 0.9))
    # ... and it is scored against those bands of the reference, in that order.
    reference = hr if bands == list(range(1, count + 1)) else rio.band_subset(
        hr, os.path.join(work_dir, "reference.vrt"), bands)
    progress.check()
    progress.report(0.9, "scoring")
    result = evaluate_pair(sr, reference, scale, lpips=lpips, device=device, progress=progress)
    progress.report(1.0, "done")
    return dict(result, sr=sr, scale=scale)


# --------------------------------------------------------------------------- report

def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4f}"
    if value is None:
        return "–"
    return html.escape(str(value))


def write_html_report(path, results: dict, title: str) -> Path:
    """A self-contained HTML table (no scripts, no external files), written atomically.

    ``results`` is either one row ``{"psnr": .., "ssim": ..}`` or named rows
    ``{"scene_1": {...}, "mean": {...}}``; columns are the union of row keys,
    the paper's metrics first.
    """
    rows = results if results and all(isinstance(v, dict) for v in results.values()) else {"result": results}
    cols = [k for k in METRIC_KEYS if any(k in r for r in rows.values())]
    cols += sorted({k for r in rows.values() for k in r} - set(cols))
    arrows = {"psnr": " (dB, ↑)", "ssim": " (↑)", "lpips": " (↓)", "fid": " (↓)"}
    head = "".join(f"<th>{html.escape(c)}{arrows.get(c, '')}</th>" for c in cols)
    body = "\n".join(
        f"<tr><th>{html.escape(str(name))}</th>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
        for name, r in rows.items())
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
th,td{{border:1px solid #bbb;padding:.3em .8em;text-align:right}}thead th{{background:#eee}}</style>
</head><body><h1>{html.escape(title)}</h1>
<table><thead><tr><th></th>{head}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(doc)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
