#!/usr/bin/env python3
"""Issue 15's checks, measured through the real pipeline: does the uncertainty raster point at the errors,
and what does LR-consistency (back-projection) cost or gain?

Per validation split and shipped model, each HR raster is degraded x4 with ``lcmsr degrade`` and
super-resolved by ``lcmsr.raster.pipeline.superresolve`` with an uncertainty raster (K samples), once per
back-projection setting.  Printed and written as JSON, per setting:

* PSNR / SSIM / LPIPS against the HR raster (``lcmsr.metrics.evaluate``; the satellite split on each band
  stretched by the HR 1-99 % range, as scripts/eval_domain.py does);
* spectral angle (degrees) against the HR raster and against the bicubic-upsampled input;
* LR-consistency: mean |degrade(SR) - input| in the input's units (and in % of the HR 1-99 % range);
* Spearman's correlation between per-block (16x16) mean uncertainty and per-block mean absolute error
  (mean over bands) against the HR raster, pooled over the split's blocks (and per scene).

  .venv/bin/python scripts/trust_eval.py --split aerial --json build/trust_aerial.json
  .venv/bin/python scripts/trust_eval.py --split satellite --json build/trust_satellite.json
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_domain import SCALE, crop_copy, metrics, read  # noqa: E402  (the satellite split's metrics)

from lcmsr.metrics import trust  # noqa: E402
from lcmsr.metrics.evaluate import evaluate_arrays  # noqa: E402
from lcmsr.ops import upsample_bicubic  # noqa: E402
from lcmsr.raster.degrade import degrade  # noqa: E402
from lcmsr.raster.facts import input_facts  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

SPLITS = {
    "aerial": dict(model="resources/models/lcmsr_x4_rgb_small.safetensors", rasters=sorted(glob.glob("data/val/*")),
                   crop=None, eight_bit=True),
    "satellite": dict(model="resources/models/lcmsr_x4_satellite_bandwise.safetensors", crop=1280, eight_bit=False,
                      rasters=["data/train/LC08_L1TP_224077_20200518_20200518_01_RT_B234.tif"]),
}


def quality(sr, hr, roles, eight_bit: bool) -> dict:
    if eight_bit:
        return evaluate_arrays(np.clip(sr, 0, 255), hr, scale=SCALE, data_range=255.0)
    return metrics(sr, hr, roles)


def run_scene(path: str, split: dict, work: Path, iterations: list[int], samples: int, seed: int) -> dict:
    stem = Path(path).stem
    hr_path = crop_copy(path, work / f"hr_{stem}.tif", split["crop"])
    lr_path = str(work / f"{stem}_lr.tif")
    degrade(hr_path, lr_path, SCALE)
    roles = input_facts(lr_path).roles
    hr, lr = read(hr_path), read(lr_path)
    span = np.array([np.subtract(*np.percentile(b, [99, 1])) for b in hr])   # HR 1-99 % range per band
    bic = upsample_bicubic(torch.from_numpy(lr)[None], SCALE)[0].numpy()
    row = {"scene": Path(path).name, "bicubic": quality(bic, hr, roles, split["eight_bit"]),
           "bicubic_consistency": trust.lr_consistency(bic, lr, SCALE)["mae"]}
    for n in iterations:
        out, unc = str(work / f"{stem}_bp{n}.tif"), str(work / f"{stem}_bp{n}_u.tif")
        t0 = time.perf_counter()
        superresolve(lr_path, out, split["model"], SROptions(uncertainty=unc, samples=samples, lr_consistency=n,
                                                             seed=seed, ignore_domain=True))
        seconds = time.perf_counter() - t0
        sr, u = read(out), read(unc)[0]
        cons = trust.lr_consistency(sr, lr, SCALE)
        err = np.abs(sr - hr).mean(0)
        valid = np.isfinite(u)
        blocks = trust.block_pairs(np.where(valid, u, 0), err, 16, valid)   # per scene, and pooled below
        row[f"bp{n}"] = {
            **quality(sr, hr, roles, split["eight_bit"]),
            "spectral_angle_hr": trust.spectral_angle(sr, hr),
            "spectral_angle_bicubic": trust.spectral_angle(sr, bic),
            "lr_consistency_mae": cons["mae"],
            "lr_consistency_pct_range": float(100 * np.mean(
                np.abs(trust.degrade(sr, SCALE) - lr).mean(axis=(1, 2)) / span)),
            "spearman": trust.spearman(*blocks),
            "uncertainty_mean": float(u[valid].mean()),
            "seconds": seconds,
            "_blocks": blocks,
        }
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=tuple(SPLITS), required=True)
    p.add_argument("--iterations", default="0,3", help="back-projection settings to compare (default %(default)s)")
    p.add_argument("--samples", type=int, default=4, help="uncertainty samples K (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="keep the rasters in this folder (default: a temporary one)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    split = SPLITS[a.split]
    iterations = [int(n) for n in a.iterations.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lcmsr-trust-") as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for path in split["rasters"]:
            rows.append(run_scene(path, split, work, iterations, a.samples, a.seed))
    summary = {"split": a.split, "model": split["model"], "samples": a.samples, "scenes": [r["scene"] for r in rows],
               "bicubic": {k: float(np.mean([r["bicubic"][k] for r in rows])) for k in ("psnr", "ssim", "lpips")}}
    summary["bicubic"]["lr_consistency_mae"] = float(np.mean([r["bicubic_consistency"] for r in rows]))
    for n in iterations:
        key = f"bp{n}"
        per = [r[key] for r in rows]
        mean = {k: float(np.mean([m[k] for m in per if m[k] is not None]))
                for k in per[0] if not k.startswith("_") and k != "spearman"}
        u = np.concatenate([m["_blocks"][0] for m in per])
        e = np.concatenate([m["_blocks"][1] for m in per])
        mean["spearman_pooled"] = trust.spearman(u, e)
        mean["spearman_per_scene"] = {r["scene"]: r[key]["spearman"] for r in rows}
        summary[key] = mean
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
