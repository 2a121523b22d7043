#!/usr/bin/env python3
"""A reference point for the model card: the best *linear* x4 upsampler for this data.

Fits, by least squares on the training tile (minus the demo window, as the model is
trained), what bicubic misses: for every band and each of the scale² output phases, a
linear function of the KxK LR neighbourhood of all bands.  Then scores it on the
validation images exactly as `scripts/eval_model.py` scores the model (LR = the
project's antialiased bicubic x4, rounded to 8 bits; PSNR on RGB, border crop 4).

It answers "how much above bicubic is there to gain here with no learning beyond a
filter?" — a floor any trained network must clear.

  .venv/bin/python scripts/linear_baseline.py data/val/* [--taps 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_model import read_rgb  # noqa: E402
from training_split import training_pieces  # noqa: E402

from lcmsr.metrics.evaluate import evaluate_arrays  # noqa: E402
from lcmsr.ops import downsample_bicubic, upsample_bicubic  # noqa: E402

SCALE = 4


def pairs(hr: np.ndarray):
    h, w = hr.shape[1] // SCALE * SCALE, hr.shape[2] // SCALE * SCALE
    hr = hr[:, :h, :w]
    lr = downsample_bicubic(torch.from_numpy(hr)[None], SCALE).round().clamp(0, 255)
    return hr, lr[0].numpy(), upsample_bicubic(lr, SCALE)[0].numpy()


def neighbourhoods(lr: np.ndarray, taps: int) -> np.ndarray:
    """[h*w, bands*taps*taps + 1]: every LR pixel's taps x taps window of all bands, plus a constant."""
    c, h, w = lr.shape
    p = taps // 2
    padded = np.pad(lr, ((0, 0), (p, taps - p), (p, taps - p)), mode="reflect")
    cols = [padded[b, dy:dy + h, dx:dx + w].reshape(-1) for b in range(c) for dy in range(taps) for dx in range(taps)]
    cols.append(np.ones(h * w, np.float32))
    return np.stack(cols, axis=1).astype(np.float64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+")
    p.add_argument("--data", default="data", help="the `make data` folder (manifest.json, train/)")
    p.add_argument("--taps", type=int, default=8)
    p.add_argument("--json")
    a = p.parse_args(argv)
    gram = rhs = None
    for _, piece in training_pieces(a.data):
        hr, lr, bic = pairs(piece)
        x = neighbourhoods(lr, a.taps)
        ys = np.stack([(hr[b, py::SCALE, px::SCALE] - bic[b, py::SCALE, px::SCALE]).reshape(-1)
                       for b in range(3) for py in range(SCALE) for px in range(SCALE)], axis=1).astype(np.float64)
        gram = x.T @ x if gram is None else gram + x.T @ x
        rhs = x.T @ ys if rhs is None else rhs + x.T @ ys
    weights = np.linalg.solve(gram + 1e-3 * np.eye(gram.shape[0]), rhs)
    rows = {}
    for path in a.images:
        hr, lr, bic = pairs(read_rgb(path))
        h, w = lr.shape[1:]
        pred = neighbourhoods(lr, a.taps) @ weights
        out = bic.copy()
        k = 0
        for b in range(3):
            for py in range(SCALE):
                for px in range(SCALE):
                    out[b, py::SCALE, px::SCALE] += pred[:, k].reshape(h, w)
                    k += 1
        score = {name: evaluate_arrays(np.clip(img, 0, 255).round(), hr, scale=SCALE, data_range=255.0)
                 for name, img in (("bicubic", bic), ("linear least squares", out))}
        rows[Path(path).name] = score
    mean = {m: {k: float(np.mean([rows[i][m][k] for i in rows])) for k in ("psnr", "ssim", "lpips")}
            for m in ("bicubic", "linear least squares")}
    for m, v in mean.items():
        print(f"{m:22s} PSNR {v['psnr']:.2f} dB  SSIM {v['ssim']:.4f}  LPIPS {v['lpips']:.4f}")
    print(f"linear - bicubic: {mean['linear least squares']['psnr'] - mean['bicubic']['psnr']:+.2f} dB "
          f"({len(rows)} images, {a.taps}x{a.taps} LR taps)")
    if a.json:
        Path(a.json).write_text(json.dumps({"taps": a.taps, "mean": mean, "per_image": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
