#!/usr/bin/env python
"""Peak memory of the raster pipeline with a shipped model and the default tile and batch, per raster size.

Runs `superresolve` in a fresh process per size with a model file (default: the shipped aerial model;
the tile and batch the memory budget chooses unless given) and prints each peak RSS (the figure
`/usr/bin/time -v` reports), the RSS before the job (imports), and the ratio of the job's increments.
``--model standin`` runs the fast fixed stand-in (sharpening + bicubic) to test the pipeline alone.

    .venv/bin/python scripts/bench_raster_memory.py --sizes 1024 2048          # output pixels a side
    .venv/bin/python scripts/bench_raster_memory.py --model resources/models/lcmsr_x4_satellite_bandwise.safetensors
    .venv/bin/python scripts/bench_raster_memory.py --sizes 1024 8192x1024 8192 --model standin --tile 256 --batch 4

Memory is bounded by the blocks under about one tile of the current stripe
(lcmsr.raster.tiling.BlockBlender) plus one batch of tiles in flight, so the
job's increment follows neither the raster's width nor its height.  A 1024^2
output at --tile 256 (scale 4) is a single tile, i.e. a batch of one; use
--tile 128 to compare runs that both fill whole batches.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "backend"
RGB_MODEL = REPO / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors"


def make_input(path: Path, lr_w: int, lr_h: int, bands: int = 3) -> None:
    """A textured Byte GeoTIFF written in row bands, so making it costs the parent little memory."""
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), lr_w, lr_h, bands, gdal.GDT_Byte,
                                              options=["TILED=YES", "COMPRESS=DEFLATE"])
    ds.SetGeoTransform((500000.0, 4.0, 0.0, 4100000.0, 0.0, -4.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32611)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for y in range(0, lr_h, 256):
        h = min(256, lr_h - y)
        yy, xx = np.mgrid[y:y + h, 0:lr_w].astype(np.float32)
        for b in range(bands):
            f = 128 + 60 * np.sin(xx / (7 + b) + yy / 11) + 20 * rng.standard_normal((h, lr_w))
            ds.GetRasterBand(b + 1).WriteArray(np.clip(f, 0, 255).astype(np.uint8), 0, y)
    ds = None


def child(args) -> None:
    import torch

    sys.path.insert(0, str(STANDIN))
    sys.path.insert(0, str(REPO / "backend"))
    from test_raster_standin import StandInModel

    from lcmsr.progress import Progress
    from lcmsr.raster import pipeline
    from lcmsr.raster.pipeline import SROptions, superresolve

    if args.stripe:
        pipeline.STRIPE_HR = args.stripe
    model = StandInModel(scale=args.scale) if args.model == "standin" else args.model   # a file: loaded in the job
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    options = SROptions(tile=args.tile, overlap=args.overlap, batch=args.batch, device=args.device,
                        precision=args.precision, ignore_domain=True)   # synthetic pixels: the guard is beside the point
    if args.memory_budget:
        options.memory_budget = args.memory_budget
    class Plan(Progress):   # keeps the line that says the tiles and batch the job ran
        said = ""

        def info(self, message):
            if " tile(s) of " in message:
                Plan.said = message

    res = superresolve(args.input, args.output, model, options, Plan())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and args.device != "cpu" else None
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": time.perf_counter() - start,
                      "width": res.width, "height": res.height, "tiles": res.tiles, "gpu_peak_mib": gpu,
                      "plan": Plan.said}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1024", "8192"],
                   help="output sizes in HR pixels: N (square) or WxH")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--tile", type=int, default=0, help="default 0: chosen to fit the memory budget")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=0, help="default 0: chosen to fit the memory budget")
    p.add_argument("--memory-budget", type=float, default=0.0, help="GB (default: lcmsr.choices.SR_DEFAULTS')")
    p.add_argument("--stripe", type=int, default=0,
                   help="stripe width in HR pixels (default: lcmsr.raster.pipeline.STRIPE_HR)")
    p.add_argument("--model", default=str(RGB_MODEL), help="a model file (default: the shipped aerial model), or standin")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="lcmsr-bench-") as tmp:
        for size in args.sizes:
            w, _, h = size.lower().partition("x")
            w, h = int(w), int(h or w)
            src, dst = Path(tmp) / f"in{size}.tif", Path(tmp) / f"out{size}.tif"
            make_input(src, w // args.scale, h // args.scale)
            proc = subprocess.run([sys.executable, __file__, "--child", "--input", str(src), "--output", str(dst),
                                   "--scale", str(args.scale), "--tile", str(args.tile),
                                   "--overlap", str(args.overlap), "--batch", str(args.batch),
                                   "--stripe", str(args.stripe), "--model", args.model, "--device", args.device,
                                   "--precision", args.precision, "--memory-budget", str(args.memory_budget)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["size"] = size
            r["pixels"] = w * h
            r["output_mib"] = dst.stat().st_size / 2**20
            results.append(r)
            print(f"{r['width']}x{r['height']} output ({r['tiles']} tiles, {r['output_mib']:.0f} MiB file): "
                  f"peak RSS {r['peak_kib'] / 1024:.0f} MiB (imports {r['before_kib'] / 1024:.0f} MiB, "
                  f"job +{(r['peak_kib'] - r['before_kib']) / 1024:.0f} MiB)"
                  + (f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if r.get("gpu_peak_mib") is not None else "")
                  + f", {r['seconds']:.1f} s; {r['plan']}", flush=True)
            src.unlink()
            dst.unlink()
    if args.json:
        keys = ("scale", "tile", "overlap", "batch", "memory_budget", "model", "device", "precision", "stripe")
        Path(args.json).write_text(json.dumps({"options": {k: getattr(args, k) for k in keys}, "runs": results},
                                              indent=2))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        pixels = b["pixels"] / a["pixels"]
        print(f"peak RSS ratio {b['size']} / {a['size']}: {b['peak_kib'] / a['peak_kib']:.2f} "
              f"(job increment ratio {(b['peak_kib'] - b['before_kib']) / max(1, a['peak_kib'] - a['before_kib']):.2f}"
              f") for {pixels:.0f}x the pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
