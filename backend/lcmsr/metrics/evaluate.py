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

import html
import importlib.util
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import AtomicPath
from ..paths import check_outputs
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


def _evaluate_readers(sr, hr, sr_path, hr_path, scale, data_range, lpips, device, tile) -> dict:
    if (sr.width, sr.height) != (hr.width, hr.height):
        raise ValueError(f"SR {sr_path} is {sr.width}x{sr.height} pixels but HR {hr_path} is "
                         f"{hr.width}x{hr.height}; they must match")
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
    The LR, SR and bicubic rasters are written into ``work_dir``.  Returns :func:`evaluate_pair`'s dict plus
    ``"sr"`` (the SR raster's path), ``"scale"``, and ``"bicubic"``: the same metrics of bicubic upsampling
    of the same LR (the baseline every SR paper reports; its raster is ``"bicubic_sr"``).
    ``progress`` as for :func:`evaluate_pair`.
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
    lr, sr, bic = (os.path.join(work_dir, f"{name}.tif") for name in ("lr", "sr", "bicubic"))
    check_outputs([(f"the {name} raster", path) for name, path in (("LR", lr), ("SR", sr), ("bicubic", bic))]
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
    superresolve(lr, sr, model, options, SubProgress(progress, 0.1, 0.85))
    progress.info(f"Bicubic baseline into {bic}")
    bicubic_upsample(lr, bic, scale, SubProgress(progress, 0.85, 0.9))
    # ... and it is scored against those bands of the reference, in that order.
    reference = hr if bands == list(range(1, count + 1)) else rio.band_subset(
        hr, os.path.join(work_dir, "reference.vrt"), bands)
    progress.check()
    progress.report(0.9, "scoring")
    result = evaluate_pair(sr, reference, scale, lpips=lpips, device=device, progress=progress)
    # Scored like the SR; LPIPS only if the SR got one (missing weights warn once, not twice).
    baseline = evaluate_pair(bic, reference, scale, lpips=result["lpips"] is not None, device=device)
    progress.report(1.0, "done")
    return dict(result, sr=sr, scale=scale, bicubic={k: baseline[k] for k in METRIC_KEYS}, bicubic_sr=bic)


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
    with AtomicPath(path) as tmp:
        Path(tmp).write_text(doc, encoding="utf-8")
    return path
