#!/usr/bin/env python3
"""What fine-tuning buys on a real scene: fine-tune on one half, measure on the other.

The scene is cut in two halves along its longer side.  ``lcmsr finetune --from MODEL --minutes M`` runs on
the first half (once per budget, one torch thread unless --threads says otherwise), and the base model,
each fine-tuned model and bicubic are scored on the second, held-out half: HR crops of --crop pixels
degraded x scale with the project's antialiased bicubic (rounded to the data type, as ``lcmsr degrade``
writes it), PSNR / SSIM / LPIPS with a border crop of the scale (``lcmsr.metrics.evaluate``), one
consistency step and the faithful sampler, seed 0.  The scene must be of the kind the model is for and
must not be in its card's validation split.  A fine-tuned model already in --work is reused (rerunning
the script only re-scores); its wall time and steps come from its training record.

  .venv/bin/python scripts/finetune_gain.py --model lcmsr_x4_rgb_small \
      --scene data/heldout/2019_YELL_2_541000_4977000_image_crop.tif --minutes 10 30 \
      --json resources/models/finetune_gain_aerial.json

Only models with a fixed value range (the aerial RGB model) are scored here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))


def halves(scene: str, work: Path) -> tuple[str, str]:
    """(fine-tuning half, held-out half) as GeoTIFFs in ``work`` (georeferenced: the domain sees their pixel size)."""
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.Open(scene)
    w, h = ds.RasterXSize, ds.RasterYSize
    if w >= h:
        windows = [(0, 0, w // 2, h), (w // 2, 0, w - w // 2, h)]
    else:
        windows = [(0, 0, w, h // 2), (0, h // 2, w, h - h // 2)]
    out = []
    for name, win in zip(("finetune_half.tif", "heldout_half.tif"), windows):
        path = work / name
        if not path.exists():
            gdal.Translate(str(path), ds, srcWin=list(win), format="GTiff")
        out.append(str(path))
    return out[0], out[1]


def crops(path: str, bands: int, crop: int, max_crops: int) -> list[np.ndarray]:
    """Non-overlapping crop x crop windows of ``path`` on a regular grid, at most ``max_crops`` spread over it."""
    from osgeo import gdal

    ds = gdal.Open(path)
    nx, ny = ds.RasterXSize // crop, ds.RasterYSize // crop
    spots = [(i * crop, j * crop) for j in range(ny) for i in range(nx)]
    step = max(1, len(spots) // max_crops)
    return [ds.ReadAsArray(x, y, crop, crop, band_list=list(range(1, bands + 1))).astype(np.float32)
            for x, y in spots[::step][:max_crops]]


def score(models: dict, hr_crops: list[np.ndarray], scale: int, data_range: float) -> dict:
    """Mean PSNR / SSIM / LPIPS of every (model, sampler) and bicubic over the crops."""
    import torch

    from lcmsr.metrics.evaluate import evaluate_arrays
    from lcmsr.ops import downsample_bicubic, upsample_bicubic

    rows: dict[str, list[dict]] = {}
    for hr in hr_crops:
        lr = downsample_bicubic(torch.from_numpy(hr)[None], scale).round().clamp(0, data_range)
        outs = {"bicubic": upsample_bicubic(lr, scale)}
        for label, model in models.items():
            norm = model.info.normalization
            for sampler in ("consistency", "faithful"):
                gen = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    sr = model.sr(norm.forward(lr), steps=1, sampler=sampler, generator=gen)
                outs[f"{label}, {'1 step' if sampler == 'consistency' else 'faithful'}"] = norm.inverse(sr)
        for name, out in outs.items():
            out = out[0].clamp(0, data_range).round().numpy()
            rows.setdefault(name, []).append(evaluate_arrays(out, hr, scale=scale, data_range=data_range))
    return {name: {k: float(np.mean([r[k] for r in rs])) for k in ("psnr", "ssim", "lpips")}
            for name, rs in rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="base model: a file or a bundled model's name")
    p.add_argument("--scene", required=True, help="a real scene of the model's kind, not in its validation split")
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0], help="fine-tuning budgets (default 10)")
    p.add_argument("--work", default="build/finetune_gain", help="halves and fine-tuned models (reused)")
    p.add_argument("--crop", type=int, default=256, help="HR crop side for scoring (default 256)")
    p.add_argument("--max-crops", type=int, default=24, help="crops of the held-out half scored (default 24)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for fine-tuning and scoring (default 1)")
    p.add_argument("--device", default="cpu", help="device of the fine-tuning runs (default cpu)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)

    import torch

    from lcmsr.train.finetune import resolve_model
    from lcmsr.weights import load_model

    torch.set_num_threads(a.threads)
    work = Path(a.work) / Path(a.scene).stem
    work.mkdir(parents=True, exist_ok=True)
    base_path = resolve_model(a.model)
    base = load_model(base_path)
    info = base.info
    if info.domain.normalization != "fixed" or info.data_type not in ("Byte", "UInt16"):
        raise SystemExit(f"{base_path}: only models with a fixed Byte/UInt16 value range are scored by this script")
    data_range = 255.0 if info.data_type == "Byte" else 65535.0
    train_half, held_half = halves(a.scene, work)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(ROOT / "backend"))
    models = {"base": base}
    runs = {}
    for minutes in a.minutes:
        out = work / f"finetuned_{minutes:g}min.safetensors"
        if not out.exists():
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "lcmsr", "finetune", "--from", base_path, "--out", str(out),
                            "--minutes", f"{minutes:g}", "--device", a.device, "--quiet", "--resume", train_half],
                           env=env, check=True)
            print(f"fine-tuned {minutes:g} min in {time.monotonic() - t0:.0f} s wall: {out}", flush=True)
        model = load_model(out)
        record = model.info.training["finetunes"][-1]
        runs[f"{minutes:g} min"] = {k: record.get(k) for k in ("steps", "decoder_steps", "consistency_steps",
                                                              "seconds", "device", "patch", "batch")}
        models[f"fine-tuned {minutes:g} min"] = model
    hr_crops = crops(held_half, info.bands, a.crop, a.max_crops)
    t0 = time.monotonic()
    mean = score(models, hr_crops, info.scale, data_range)
    print(f"scored {len(hr_crops)} crops of {held_half} in {time.monotonic() - t0:.0f} s", flush=True)
    bic = mean["bicubic"]
    lines = ["| model, sampler | PSNR (dB) | SSIM | LPIPS | vs bicubic |", "|---|---:|---:|---:|---:|"]
    for name, m in mean.items():
        rel = "" if name == "bicubic" else f"{m['psnr'] - bic['psnr']:+.2f} dB, LPIPS x{m['lpips'] / bic['lpips']:.2f}"
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['lpips']:.4f} | {rel} |")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "base_model": os.path.basename(base_path), "scene": os.path.basename(a.scene),
            "finetune_half": os.path.basename(train_half), "heldout_half": os.path.basename(held_half),
            "crops": len(hr_crops), "crop": a.crop, "threads": a.threads, "runs": runs, "mean": mean,
            "cpu_count": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
