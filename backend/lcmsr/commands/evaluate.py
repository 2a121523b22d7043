"""`lcmsr eval`: PSNR / SSIM / LPIPS (and FID) of SR results against HR references.

``--sr`` and ``--hr`` are two rasters, or two folders whose images are paired by
file name (the paper's protocol: per-image metrics averaged over the test set,
FID between the two folders).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._args import bands as _bands


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="PSNR / SSIM / LPIPS / FID of SR against HR",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--sr", required=True, help="SR raster, or folder of SR images")
    p.add_argument("--hr", required=True, help="HR raster, or folder of HR images with the same file names")
    p.add_argument("--scale", type=int, default=4, help="SR factor = border crop in pixels for PSNR/SSIM (default 4)")
    p.add_argument("--bands", type=_bands, default=None,
                   help="1-based bands to compare, e.g. 1,2,3 (default: all but alpha bands)")
    p.add_argument("--data-range", type=float, default=None,
                   help="peak value range (default: 255 for 8-bit, else the min-max range of HR's valid "
                        "values); nodata pixels of SR or HR rasters are left out of every metric")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--fid", action="store_true", help="also FID between the two folders (needs fetch_weights --fid)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] for LPIPS/FID (default auto)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--html", default=None, help="write a small HTML report to this file")
    p.set_defaults(func=run)


def _pairs(sr_dir: Path, hr_dir: Path) -> list[tuple[Path, Path]]:
    from lcmsr.metrics.fid import list_images

    sr = {p.stem: p for p in list_images(sr_dir)}
    hr = {p.stem: p for p in list_images(hr_dir)}
    common = sorted(sr.keys() & hr.keys())
    if not common:
        raise ValueError(f"no image in {sr_dir} has a namesake in {hr_dir}")
    missing = sorted(hr.keys() - sr.keys())
    if missing:
        raise ValueError(f"{len(missing)} HR image(s) have no SR result in {sr_dir}, e.g. {missing[0]}")
    return [(sr[k], hr[k]) for k in common]


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _finite(obj):
    # Strict JSON has no Infinity: the PSNR of identical images is written as null.
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _evaluate_pair(sr: Path, hr: Path, scale: int, bands, data_range, lpips: bool, device) -> dict:
    from lcmsr.metrics.evaluate import evaluate_arrays, evaluate_rasters, read_image

    if sr.suffix.lower() != ".npy" and hr.suffix.lower() != ".npy":
        return evaluate_rasters(sr, hr, scale, bands=bands, data_range=data_range, lpips=lpips, device=device)
    # Arrays saved by numpy ([C, H, W]); GDAL cannot read them.
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


def run(args) -> int:
    from lcmsr.device import resolve_device
    from lcmsr.metrics.evaluate import METRIC_KEYS, write_html_report

    device = resolve_device(args.device).device
    bands = args.bands
    sr, hr = Path(args.sr), Path(args.hr)
    for p, what in ((sr, "--sr"), (hr, "--hr")):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    if sr.is_dir() != hr.is_dir():
        raise ValueError("--sr and --hr must both be rasters or both be folders")
    kw = dict(bands=bands, data_range=args.data_range, lpips=not args.no_lpips, device=device)

    if sr.is_dir():
        rows = {}
        for s, h in _pairs(sr, hr):
            r = _evaluate_pair(s, h, args.scale, **kw)
            rows[h.stem] = {k: r[k] for k in METRIC_KEYS}
        mean = {k: (sum(r[k] for r in rows.values()) / len(rows) if rows[next(iter(rows))][k] is not None else None)
                for k in METRIC_KEYS}
        if args.fid:
            from lcmsr.metrics.fid import fid

            mean["fid"] = fid(sr, hr, data_range=args.data_range or 255.0, device=device)
        rows["mean"] = mean
        summary = mean
    else:
        if args.fid:
            raise ValueError("--fid compares two sets of images: give folders for --sr and --hr")
        r = _evaluate_pair(sr, hr, args.scale, **kw)
        summary = {k: r[k] for k in METRIC_KEYS}
        rows = {sr.name: summary}

    for name, r in rows.items():
        print(f"{name}: " + "  ".join(f"{k.upper()} {_show(v)}" for k, v in r.items()))
    out = {"sr": str(sr), "hr": str(hr), "scale": args.scale, "bands": bands, "results": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_finite(out), indent=2, allow_nan=False) + "\n")
    if args.html:
        write_html_report(args.html, rows, f"LCMSR evaluation: {sr.name} vs {hr.name}")
    return 0
