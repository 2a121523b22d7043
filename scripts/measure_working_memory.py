#!/usr/bin/env python
"""Measure a model's working memory on the CPU: peak RSS added by one model call, per HR output pixel.

Each point runs in a fresh process: load the model file, make the Inference runner (the pipeline's
options: channels_last, the given precision), warm up on one small tile, then run ONE call on
``images`` tiles of ``tile`` LR pixels (what ``lcmsr.sr.tile_model.TileModel`` runs, including its float64
denormalisation copy and the float32 blend copy) and record ``ru_maxrss`` minus the RSS just before the
call.  Per model and precision it prints an upper envelope ``added <= fixed + per_pixel * images *
(tile * scale)^2``: ``per_pixel`` the largest added/pixels over the points of at least 0.25 M HR pixels
(on the smallest, a fixed per-call cost dominates), ``fixed`` the smallest constant that puts every
point under the line.  lcmsr.memory.WORKING_MEMORY records these two figures (with a margin for
run-to-run variation, said there); the least-squares fit is printed beside them for comparison.
A band-wise model runs every band as an image of its own, so ``images`` counts tiles x bands for it.

    .venv/bin/python scripts/measure_working_memory.py --json build/working_memory.json   # both shipped models
    .venv/bin/python scripts/measure_working_memory.py --points 1x128 2x128 --precisions bf16
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(str(p) for p in (REPO / "resources" / "models").glob("*.safetensors"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "backend"))
    from lcmsr.inference import Inference, InferenceOptions
    from lcmsr.weights import load_model

    model = load_model(args.model)
    runner = Inference(model, "cpu", InferenceOptions(precision=args.precision))
    c, s = int(model.info.bands), int(model.info.scale)
    if model.info.domain.bandwise:
        c = 1
    runner.sr(torch.zeros(1, c, 32, 32))   # first-call setup (oneDNN primitives) outside the measurement
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, c, args.tile, args.tile, generator=g) * 2 - 1
    before = _rss_bytes()
    y = runner.sr(x, generator=g)
    y = y.double()                              # the pipeline's denormalisation runs in float64
    z = y.numpy().astype(np.float32)            # and blends float32 copies
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del z
    print(json.dumps({"before": before, "peak": peak, "added": peak - before, "scale": s}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--points", nargs="+", default=["1x96", "4x96", "1x192", "2x128", "1x256"],
                   help="IMAGESxTILE: images per call and LR tile side")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--write", action="store_true",
                   help="write each model's envelope, raised by --margin, into its file (ModelInfo.working_memory), "
                        "where lcmsr.memory reads it before its own table")
    p.add_argument("--margin", type=float, default=0.15,
                   help="share added to the bytes per HR pixel when written (default %(default)s: the same point "
                        "measured twice differed by up to 30 %%)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    import numpy as np

    results = []
    for model in args.models:
        for precision in args.precisions:
            rows = []
            for point in args.points:
                images, tile = (int(v) for v in point.split("x"))
                proc = subprocess.run([sys.executable, __file__, "--child", "--model", model, "--precision", precision,
                                       "--images", str(images), "--tile", str(tile)],
                                      capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(images=images, tile=tile, hr_pixels=images * (tile * r["scale"]) ** 2)
                rows.append(r)
                print(f"{Path(model).name} {precision} {images} x {tile}^2 LR: +{r['added'] / 2**20:.0f} MiB "
                      f"(RSS before the call {r['before'] / 2**20:.0f} MiB)", flush=True)
            px = np.array([r["hr_pixels"] for r in rows], float)
            added = np.array([r["added"] for r in rows], float)
            per_pixel, fixed = np.polyfit(px, added, 1)
            worst = max(abs(a - (fixed + per_pixel * x)) / a for a, x in zip(added, px))
            slope = max((added / px)[px >= 0.25e6], default=max(added / px))
            base = max(0.0, float(max(added - slope * px)))
            print(f"  envelope: {base / 2**20:.0f} MiB + {slope:.0f} bytes per HR pixel per image; "
                  f"fit: {fixed / 2**20:.0f} MiB + {per_pixel:.0f} bytes/pixel "
                  f"(worst point off by {100 * worst:.0f} %)",
                  flush=True)
            results.append({"model": Path(model).name, "precision": precision, "fixed_bytes": base,
                            "bytes_per_hr_pixel": slope, "fit_fixed_bytes": fixed, "fit_bytes_per_hr_pixel": per_pixel,
                            "points": rows})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write:
        sys.path.insert(0, str(REPO / "backend"))
        from lcmsr import memory
        from lcmsr.weights import read_info, update_info

        for model in args.models:
            info = read_info(model)
            bands = 1 if info.domain.bandwise else int(info.bands)
            mine = {r["precision"]: r for r in results if r["model"] == Path(model).name}
            figures = {}
            for p, r in mine.items():
                measured = (int(r["fixed_bytes"]), int(r["bytes_per_hr_pixel"] * (1 + args.margin) + 0.5))
                # Never below the table's figure for the same model size: bf16 calls are bimodal from run to run
                # (oneDNN's scratch), and the table holds the high mode of 8 fresh processes (lcmsr.memory).
                floor, _ = memory.figures(info.config.name, bands, p)
                figures[p] = [max(measured[0], floor[0]), max(measured[1], floor[1])]
            how = (f"scripts/measure_working_memory.py on {os.cpu_count()} CPU cores, points "
                   f"{' '.join(args.points)} (images x LR tile), envelope + {100 * args.margin:.0f} % per pixel, "
                   f"not below lcmsr.memory's table for a '{info.config.name}' model")
            update_info(model, working_memory={**figures, "how": how})
            print(f"{Path(model).name}: working memory written: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
