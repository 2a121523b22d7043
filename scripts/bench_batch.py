"""Issue 23's scaling check of `lcmsr batch`: two workers of one thread each against one worker, same job.

The job: N real 8-bit RGB rasters (the NEON sample mirrored to SIZE px, scripts/real_raster.py) through the
shipped aerial model at the product's defaults, on a local Dask cluster of 1 and then 2 single-threaded
workers (the cluster is started and its workers have imported torch before the clock: the job's time, not start-up).
Each run writes into a fresh folder; the outputs of the two runs must be byte-identical.  Run it when the
machine is quiet (`uptime`): on 2 shared cores another process's load shows up as lost speed-up.

    .venv/bin/python scripts/bench_batch.py [--inputs 4] [--size 256] [--out build/bench-batch]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "scripts"))
MODEL = REPO / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors"


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live descendants (the workers) so far."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run(inputs, out: Path, workers: int) -> dict:
    from lcmsr.raster.pipeline import SROptions
    from lcmsr.sr.batch import run_batch
    from lcmsr.sr.executors import make_executor

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    executor = make_executor("dask", workers=workers, device="cpu")
    executor.warm()     # torch and GDAL imported on every worker before the clock: the job's time, not start-up
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    try:
        result = run_batch(inputs, str(out), str(MODEL), SROptions(device="cpu"), executor=executor, mosaic=False)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    finally:
        executor.close()
    if result.exit_status:
        raise SystemExit(f"the batch failed: {[(r.origin, r.error) for r in result.failed]}")
    # cores_obtained: CPU seconds this process and its workers got per second of the job; on an idle machine about
    # the worker count, on a loaded one what the neighbours left (no speed-up can show above that).
    return {"workers": workers, "seconds": round(seconds, 2), "cluster_start_s": round(started - start, 2),
            "cores_obtained": round(cpu / seconds, 2),
            "outputs": {os.path.basename(r.dst): Path(r.dst).read_bytes() for r in result.items}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="LR pixels a side of each input")
    parser.add_argument("--out", default=str(REPO / "build" / "bench-batch"))
    parser.add_argument("--rounds", type=int, default=2, help="alternate one and two workers this many times; "
                                                               "the best of each is compared")
    args = parser.parse_args(argv)
    from real_raster import write_rgb

    out = Path(args.out)
    data = out / "inputs"
    data.mkdir(parents=True, exist_ok=True)
    inputs = []
    for i in range(args.inputs):
        path = data / f"neon_{args.size}_{i}.tif"
        if not path.exists():
            write_rgb(path, args.size)
        inputs.append(str(path))
    rounds = []
    for _ in range(args.rounds):   # alternated, so a neighbour's load falls on both
        rounds.append((os.getloadavg()[0], run(inputs, out / "one", 1), run(inputs, out / "two", 2)))
    reference = rounds[0][1]["outputs"]
    identical = all(r["outputs"] == reference for _, one_, two_ in rounds for r in (one_, two_))
    one = min((r[1] for r in rounds), key=lambda r: r["seconds"])
    two = min((r[2] for r in rounds), key=lambda r: r["seconds"])
    speedup = one["seconds"] / two["seconds"]
    report = {"job": f"{args.inputs} x {args.size}^2 RGB -> x4, {MODEL.name}, defaults, CPU",
              "rounds": [{"load_before": round(load, 2), "one_worker_s": a["seconds"], "two_workers_s": b["seconds"],
                          "cores_obtained": [a["cores_obtained"], b["cores_obtained"]]} for load, a, b in rounds],
              "one_worker": {k: v for k, v in one.items() if k != "outputs"},
              "two_workers": {k: v for k, v in two.items() if k != "outputs"},
              "speedup": round(speedup, 2), "identical_outputs": identical, "cpus": os.cpu_count()}
    print(json.dumps(report, indent=1))
    print(f"| {report['job']} | {one['seconds']:.1f} s | {two['seconds']:.1f} s | {speedup:.2f}x | "
          f"{'identical' if identical else 'DIFFERENT'} |")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
