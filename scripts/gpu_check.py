#!/usr/bin/env python3
"""One short check of the backend on the lent CUDA machine (torch, no GDAL/QGIS): what the CPU suite
cannot see.

1. Every registered sampler on both shipped models: the CUDA output equals the CPU output for the same
   noise (the noise is a function of the seed, not of the device), fp32, and bf16 stays close to fp32.
2. The three training stages run on CUDA from .npy patches (tiny config, a few steps, bf16 autocast) and
   write a model file that loads on the CPU.
3. The uncertainty path (``LCMSR.sr(repeats=K)``: CondNet once, K noise draws) and the LR-consistency
   back-projection on CUDA equal the CPU's for the same noise.
4. Speed of one step on CUDA through ``lcmsr.inference.Inference``, both shipped models, batch 8 of 256 LR
   pixels: fp32 and bf16, each with and without channels_last (the figures behind ``precision="auto"`` there).

Prepare here (needs GDAL):  .venv/bin/python scripts/gpu_check.py --prepare build/gpu-check
Run there:  run(command="PYTHONPATH=backend python scripts/gpu_check.py --data build/gpu-check --out $OUT",
                carry=["build/gpu-check"], timeout_s=300)
Writes $OUT/gpu_check.json and prints one line per check; exit 1 if a check fails.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "resources" / "models"


def prepare(folder: Path) -> None:
    from lcmsr.raster.io import WindowReader

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("neon_lr", "neon_hr"):
        reader = WindowReader(REPO / "resources" / "sample" / f"{name}.tif", [1, 2, 3])
        values, _valid = reader.read(0, 0, reader.width, reader.height)
        np.save(folder / f"{name}.npy", values.astype(np.float32))
        print(f"wrote {folder / name}.npy {values.shape}")


def check_samplers(data: Path, report: dict, device: str) -> bool:
    import torch

    from lcmsr.choices import SAMPLER_NAMES
    from lcmsr.weights import load_model

    lr_raw = np.load(data / "neon_lr.npy")[:, :64, :64]
    ok = True
    for path in sorted(MODELS.glob("*.safetensors")):
        cpu, gpu = load_model(path, "cpu"), load_model(path, device)
        # Model space [-1, 1] directly (the 8-bit sample; the band-wise model takes its bands one at a time).
        lr = torch.from_numpy(lr_raw[: cpu.bands] / 127.5 - 1.0).float()[None]
        for sampler in SAMPLER_NAMES:
            steps = {"consistency": 2, "faithful": 1, "ddim": 4, "ddpm": 4}[sampler]
            draws = cpu.noise_draws(steps, sampler)
            g = torch.Generator().manual_seed(7)
            shape = (max(draws, 1), lr.shape[0]) + cpu.latent_shape(*lr.shape[-2:])
            noise = torch.randn(shape, generator=g)
            kw = dict(steps=steps, sampler=sampler, noise=noise if draws else None)
            a = cpu.sr(lr, **kw)
            t0 = time.perf_counter()
            there = {**kw, "noise": noise.to(device) if draws else None}
            b = gpu.sr(lr.to(device), **there).cpu()
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                c = gpu.sr(lr.to(device), **there).float().cpu()
            fp32 = float((a - b).abs().max())
            bf16 = float((a - c).abs().mean())
            good = fp32 < 2e-3 and bf16 < 2e-2 and bool(torch.isfinite(b).all())
            ok &= good
            report.setdefault("samplers", []).append(dict(model=path.name, sampler=sampler, steps=steps,
                                                          cuda_vs_cpu_max=fp32, bf16_vs_fp32_mean=bf16, ok=good,
                                                          seconds=time.perf_counter() - t0))
            print(f"{'ok ' if good else 'BAD'} {path.name} {sampler}x{steps}: |cuda-cpu|max {fp32:.2e}, "
                  f"bf16 mean {bf16:.2e}")
    return ok


def check_training(data: Path, out: Path, report: dict, device: str) -> bool:
    import torch

    from lcmsr.train import train_autoencoder, train_consistency, train_decoder
    from lcmsr.train_options import TrainOptions
    from lcmsr.weights import load_model

    import tempfile

    hr = data / "neon_hr.npy"
    work = Path(tempfile.mkdtemp(prefix="lcmsr-gpu-check-"))   # checkpoints stay on that machine
    common = dict(sources=[str(hr)], scale=4, patch=64, batch=4, device=device, precision="bf16", seed=0,
                  checkpoint_every=10, val_every=1000, log_every=5, lpips=False)
    t0 = time.perf_counter()
    r1 = train_autoencoder(TrainOptions(**common, iterations=10, config="tiny",
                                        checkpoint_dir=str(work / "ae"), out=str(work / "ae")))
    r2 = train_consistency(TrainOptions(**{k: v for k, v in common.items() if k != "lpips"}, iterations=10,
                                        stage1=str(work / "ae"), checkpoint_dir=str(work / "lcm"),
                                        out=str(work / "m.safetensors")))
    r3 = train_decoder(TrainOptions(**common, iterations=5, base_model=str(work / "m.safetensors"),
                                    checkpoint_dir=str(work / "dec"), out=str(work / "m3.safetensors")))
    model = load_model(work / "m3.safetensors", "cpu")
    losses = [r.loss for r in (r1, r2, r3)]
    good = all(x is not None and np.isfinite(x) for x in losses) and model.bands == 3
    report["training"] = dict(losses=losses, seconds=time.perf_counter() - t0, ok=good,
                              latent_scale=r1.latent_scale, device=device)
    print(f"{'ok ' if good else 'BAD'} training on {device} (bf16): losses {losses}, {time.perf_counter() - t0:.0f} s")
    return good


def check_uncertainty(data: Path, report: dict, device: str) -> bool:
    import torch

    from lcmsr.ops import downsample_bicubic, upsample_bicubic
    from lcmsr.weights import load_model

    path = MODELS / "lcmsr_x4_rgb_small.safetensors"
    cpu, gpu = load_model(path, "cpu"), load_model(path, device)
    lr = torch.from_numpy(np.load(data / "neon_lr.npy")[:, :64, :64] / 127.5 - 1.0).float()[None]
    k = 4
    noise = torch.randn((k,) + cpu.latent_shape(64, 64), generator=torch.Generator().manual_seed(3))

    def run(model, dev):
        y = model.sr(lr.to(dev), noise=noise.to(dev), repeats=k)
        x = lr.to(dev).repeat(k, 1, 1, 1)
        for _ in range(3):
            y = y + upsample_bicubic(x - downsample_bicubic(y, 4), 4)
        return y.cpu()

    a, b = run(cpu, "cpu"), run(gpu, device)
    diff = float((a - b).abs().max())
    spread = float(b.std(dim=0).mean())
    consistent = float((downsample_bicubic(b, 4) - lr).abs().mean())
    good = diff < 2e-3 and spread > 1e-3 and consistent < 1e-2
    report["uncertainty"] = dict(samples=k, cuda_vs_cpu_max=diff, spread_mean=spread,
                                 lr_consistency_mae_model_space=consistent, ok=good)
    print(f"{'ok ' if good else 'BAD'} uncertainty x{k} + back-projection: |cuda-cpu|max {diff:.2e}, "
          f"spread {spread:.3f}, |degrade(SR)-LR| {consistent:.2e} (model space)")
    return good


def bench_cuda(report: dict, device: str) -> bool:
    import torch

    from lcmsr.inference import Inference, InferenceOptions
    from lcmsr.weights import load_model

    rows = []
    for path in sorted(MODELS.glob("*.safetensors")):
        from lcmsr.runtime import resolve_precision

        auto, _ = resolve_precision("auto", torch.device(device))
        for name, precision, cl in (("fp32", "fp32", False), ("fp32+channels_last", "fp32", True),
                                    ("bf16", "bf16", False), ("bf16+channels_last", "bf16", True),
                                    (f"default (auto = {auto})", auto, None)):
            model = load_model(path, device)
            run = Inference(model, device, InferenceOptions(precision=precision, channels_last=cl))
            if cl is None:
                rows_layout = run.channels_last
            lr = torch.rand(8, model.bands, 256, 256, device=device) * 2 - 1
            noise = torch.randn((8,) + model.latent_shape(256, 256), device=device)
            for _ in range(3):
                run.sr(lr, noise=noise)
            torch.cuda.synchronize()
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                run.sr(lr, noise=noise)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times))
            mp = 8 * (256 * 4) ** 2 / 1e6
            rows.append(dict(model=path.name, variant=name, seconds_per_batch=sec, output_mp_per_s=mp / sec,
                             peak_gib=torch.cuda.max_memory_allocated() / 2**30))
            torch.cuda.reset_peak_memory_stats()
            del run, model
            torch.cuda.empty_cache()
    for r in rows:
        base = next(x for x in rows if x["model"] == r["model"] and x["variant"] == "fp32")
        r["speedup_vs_fp32"] = base["seconds_per_batch"] / r["seconds_per_batch"]
        print(f"    {r['model']} {r['variant']}: {r['output_mp_per_s']:.1f} MP/s "
              f"({r['speedup_vs_fp32']:.2f}x fp32), peak {r['peak_gib']:.1f} GiB")
    report["speed"] = dict(batch=8, tile_lr=256, rows=rows, auto=auto, default_channels_last=rows_layout)
    print(f"    default on {device}: precision {auto}, channels_last {rows_layout}")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path, help="write the .npy inputs into this folder (needs GDAL) and stop")
    ap.add_argument("--data", type=Path, default=REPO / "build" / "gpu-check")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "gpu-check")
    ap.add_argument("--device", default="cuda", help="compared with the CPU (cpu: only checks this script)")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this check is for the GPU machine", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device}
    ok = check_samplers(args.data, report, args.device)
    ok = check_training(args.data, args.out, report, args.device) and ok
    ok = check_uncertainty(args.data, report, args.device) and ok
    if args.device.startswith("cuda"):
        ok = bench_cuda(report, args.device) and ok
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
