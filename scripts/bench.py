#!/usr/bin/env python3
"""Speed benchmark of single-step LCMSR: one table, one JSON, every figure from this run.

  python scripts/bench.py --device cpu  --out build/bench      (`make bench`)
  PYTHONPATH=backend python scripts/bench.py --device cuda --out $OUT   (GPU machine, no QGIS/GDAL needed)

Sections: model-only throughput (output megapixels/s) of the shipped (small) and the paper
config, fp32 and bf16, per batch size, with FLOPs counted by torch.utils.flop_counter and the
fraction of a measured matmul peak; one step vs the 50-step DDIM baseline (and DDPM-1000,
extrapolated from its per-step time) end to end on the same model in the same run; batch-1
latency of a 256x256 output tile; the 1024x1024 output time of the shipped model; what each
optimisation of lcmsr.inference buys (plain eager fp32 -> channels_last -> bf16 -> torch.compile
-> CUDA graphs, as ratios in this run); and, when GDAL is present, end-to-end GeoTIFF throughput
(read, SR, blend, write) against model-only on the same tiles, and peak host (and GPU) memory
for 1024^2 vs 8192^2 outputs (scripts/bench_raster_memory.py, one fresh process per size).
Random weights: speed does not depend on their values.  --compile adds torch.compile on the CPU
(minutes of compiling on a small machine); on CUDA it is always measured.

On the CPU, with the shipped models' real weights (resources/models): the new default precision
("auto", lcmsr.runtime.resolve_precision) against plain fp32 and fp32 + channels_last, per part
(CondNet, denoiser, decoder, rest), one thread, CPU time, interleaved repetitions, medians, with
a CHECK line per model (issue 18: >= 1.6x plain fp32); the cheap knobs (threads, tile, batch);
one step vs DDIM-50 per part and one pixel-space step of the same UNet at the HR size; and a real
GeoTIFF job's CPU time split into model, normalisation/noise, blending, reading and writing.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from lcmsr.config import named_config  # noqa: E402
from lcmsr.inference import Inference, InferenceOptions  # noqa: E402
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


def optimisations(device, batch, lr_size, with_compile):
    """Model-only MP/s of the shipped config through lcmsr.inference, one optimisation added at a time."""
    torch.manual_seed(0)
    model = build_model(named_config("small"), with_encoder=False).to(device).eval()
    lr = torch.rand(batch, 3, lr_size, lr_size, device=device) * 2 - 1
    noise = torch.randn((batch,) + model.latent_shape(lr_size, lr_size), device=device)
    steps = [("eager fp32", None), ("+channels_last", InferenceOptions(channels_last=True)),
             ("+bf16", InferenceOptions(channels_last=True, precision="bf16"))]
    if with_compile:
        steps.append(("+compile", InferenceOptions(channels_last=True, precision="bf16", compile=True)))
    if device.type == "cuda":
        steps.append(("+CUDA graphs", InferenceOptions(channels_last=True, precision="bf16", compile=with_compile,
                                                       cuda_graphs=True)))
    # Inference converts the weights it is given to channels_last in place: the plain path gets its own copy.
    plain = copy.deepcopy(model)
    fns = []
    for name, opts in steps:
        if opts is None:
            fns.append((name, lambda: plain.sr(lr, noise=noise)))  # the plain path every ratio is against
            continue
        runner = Inference(model, device, opts)
        fns.append((name, lambda r=runner: r.sr(lr, noise=noise)))
    # On the CPU: one thread and this process's CPU time, so that other jobs on a shared machine
    # (which steal wall time, not CPU time) do not decide the ratios.  On CUDA: wall time, synchronised.
    cpu = device.type == "cpu"
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(1)
    clock = time.process_time if cpu else time.perf_counter
    try:
        first = {}
        for name, fn in fns:  # first call: compilation, graph capture, oneDNN/cuDNN warm-up
            start = time.perf_counter()
            fn()
            sync(device)
            first[name] = time.perf_counter() - start
        # Interleaved repetitions and medians: load drifts between variants otherwise.
        times = {name: [] for name, _ in fns}
        for _ in range(7):
            for name, fn in fns:
                start = clock()
                fn()
                sync(device)
                times[name].append(clock() - start)
    finally:
        torch.set_num_threads(threads)
    rows, ref = [], None
    for name, _ in fns:
        sec = sorted(times[name])[len(times[name]) // 2]
        mp = batch * (lr_size * 4) ** 2 / 1e6 / sec
        ref = ref or mp
        rows.append({"step": name, "seconds": sec, "mp_per_s": mp, "speedup": mp / ref,
                     "first_call_seconds": first[name]})
    return rows


def end_to_end(device, precision, out_size, tile, batch=4, overlap=16):
    """SR of a GeoTIFF whose output is out_size^2 (needs GDAL) against model-only on the same tiles."""
    try:
        from osgeo import gdal
    except ImportError:
        return None
    import numpy as np

    from lcmsr.raster.pipeline import SROptions, _alignment, superresolve
    from lcmsr.raster.tiling import plan_tiles
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
        opts = SROptions(tile=tile, overlap=overlap, batch=batch, device=str(device), precision=precision)
        start = time.perf_counter()
        superresolve(src, os.path.join(tmp, "sr.tif"), path, opts)
        seconds = time.perf_counter() - start
    # Model-only on exactly the tiles the pipeline ran: same tile size (aligned), batch and precision.
    model = build_model(named_config("small"), with_encoder=False).to(device).eval()
    plan = plan_tiles(lr_size, lr_size, tile, overlap, _alignment(model, tile))
    runner = Inference(model, device, InferenceOptions(precision=precision))
    x = torch.rand(batch, 3, plan.tile_h, plan.tile_w) * 2 - 1
    noise = torch.randn((batch,) + model.latent_shape(plan.tile_h, plan.tile_w))
    per_batch = timed(lambda: runner.sr(x, noise=noise), device)
    model_seconds = per_batch * len(plan.tiles) / batch
    mp = out_size ** 2 / 1e6
    return {"out_size": out_size, "tile": tile, "tiles": len(plan.tiles), "batch": batch, "seconds": seconds,
            "mp_per_s": mp / seconds, "model_only_seconds_same_tiles": model_seconds,
            "model_only_mp_per_s": mp / model_seconds, "fraction_of_model_only": model_seconds / seconds}


def peak_memory(device, precision):
    """Peak host RSS (and GPU memory) for 1024^2 vs 8192^2 outputs, one fresh process each (needs GDAL)."""
    try:
        from osgeo import gdal  # noqa: F401
    except ImportError:
        return None
    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for tile in ([256] if gpu else [256, 128]):
            cmd = [sys.executable, str(REPO / "scripts" / "bench_raster_memory.py"), "--sizes", "1024", "8192",
                   "--tile", str(tile), "--batch", "4", "--json", os.path.join(tmp, "m.json"),
                   "--model", "small" if gpu else "standin", "--device", str(device), "--precision", precision]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return {"error": proc.stderr[-2000:]}
            runs = json.loads(Path(tmp, "m.json").read_text())["runs"]
            a, b = runs
            out[f"tile{tile}"] = {
                "model": "small" if gpu else "standin", "tiles": [a["tiles"], b["tiles"]],
                "peak_rss_mib": [a["peak_kib"] / 1024, b["peak_kib"] / 1024], "ratio": b["peak_kib"] / a["peak_kib"],
                "gpu_peak_mib": [a.get("gpu_peak_mib"), b.get("gpu_peak_mib")]}
        return out


PARTS = ("condnet", "denoiser", "decoder")


def shipped_models():
    return sorted((REPO / "resources" / "models").glob("*.safetensors"))


class PartClock:
    """This thread's CPU time inside each of the model's three networks (forward hooks; with one torch
    thread oneDNN computes in the calling thread, so thread time is the part's compute)."""

    def __init__(self, model):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        for name in PARTS:
            part = getattr(model, name)
            part.register_forward_pre_hook(lambda *_a, n=name: setattr(self, "_" + n, time.thread_time()))
            part.register_forward_hook(lambda *_a, n=name: self._add(n))

    def _add(self, name):
        self.seconds[name] += time.thread_time() - getattr(self, "_" + name)

    def reset(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)


def _interleaved(fns, reps):
    """{name: [(total CPU seconds, {part: seconds}), ...]}, variants interleaved so that load drifts alike."""
    out = {name: [] for name in fns}
    for name, (fn, clock) in fns.items():   # first call: oneDNN primitive creation, allocations
        fn()
    for _ in range(reps):
        for name, (fn, clock) in fns.items():
            clock.reset()
            start = time.thread_time()
            fn()
            out[name].append((time.thread_time() - start, dict(clock.seconds)))
    return out


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def cpu_default(lr_size=128, reps=5):
    """The shipped models, real weights: plain fp32 (eager, as before channels_last) vs fp32 with
    channels_last (the old default) vs the new default ("auto"), per part, one thread, CPU time."""
    from lcmsr.runtime import resolve_precision
    from lcmsr.weights import load_model

    device = torch.device("cpu")
    precision, why = resolve_precision("auto", device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for path in shipped_models():
            base = load_model(str(path))
            g = torch.Generator().manual_seed(0)
            lr = torch.rand(1, base.bands, lr_size, lr_size, generator=g) * 2 - 1
            noise = torch.randn((1,) + base.latent_shape(lr_size, lr_size), generator=g)
            fns = {}
            plain = copy.deepcopy(base)
            fns["plain fp32"] = (lambda m=plain: m.sr(lr, noise=noise), PartClock(plain))
            old = copy.deepcopy(base)
            run_old = Inference(old, device, InferenceOptions(precision="fp32", channels_last=True))
            fns["fp32+channels_last"] = (lambda r=run_old: r.sr(lr, noise=noise), PartClock(old))
            new = copy.deepcopy(base)
            run_new = Inference(new, device, InferenceOptions(precision="auto"))
            fns["default (auto)"] = (lambda r=run_new: r.sr(lr, noise=noise), PartClock(new))
            times = _interleaved(fns, reps)
            out_mp = (lr_size * base.scale) ** 2 / 1e6
            for name, runs in times.items():
                total = _median([t for t, _ in runs])
                parts = {p: _median([d[p] for _, d in runs]) for p in PARTS}
                parts["rest"] = max(total - sum(parts.values()), 0.0)
                rows.append({"model": path.name, "variant": name, "precision": precision if "auto" in name else "fp32",
                             "seconds": total, "mp_per_s": out_mp / total, "parts": parts})
            ref = {r["variant"]: r for r in rows if r["model"] == path.name}
            for r in ref.values():
                r["speedup_vs_plain_fp32"] = r["mp_per_s"] / ref["plain fp32"]["mp_per_s"]
                r["speedup_vs_fp32_channels_last"] = r["mp_per_s"] / ref["fp32+channels_last"]["mp_per_s"]
    finally:
        torch.set_num_threads(threads)
    return {"precision": precision, "reason": why, "lr_tile": lr_size, "threads": 1, "reps": reps, "rows": rows}


def cpu_knobs(model_path, lr_size=128):
    """The cheap knobs on the new default, shipped RGB model: threads (wall time), tile size and batch
    (CPU time, one thread)."""
    from lcmsr.weights import load_model

    device = torch.device("cpu")
    model = load_model(str(model_path))
    runner = Inference(model, device, InferenceOptions(precision="auto"))
    g = torch.Generator().manual_seed(0)

    def case(b, size):
        lr = torch.rand(b, model.bands, size, size, generator=g) * 2 - 1
        noise = torch.randn((b,) + model.latent_shape(size, size), generator=g)
        return lambda: runner.sr(lr, noise=noise), b * (size * model.scale) ** 2 / 1e6

    out = {"threads": {}, "tile": {}, "batch": {}}
    # Threads: wall time, interleaved, medians (CPU time would count a second thread's spinning as work).
    fn, mp = case(1, lr_size // 2)
    fn()
    walls = {n: [] for n in (1, 2)}
    threads = torch.get_num_threads()
    try:
        for _ in range(3):
            for n in walls:
                torch.set_num_threads(n)
                start = time.perf_counter()
                fn()
                walls[n].append(time.perf_counter() - start)
        torch.set_num_threads(1)
        out["threads"] = {n: mp / _median(w) for n, w in walls.items()}
        cases = {("tile", s): case(1, s) for s in (64, 128, 256)}
        cases.update({("batch", b): case(b, 64) for b in (1, 4)})
        for fn, _ in cases.values():
            fn()
        cpu = {k: [] for k in cases}
        for _ in range(3):
            for k, (fn, _) in cases.items():
                start = time.thread_time()
                fn()
                cpu[k].append(time.thread_time() - start)
        for (kind, value), (_, mp) in cases.items():
            out[kind][value] = mp / _median(cpu[(kind, value)])
    finally:
        torch.set_num_threads(threads)
    return out


def real_steps(model_path, lr_size=128):
    """One step vs DDIM-50 on the shipped RGB model (new default, one thread, CPU time per part), and one
    call of the same denoiser at the HR size, i.e. what a pixel-space step of this UNet costs."""
    from lcmsr.weights import load_model

    device = torch.device("cpu")
    model = load_model(str(model_path))
    clock = PartClock(model)
    runner = Inference(model, device, InferenceOptions(precision="auto"))
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, model.bands, lr_size, lr_size, generator=g) * 2 - 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"lr_tile": lr_size, "out_tile": lr_size * model.scale}
    try:
        for name, steps, sampler, reps in (("consistency_1", 1, "consistency", 3), ("ddim_50", 50, "ddim", 1)):
            runner.sr(lr, steps=steps, sampler=sampler, generator=g)
            runs = []
            for _ in range(reps):
                clock.reset()
                start = time.thread_time()
                runner.sr(lr, steps=steps, sampler=sampler, generator=g)
                runs.append((time.thread_time() - start, dict(clock.seconds)))
            total, parts = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            out[name] = {"seconds": total, "parts": parts}
        # The same UNet run once in pixel space: x_t and the condition at the HR size (convolutions cost
        # per pixel, so this is 64x the latent step; attention at its lowest level grows faster).
        hr = lr_size * model.scale
        c = model.config.latent_channels
        x_t = torch.randn(1, c, hr, hr, generator=g).contiguous(memory_format=torch.channels_last)
        cond = torch.randn(1, c, hr, hr, generator=g).contiguous(memory_format=torch.channels_last)
        t = torch.full((1,), 999, dtype=torch.long)
        with runner._autocast(), torch.no_grad():
            start = time.thread_time()
            model.denoiser(x_t, t, cond, model.scale, (hr, hr))
            out["pixel_space_step_seconds"] = time.thread_time() - start
    finally:
        torch.set_num_threads(threads)
    one, ddim = out["consistency_1"], out["ddim_50"]
    out["ratio_ddim50_over_1step"] = ddim["seconds"] / one["seconds"]
    out["pixel_space_ddim50_seconds_extrapolated"] = 50 * out["pixel_space_step_seconds"]
    out["pixel_space_ddpm1000_seconds_extrapolated"] = 1000 * out["pixel_space_step_seconds"]
    return out


def io_parts(model_path, lr_size=256, tile=128, batch=4):
    """Where a real GeoTIFF job's time goes (one torch thread): the engine's own per-part timers
    (lcmsr.progress.Timers: read and write in their threads, normalise, noise, model, back-projection
    and blend in the calling thread; wall seconds each, so threads' parts overlap).  Needs GDAL."""
    try:
        from osgeo import gdal  # noqa: F401
    except ImportError:
        return None
    from lcmsr.progress import Timers
    from lcmsr.raster.pipeline import SROptions, superresolve
    from real_raster import write_rgb   # scripts/, beside this file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timers = Timers()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Real pixels (the NEON sample mirrored to lr_size), a DEFLATE GeoTIFF as users have.
            src = os.path.join(tmp, "lr.tif")
            write_rgb(src, lr_size)
            start, cpu = time.perf_counter(), time.process_time()
            res = superresolve(src, os.path.join(tmp, "sr.tif"), str(model_path),
                               SROptions(tile=tile, batch=batch, overlap=16, device="cpu"), timers=timers)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    return {"model": Path(model_path).name, "lr_size": lr_size, "tile": tile, "batch": batch,
            "precision": res.precision, "wall_seconds": wall, "cpu_seconds": cpu, "parts": timers.busy(),
            "mp_per_s_wall": (lr_size * 4) ** 2 / 1e6 / wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "build" / "bench"))
    p.add_argument("--quick", action="store_true", help="fewer cases (CI smoke run)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on the CPU (slow to compile)")
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
    results["optimisations"] = optimisations(device, 8 if gpu else 2, 64, gpu or a.compile)
    results["end_to_end"] = None if a.quick else end_to_end(device, "bf16" if gpu else "fp32",
                                                              8192 if gpu else 1024, 128 if not gpu else 256)
    results["peak_memory"] = None if a.quick else peak_memory(device, "bf16" if gpu else "fp32")
    if not gpu:
        # The shipped models, real weights: the new CPU default against plain fp32, per part, in this run.
        models = shipped_models()
        results["cpu_default"] = cpu_default(lr_size=64 if a.quick else 128, reps=3 if a.quick else 5)
        results["cpu_knobs"] = None if a.quick else cpu_knobs(models[0])
        results["real_steps"] = None if a.quick else real_steps(models[0])
        results["io_parts"] = None if a.quick else io_parts(models[0])

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
    print("optimisations (small config, 256x256 output tiles" + (", 1 thread, CPU time" if not gpu else "")
          + "): " + " | ".join(
        f"{r['step']} {r['mp_per_s']:.3f} MP/s ({r['speedup']:.2f}x)" for r in results["optimisations"]))
    if results["end_to_end"]:
        e = results["end_to_end"]
        print(f"end-to-end GeoTIFF {e['out_size']}^2 output ({e['tiles']} tiles of {e['tile']} LR, batch "
              f"{e['batch']}): {e['mp_per_s']:.3f} MP/s = {100 * e['fraction_of_model_only']:.0f}% of model-only "
              f"on the same tiles ({e['model_only_mp_per_s']:.3f} MP/s)")
    else:
        print("end-to-end GeoTIFF: skipped (no GDAL, or --quick)")
    for key, m in (results["peak_memory"] or {}).items():
        if "error" in m:
            print(f"peak memory ({key}): failed: {m['error'][-300:]}")
            continue
        gpu_text = (f", GPU {m['gpu_peak_mib'][0]:.0f} -> {m['gpu_peak_mib'][1]:.0f} MiB"
                    if m["gpu_peak_mib"][0] is not None else "")
        print(f"peak memory, {m['model']} model, {key} ({m['tiles'][0]} vs {m['tiles'][1]} tiles): host RSS "
              f"{m['peak_rss_mib'][0]:.0f} MiB (1024^2) -> {m['peak_rss_mib'][1]:.0f} MiB (8192^2), "
              f"ratio {m['ratio']:.2f}{gpu_text}")
    if results.get("cpu_default"):
        d = results["cpu_default"]
        print(f"shipped models, real weights, {d['lr_tile']}^2 LR tile, batch 1, 1 thread, CPU time, median of "
              f"{d['reps']} interleaved; default precision here: {d['precision']} ({d['reason']}):")
        print(f"  {'model':40s} {'variant':20s} {'MP/s':>6s} {'vs plain':>8s} {'vs fp32+CL':>10s}   "
              + " ".join(f"{p:>8s}" for p in PARTS + ("rest",)) + "  (ms)")
        for r in d["rows"]:
            print(f"  {r['model']:40s} {r['variant']:20s} {r['mp_per_s']:6.3f} {r['speedup_vs_plain_fp32']:7.2f}x "
                  f"{r['speedup_vs_fp32_channels_last']:9.2f}x   "
                  + " ".join(f"{1e3 * r['parts'][p]:8.0f}" for p in PARTS + ("rest",)))
        for r in d["rows"]:
            if r["variant"] == "default (auto)":
                print(f"CHECK {r['model']}: new CPU default {r['mp_per_s']:.3f} MP/s = "
                      f"{r['speedup_vs_plain_fp32']:.2f}x plain fp32 (issue 18 asks >= 1.6x)")
    if results.get("cpu_knobs"):
        k = results["cpu_knobs"]
        print("knobs, new default, shipped RGB model: threads (wall, 64^2 LR) " + ", ".join(
            f"{n}: {v:.3f} MP/s" for n, v in k["threads"].items()) + " | LR tile (CPU time) " + ", ".join(
            f"{n}: {v:.3f}" for n, v in k["tile"].items()) + " | batch at 64^2 LR (CPU time) " + ", ".join(
            f"{n}: {v:.3f}" for n, v in k["batch"].items()))
    if results.get("real_steps"):
        s = results["real_steps"]
        one, ddim = s["consistency_1"], s["ddim_50"]
        fmt = lambda r: ", ".join(f"{p} {1e3 * r['parts'][p]:.0f}" for p in PARTS)  # noqa: E731
        print(f"shipped RGB model, new default, {s['out_tile']}^2 output, CPU time: 1 step {one['seconds']:.2f} s "
              f"({fmt(one)} ms) | DDIM-50 {ddim['seconds']:.2f} s ({fmt(ddim)} ms) = "
              f"{s['ratio_ddim50_over_1step']:.1f}x | the same UNet at the HR size (pixel space), one step "
              f"{s['pixel_space_step_seconds']:.2f} s -> x50 {s['pixel_space_ddim50_seconds_extrapolated']:.0f} s, "
              f"x1000 {s['pixel_space_ddpm1000_seconds_extrapolated']:.0f} s (extrapolated)")
    if results.get("io_parts"):
        e = results["io_parts"]
        print(f"GeoTIFF job, {e['model']}, {e['lr_size']}^2 LR (real pixels), tile {e['tile']}, batch {e['batch']}, "
              f"{e['precision']}, 1 thread: wall {e['wall_seconds']:.1f} s (CPU {e['cpu_seconds']:.1f} s); busy per part: " + ", ".join(
                  f"{k} {v:.2f} s ({100 * v / e['wall_seconds']:.0f}%)" for k, v in e["parts"].items()))
    print(f"JSON: {out / f'bench_{device.type}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
