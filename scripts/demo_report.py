#!/usr/bin/env python3
"""Report for `make demo`: bicubic | LCMSR | reference side by side, and the figures against the reference."""
import argparse
import json
import sys

import numpy as np
import torch
from osgeo import gdal

from lcmsr.metrics.evaluate import evaluate_arrays
from lcmsr.ops import upsample_bicubic

gdal.UseExceptions()


def read(path):
    ds = gdal.Open(path)
    return ds.ReadAsArray().astype(np.float32).reshape(ds.RasterCount, ds.RasterYSize, ds.RasterXSize)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lr", required=True)
    p.add_argument("--sr", required=True)
    p.add_argument("--hr", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--json")
    p.add_argument("--milliseconds", type=float, default=float("nan"))
    a = p.parse_args(argv)
    lr, sr, hr = read(a.lr), read(a.sr), read(a.hr)
    scale = hr.shape[1] // lr.shape[1]
    bicubic = upsample_bicubic(torch.from_numpy(lr)[None], scale)[0].clamp(0, 255).round().numpy()
    h, w = hr.shape[1:]
    bicubic, sr = bicubic[:, :h, :w], sr[:, :h, :w]
    rows = {}
    # The sampler that ran, from the output's provenance (the model's default unless one was chosen).
    meta = gdal.Open(a.sr).GetMetadata() or {}
    sampler, steps = meta.get("LCMSR_SAMPLER", "?"), meta.get("LCMSR_STEPS", "?")
    label = f"LCMSR ({sampler})" if sampler == "faithful" else f"LCMSR ({steps} step{'s' * (steps != '1')})"
    for name, img in (("bicubic", bicubic), (label, sr)):
        rows[name] = evaluate_arrays(img, hr, scale=scale, data_range=255.0)
    gap = np.full((3, h, 8), 255, np.float32)
    panel = np.concatenate([bicubic, gap, sr, gap, hr], axis=2).clip(0, 255).astype(np.uint8)
    mem = gdal.GetDriverByName("MEM").Create("", panel.shape[2], panel.shape[1], 3, gdal.GDT_Byte)
    for b in range(3):
        mem.GetRasterBand(b + 1).WriteArray(panel[b])
    gdal.GetDriverByName("PNG").CreateCopy(a.png, mem)
    print(f"\nLCMSR demo: {a.lr} ({lr.shape[2]}x{lr.shape[1]}) -> {a.sr} ({sr.shape[2]}x{sr.shape[1]}), x{scale}")
    print(f"time (qgis_process, end to end): {a.milliseconds / 1000:.1f} s")
    print(f"{'':16s} {'PSNR dB':>8s} {'SSIM':>7s} {'LPIPS':>7s}")
    for name, r in rows.items():
        lp = r.get("lpips")
        print(f"{name:16s} {r['psnr']:8.2f} {r['ssim']:7.4f} {lp if lp is None else f'{lp:7.4f}'}")
    print(f"side by side (bicubic | LCMSR | reference): {a.png}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"seconds": a.milliseconds / 1000, "metrics": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
