"""Scene benchmark (issue 23): a Sentinel-2-like scene through the default path, next to the aerial model.

    .venv/bin/python scripts/bench_scene.py [--size 1098] [--device cpu] [--out build/bench-scene]   # make bench-scene
    PYTHONPATH=backend python scripts/bench_scene.py --arrays --device cuda --size 10980           # no GDAL (GPU box)

With GDAL (the default): a real-pixel Sentinel-2-like raster (the committed 256² crop of tile 33UUU, B02 B03
B04 B08, UInt16, 10 m, mirrored into a ``size``² mosaic: scripts/real_raster.py) goes through
``lcmsr.raster.pipeline.superresolve`` exactly as ``lcmsr sr IN OUT.tif --cog`` runs it — model chosen by
domain (the band-wise satellite model), tile and batch chosen by the memory plan, LR-consistency on — into a
Cloud Optimized GeoTIFF; then the aerial RGB model on a ``size``² 8-bit RGB raster of real NEON pixels at
0.4 m.  Each case runs in a process of its own, so its peak RSS is its own.  Printed per case: output MP/s,
the model passes per output pixel (bands of a band-wise model), MP/s per pass, the tile/batch the plan
chose, peak RSS, and the seconds each part was busy (read and write in their own threads, so parts
overlap; ``finish`` = the COG's conversion and overviews after the last tile), and the time a whole
Sentinel-2 tile (10980² LR) would take at that rate (extrapolated: the engine streams, so its rate does
not depend on the raster's size).

``--arrays`` (no GDAL: the CUDA machine has none): the same scene as a numpy array, through the tile model
and the blender (lcmsr.sr.tile_model.TileModel, lcmsr.raster.tiling.BlockBlender) in the engine's tile
order, without reading or writing files; GPU memory is reported on CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(HERE))
MODELS = REPO / "resources" / "models"
S2_TILE = 10980   # LR pixels a side of a Sentinel-2 tile at 10 m


def _case_gdal(name: str, size: int, device: str, workdir: str, budget: float | None) -> dict:
    """One case in this process: write the raster, super-resolve it to a COG, report."""
    import torch

    from lcmsr.choices import SR_DEFAULTS
    from lcmsr.progress import Progress, Timers
    from lcmsr.raster.pipeline import SROptions, superresolve
    from real_raster import write_rgb, write_s2

    src = os.path.join(workdir, f"{name}_lr.tif")
    (write_s2 if name == "s2" else write_rgb)(src, size)

    class Log(Progress):
        lines: list[str] = []

        def info(self, message):
            self.lines.append(message)

    log, timers = Log(), Timers()
    options = SROptions(device=device, cog=True, memory_budget=budget or SR_DEFAULTS["memory_budget"])
    start, cpu = time.perf_counter(), time.process_time()
    res = superresolve(src, os.path.join(workdir, f"{name}_sr.tif"), None, options, log, timers=timers)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    bands = len(res.bands)
    bandwise = "bandwise" in os.path.basename(res.model)
    passes = bands if bandwise else 1
    out_mp = res.width * res.height / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() if res.device.startswith("cuda") else None
    return {"case": name, "model": os.path.basename(res.model), "lr_size": size, "bands": bands,
            "bandwise": bandwise, "passes_per_pixel": passes, "device": res.device, "precision": res.precision,
            "tile": res.tile, "batch_images": res.batch, "tiles": res.tiles, "wall_s": wall, "cpu_s": cpu,
            "output_mp": out_mp, "output_mp_per_s": out_mp / wall, "pass_mp_per_s": out_mp * passes / wall,
            # per CPU second too: on a machine shared with other jobs, wall time measures the neighbours
            "pass_mp_per_cpu_s": out_mp * passes / cpu,
            "parts_busy_s": timers.busy(), "peak_rss_gb": peak / 1e9,
            "gpu_peak_gb": None if gpu is None else gpu / 1e9,
            "s2_tile_extrapolated_s": wall * (S2_TILE / size) ** 2,
            "plan": [m for m in log.lines if m.startswith(("memory:", "device ")) or "tile(s) of" in m]}


def _case_arrays(name: str, size: int, device: str, batch: int, tile: int) -> dict:
    """The tile model and the blender on an in-memory scene (no GDAL): the engine's compute path."""
    import numpy as np
    import torch

    from lcmsr.progress import Timers
    from lcmsr.raster.tiling import BlockBlender, plan_tiles
    from lcmsr.sr.tile_model import TileModel
    from lcmsr.weights import load_model

    dev = torch.device(device)
    path = MODELS / ("lcmsr_x4_satellite_bandwise.safetensors" if name == "s2" else "lcmsr_x4_rgb_small.safetensors")
    model = load_model(str(path), device=str(dev))
    bands = 4 if name == "s2" else 3
    bandwise = name == "s2"
    rng = np.random.default_rng(0)
    # Real-looking values without a reader: a smooth field plus texture, in the data's units.
    lo, hi = (200.0, 4000.0) if name == "s2" else (0.0, 255.0)
    base = rng.uniform(lo, hi, size=(bands, 256, 256)).astype(np.float32)
    scene = np.pad(base, ((0, 0), (0, size - 256), (0, size - 256)), mode="symmetric") if size > 256 else base[:, :size, :size]
    from lcmsr.normalization import Normalization
    norm = Normalization([lo] * bands, [hi] * bands)
    from lcmsr.runtime import resolve_precision
    precision = resolve_precision("auto", dev)[0]
    timers = Timers()
    tm = TileModel(model, dev, precision=precision, norm=norm, bandwise=bandwise,
                   bounds=np.array([(lo, hi)] * bands), batch=batch, lr_consistency=3, timers=timers)
    plan = plan_tiles(size, size, tile, 32, int(model.lr_multiple))
    blender = BlockBlender(plan, bands, 4, block=256, stripe_cols=max(1, 8192 // ((tile - 32) * 4)),
                           spill_dir=tempfile.gettempdir())
    per_call = tm.tiles_per_call(bands)
    order = list(blender.order)
    tm.warm_up(bands, plan.tile_h, plan.tile_w)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for i in range(0, len(order), per_call):
        group = order[i:i + per_call]
        with timers.part("read"):
            data = []
            for t in group:
                d = scene[:, t.y:t.y + t.read_h, t.x:t.x + t.read_w]
                pad = ((0, 0), (0, t.h - t.read_h), (0, t.w - t.read_w))
                data.append(np.pad(d, pad, mode="edge") if any(p[1] for p in pad) else np.ascontiguousarray(d))
        outs = tm(group, data)
        with timers.part("blend"):
            for t, hr in zip(group, outs):
                blender.add(t, hr, np.ones((bands, t.read_h, t.read_w), bool))
    wall = time.perf_counter() - start
    blender.close()
    out_mp = (size * 4) ** 2 / 1e6
    passes = bands if bandwise else 1
    return {"case": name, "mode": "arrays (tile model + blender, no file I/O)", "model": path.name, "lr_size": size,
            "bands": bands, "passes_per_pixel": passes, "device": str(dev), "precision": precision, "tile": tile,
            "batch_images": tm.batch, "tiles": len(order), "wall_s": wall, "output_mp": out_mp,
            "output_mp_per_s": out_mp / wall, "pass_mp_per_s": out_mp * passes / wall, "parts_busy_s": timers.busy(),
            "model_share": timers.busy().get("model", 0.0) / wall,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "gpu_peak_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
            "s2_tile_extrapolated_s": wall * (S2_TILE / size) ** 2}


def _show(r: dict) -> None:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["parts_busy_s"].items(), key=lambda kv: -kv[1]))
    gpu = f", GPU peak {r['gpu_peak_gb']:.2f} GB" if r.get("gpu_peak_gb") is not None else ""
    print(f"{r['case']:6s} {r['model']}: {r['lr_size']}² LR x{r['bands']} bands -> {r['output_mp']:.1f} MP, "
          f"{r['device']} {r['precision']}, tile {r['tile']}, batch {r['batch_images']} image(s), {r['tiles']} tiles\n"
          f"       {r['wall_s']:.1f} s: {r['output_mp_per_s']:.3f} MP/s of output, {r['passes_per_pixel']} pass(es) "
          f"per pixel = {r['pass_mp_per_s']:.3f} MP/s per pass"
          + (f" ({r['pass_mp_per_cpu_s']:.3f} MP per CPU second per pass, {r['cpu_s']:.1f} CPU s)" if "cpu_s" in r else "")
          + f"; peak RSS {r['peak_rss_gb']:.2f} GB{gpu}\n"
          f"       busy s: {parts}\n"
          f"       a whole Sentinel-2 tile (10980² LR) at this rate: {r['s2_tile_extrapolated_s'] / 60:.1f} min")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1098, help="LR pixels a side of the scene window (default 1098, "
                   "1/100 of a Sentinel-2 tile's area)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "build" / "bench-scene"))
    p.add_argument("--cases", default="s2,aerial")
    p.add_argument("--memory-budget", type=float, default=None)
    p.add_argument("--arrays", action="store_true", help="no GDAL: the tile model and blender on arrays")
    p.add_argument("--batch", type=int, default=8, help="--arrays: images per model call")
    p.add_argument("--tile", type=int, default=256, help="--arrays: LR tile")
    p.add_argument("--case", help=argparse.SUPPRESS)         # internal: run one case in this process
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        r = (_case_arrays(a.case, a.size, a.device, a.batch, a.tile) if a.arrays
             else _case_gdal(a.case, a.size, a.device, a.workdir, a.memory_budget))
        print("RESULT " + json.dumps(r))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "cases": []}
    with tempfile.TemporaryDirectory(dir=out) as work:
        for case in a.cases.split(","):
            cmd = [sys.executable, __file__, "--case", case, "--size", str(a.size), "--device", a.device,
                   "--workdir", work, "--batch", str(a.batch), "--tile", str(a.tile)]
            cmd += ["--arrays"] if a.arrays else []
            cmd += ["--memory-budget", str(a.memory_budget)] if a.memory_budget else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return 1
            r = json.loads(line[7:])
            results["cases"].append(r)
            _show(r)
    by = {r["case"]: r for r in results["cases"]}
    if "s2" in by and "aerial" in by:
        ratio = by["s2"]["pass_mp_per_s"] / by["aerial"]["pass_mp_per_s"]
        results["bandwise_pass_vs_aerial_pass"] = ratio
        print(f"band-wise pass / aerial pass (MP/s per pass, same run): {ratio:.2f}x (goal >= 0.9x)")
        if "pass_mp_per_cpu_s" in by["s2"]:
            cpu_ratio = by["s2"]["pass_mp_per_cpu_s"] / by["aerial"]["pass_mp_per_cpu_s"]
            results["bandwise_pass_vs_aerial_pass_cpu"] = cpu_ratio
            print(f"the same per CPU second (robust to other load on the machine): {cpu_ratio:.2f}x")
    path = out / f"bench_scene_{a.device.split(':')[0]}{'_arrays' if a.arrays else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
