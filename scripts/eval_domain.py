#!/usr/bin/env python3
"""Evaluate models the way a user meets them: through the real pipeline, on GeoTIFF scenes.

Each HR raster is degraded x4 with ``lcmsr degrade`` (antialiased bicubic, georeferencing kept),
then super-resolved by ``lcmsr.raster.pipeline.superresolve`` with the one-step sampler and the
faithful sampler -- with ``--model M``, or with no model so the automatic choice and the domain
guard decide (``--auto``) -- and compared with the HR raster and with bicubic.

Metrics are on each band stretched by the HR band's 1st/99th percentiles to [0, 1] (PSNR with
that peak, SSIM, border crop = scale), so 8-bit, 16-bit and float scenes are comparable; LPIPS
(AlexNet) on the red/green/blue composite when the written bands have those roles, else the mean
over bands shown as grey.  A scene the guard refuses is reported as refused, with its line.

  .venv/bin/python scripts/eval_domain.py --auto data/heldout/*.tif [--markdown out.md] [--json out.json]
  .venv/bin/python scripts/eval_domain.py --model M.safetensors data/val/... [--crop 512]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal

from lcmsr.domain import DomainError
from lcmsr.metrics.evaluate import evaluate_arrays
from lcmsr.ops import upsample_bicubic
from lcmsr.raster.degrade import degrade
from lcmsr.raster.facts import input_facts
from lcmsr.raster.pipeline import SROptions, superresolve

gdal.UseExceptions()
SCALE = 4
METHODS = (("one step", "consistency"), ("faithful", "faithful"))


def read(path, bands=None) -> np.ndarray:
    ds = gdal.Open(str(path))
    bands = bands or list(range(1, ds.RasterCount + 1))
    return np.stack([ds.GetRasterBand(b).ReadAsArray().astype(np.float64) for b in bands])


def crop_copy(src: str, dst: Path, crop: int | None) -> str:
    """The centre ``crop`` x ``crop`` of ``src`` (a multiple of the scale), georeferencing kept."""
    ds = gdal.Open(src)
    w, h = ds.RasterXSize, ds.RasterYSize
    cw, ch = (min(crop, w), min(crop, h)) if crop else (w, h)
    cw, ch = cw // SCALE * SCALE, ch // SCALE * SCALE
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    gdal.Translate(str(dst), ds, srcWin=[x0, y0, cw, ch], creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    return str(dst)


def stretch(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        r = ref[i][np.isfinite(ref[i])]
        lo, hi = np.percentile(r, [1, 99])
        out[i] = (a[i] - lo) / max(hi - lo, 1e-9)
    return out


def metrics(sr: np.ndarray, hr: np.ndarray, roles: list) -> dict:
    s, h = stretch(sr, hr), stretch(hr, hr)
    m = evaluate_arrays(s, h, scale=SCALE, data_range=1.0, lpips=False)
    rgb = [roles.index(r) for r in ("red", "green", "blue") if r in roles]
    if len(rgb) == 3:
        views = [(s[rgb], h[rgb])]
    else:
        views = [(np.repeat(s[i:i + 1], 3, 0), np.repeat(h[i:i + 1], 3, 0)) for i in range(s.shape[0])]
    m["lpips"] = float(np.mean([evaluate_arrays(a, b, scale=SCALE, data_range=1.0)["lpips"] for a, b in views]))
    return m


def evaluate(path: str, model: str | None, work: Path, crop: int | None) -> dict:
    name = Path(path).name
    hr_path = crop_copy(path, work / f"hr_{Path(path).stem}.tif", crop)
    lr_path = str(work / f"{Path(path).stem}_lr.tif")
    degrade(hr_path, lr_path, SCALE)
    facts = input_facts(lr_path)
    row: dict = {"scene": name, "input": facts.describe()}
    try:
        for label, sampler in METHODS:
            out = str(work / f"{Path(path).stem}_{sampler}.tif")
            t0 = time.perf_counter()
            res = superresolve(lr_path, out, model, SROptions(sampler=sampler))
            row[f"{label} seconds"] = time.perf_counter() - t0
            hr = read(hr_path, res.bands)
            row[label] = metrics(read(out), hr, [facts.roles[b - 1] for b in res.bands])
            row["model"], row["bands"] = Path(res.model).name if res.model else model, res.bands
            row["warnings"] = res.warnings
    except DomainError as exc:
        row["refused"] = " / ".join(line.strip() for line in str(exc).splitlines())
        return row
    lr = torch.from_numpy(read(lr_path, row["bands"]))[None]
    bic = upsample_bicubic(lr, SCALE)[0].numpy()
    row["bicubic"] = metrics(bic, read(hr_path, row["bands"]), [facts.roles[b - 1] for b in row["bands"]])
    return row


def table(rows: list[dict]) -> str:
    out = ["| scene (LR input) | model | bicubic PSNR / LPIPS | one step: dPSNR, LPIPS ratio | faithful: dPSNR, "
           "LPIPS ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['scene']} | refused: {r['refused']} | | | |")
            continue
        b = r["bicubic"]
        cells = [f"{r[k]['psnr'] - b['psnr']:+.2f} dB, x{r[k]['lpips'] / b['lpips']:.2f}" for k, _ in METHODS]
        out.append(f"| {r['scene']} | {r['model']} | {b['psnr']:.2f} dB / {b['lpips']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rasters", nargs="+", help="HR rasters (GDAL paths)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="model file")
    g.add_argument("--auto", action="store_true", help="no model: the automatic choice and the guard decide")
    p.add_argument("--crop", type=int, default=None, help="evaluate the centre CROP x CROP pixels of each HR raster")
    p.add_argument("--markdown")
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lcmsr-eval-") as tmp:
        for path in a.rasters:
            rows.append(evaluate(path, None if a.auto else a.model, Path(tmp), a.crop))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "warnings"}), flush=True)
    text = table(rows)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
