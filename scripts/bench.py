#!/usr/bin/env python3
"""Speed benchmark of single-step LCMSR: one table, one JSON, every figure from this run.

  python scripts/bench.py --device cpu  --out build/bench      (`make bench`)
  PYTHONPATH=backend python scripts/bench.py --device cuda --out $OUT   (GPU machine, no QGIS/GDAL needed)

Sections: model-only throughput (output megapixels/s) of the shipped (small) and the paper
config, fp32 and bf16, per batch size, with FLOPs counted by torch.utils.flop_counter and the
fraction of a measured matmul peak; one step vs the 50-step DDIM baseline (and DDPM-1000,
extrapolated from its per-step time) end to end on the same model in the same run; batch-1
latency of a 256x256 output tile; the 1024x1024 output time of the shipped model; and, when
GDAL is present, end-to-end GeoTIFF throughput (read, SR, blend, write) against model-only.
Random weights: speed does not depend on their values.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from lcmsr.config import named_config  # noqa: E402
from lcmsr.model import build_model  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup=1, min_time=1.0, max_reps=50):
    """Median-free but honest: mean seconds per call over at least `min_time` seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def autocast(device, precision):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_peak(device, precision):
    n = 2048 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, min_time=0.5)
    return 2 * n**3 / sec


def count_flops(model, lr, steps=1, sampler="consistency"):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.sr(lr, steps=steps, sampler=sampler)
    return counter.get_total_flops()


def model_only(config_name, device, precision, batch, lr_size, scale=4):
    torch.manual_seed(0)
    model = build_model(named_config(config_name, scale=scale), with_encoder=False).to(device).eval()
    lr = torch.rand(batch, 3, lr_size, lr_size, device=device) * 2 - 1
    with autocast(device, precision):
        sec = timed(lambda: model.sr(lr), device)
    out_mp = batch * (lr_size * scale) ** 2 / 1e6
    flops = count_flops(model, lr[:1])
    return {"config": config_name, "precision": precision, "batch": batch, "lr_tile": lr_size,
            "out_tile": lr_size * scale, "seconds": sec, "mp_per_s": out_mp / sec,
            "flop_per_out_pixel": flops / (lr_size * scale) ** 2}


def steps_vs_ddim(device, precision, lr_size, config_name="small"):
    torch.manual_seed(0)
    model = build_model(named_config(config_name), with_encoder=False).to(device).eval()
    lr = torch.rand(1, 3, lr_size, lr_size, device=device) * 2 - 1
    out = {}
    with autocast(device, precision):
        out["consistency_1"] = timed(lambda: model.sr(lr, steps=1), device)
        out["consistency_4"] = timed(lambda: model.sr(lr, steps=4, sampler="consistency"), device)
        out["ddim_50"] = timed(lambda: model.sr(lr, steps=50, sampler="ddim"), device, warmup=0, min_time=0.1,
                               max_reps=1)
        per_step_ddpm = (timed(lambda: model.sr(lr, steps=20, sampler="ddpm"), device, warmup=0, min_time=0.1,
                               max_reps=1) - out["consistency_1"]) / 19
        out["ddpm_1000_extrapolated"] = out["consistency_1"] + 999 * per_step_ddpm
    out["ratio_ddim50_over_1step"] = out["ddim_50"] / out["consistency_1"]
    out["ratio_ddpm1000_over_1step"] = out["ddpm_1000_extrapolated"] / out["consistency_1"]
    return out


def end_to_end(device, precision, out_size, tile):
    """SR of a GeoTIFF whose output is out_size^2 (needs GDAL) against the model-only rate, same tiles."""
    try:
        from osgeo import gdal
    except ImportError:
        return None
    import numpy as np

    from lcmsr.raster.pipeline import SROptions, superresolve
    from lcmsr.weights import save_model

    gdal.UseExceptions()
    scale = 4
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build_model(named_config("small"), with_encoder=False)
        path = os.path.join(tmp, "model.safetensors")
        save_model(path, model)
        lr_size = out_size // scale
        src = os.path.join(tmp, "lr.tif")
        ds = gdal.GetDriverByName("GTiff").Create(src, lr_size, lr_size, 3, gdal.GDT_Byte, ["TILED=YES"])
        ds.SetGeoTransform((500000, 0.4, 0, 4000000, 0, -0.4))
        rng = np.random.default_rng(0)
        for b in range(3):
            ds.GetRasterBand(b + 1).WriteArray(rng.integers(0, 256, (lr_size, lr_size), dtype=np.uint8))
        ds = None
        opts = SROptions(tile=tile, overlap=16, batch=4, device=str(device), precision=precision)
        start = time.perf_counter()
        superresolve(src, os.path.join(tmp, "sr.tif"), path, opts)
        seconds = time.perf_counter() - start
    return {"out_size": out_size, "tile": tile, "seconds": seconds, "mp_per_s": out_size**2 / 1e6 / seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "build" / "bench"))
    p.add_argument("--quick", action="store_true", help="fewer cases (CI smoke run)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    precisions = ["fp32", "bf16"]
    results = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    results["peak_flops"] = {pr: matmul_peak(device, pr) for pr in precisions}

    rows = []
    cases = ([("small", [1, 8, 32], 128), ("paper", [1, 4, 16], 128)] if gpu
             else [("small", [1, 4], 64), ("paper", [1], 32)])
    if a.quick:
        cases = [(c, b[:1], s) for c, b, s in cases]
    for config_name, batches, lr_size in cases:
        for pr in precisions:
            for batch in batches:
                r = model_only(config_name, device, pr, batch, lr_size)
                r["fraction_of_peak"] = r["mp_per_s"] * 1e6 * r["flop_per_out_pixel"] / results["peak_flops"][pr]
                rows.append(r)
    results["model_only"] = rows

    results["latency_256_tile_batch1"] = {pr: model_only("small", device, pr, 1, 64)["seconds"] for pr in precisions}
    results["shipped_1024_output_seconds"] = model_only("small", device, "fp32", 1, 256)["seconds"]
    results["steps"] = steps_vs_ddim(device, "fp32", 64)
    results["end_to_end"] = None if a.quick else end_to_end(device, "bf16" if gpu else "fp32",
                                                              8192 if gpu else 1024, 128 if not gpu else 256)
    if results["end_to_end"]:
        ref = model_only("small", device, "bf16" if gpu else "fp32", 4, 128 if not gpu else 256)
        results["end_to_end"]["model_only_mp_per_s"] = ref["mp_per_s"]
        results["end_to_end"]["fraction_of_model_only"] = results["end_to_end"]["mp_per_s"] / ref["mp_per_s"]

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{device.type}.json").write_text(json.dumps(results, indent=2))
    print(f"\nLCMSR benchmark — {results['device']}, torch {results['torch']}, {results['date']}")
    print(f"matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in results["peak_flops"].items()))
    print(f"{'config':7s} {'prec':5s} {'batch':>5s} {'out tile':>8s} {'MP/s':>8s} {'kFLOP/px':>9s} {'% peak':>7s}")
    for r in rows:
        print(f"{r['config']:7s} {r['precision']:5s} {r['batch']:5d} {r['out_tile']:8d} {r['mp_per_s']:8.3f} "
              f"{r['flop_per_out_pixel'] / 1e3:9.0f} {100 * r['fraction_of_peak']:6.1f}%")
    s = results["steps"]
    print(f"256x256 output, small config, fp32: 1 step {s['consistency_1'] * 1e3:.0f} ms | 4 steps "
          f"{s['consistency_4'] * 1e3:.0f} ms | DDIM-50 {s['ddim_50'] * 1e3:.0f} ms "
          f"({s['ratio_ddim50_over_1step']:.1f}x slower) | DDPM-1000 ≈{s['ddpm_1000_extrapolated']:.1f} s "
          f"({s['ratio_ddpm1000_over_1step']:.0f}x, extrapolated)")
    print("batch-1 latency of a 256x256 output tile: " + ", ".join(
        f"{k} {v * 1e3:.0f} ms" for k, v in results["latency_256_tile_batch1"].items()))
    print(f"shipped model, 1024x1024 output: {results['shipped_1024_output_seconds']:.2f} s")
    if results["end_to_end"]:
        e = results["end_to_end"]
        print(f"end-to-end GeoTIFF {e['out_size']}^2 output: {e['mp_per_s']:.3f} MP/s = "
              f"{100 * e['fraction_of_model_only']:.0f}% of model-only ({e['model_only_mp_per_s']:.3f} MP/s)")
    print(f"JSON: {out / f'bench_{device.type}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
