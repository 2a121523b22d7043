#!/usr/bin/env python
"""Issue 18's check: on an LR raster of SIZE^2 real pixels, `lcmsr sr` with the defaults must give a first
estimate of the time left within 30 % of the real remaining time, and peak RSS at most 1.5 GB.

Builds build/eta_SIZE.tif, an 8-bit RGB GeoTIFF of real aerial imagery (the NEON crop
data/train/2019_YELL_2_528000_4978000_image_crop2.tif, mirrored past its 2299 x 2472 pixels; declared at
0.4 m, the shipped aerial model's LR pixel), runs `lcmsr sr` on it under `/usr/bin/time -v` (or
getrusage of the child where that tool is missing), timestamps every line the command logs, and prints
each estimate against the real time left, then the verdict.

    .venv/bin/python scripts/check_eta_memory.py --size 2048                 # the issue's case (many minutes)
    .venv/bin/python scripts/check_eta_memory.py --size 512 -- --precision bf16   # after --: more `lcmsr sr` flags
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from real_raster import write_rgb  # noqa: E402  (scripts/, beside this file)

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data" / "train" / "2019_YELL_2_528000_4978000_image_crop2.tif"
ETA = re.compile(r"progress: tile (\d+)/(\d+), ([\d.]+) MP/s, about (.+) left")
TIME_TOOL = "/usr/bin/time"


def seconds(text: str) -> float:
    """'45 s', '3 min 05 s', '2 h 07 min' (lcmsr.progress.duration) -> seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+) (h|min|s)\b", text)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="LR pixels a side (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.30, help="first estimate's allowed error (default 0.30)")
    p.add_argument("--max-rss-gb", type=float, default=1.5)
    p.add_argument("sr_args", nargs="*", help="after --: more `lcmsr sr` options")
    args = p.parse_args()
    build = REPO / "build"
    build.mkdir(exist_ok=True)
    src, dst = build / f"eta_{args.size}.tif", build / f"eta_{args.size}_sr.tif"
    if not src.exists():
        write_rgb(src, args.size, SOURCE)
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "lcmsr", "sr", str(src), str(dst), "--quiet", *args.sr_args]
    timed = shutil.which(TIME_TOOL) is not None
    if timed:
        command = [TIME_TOOL, "-v", *command]
    print("$", " ".join(command), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    estimates, rss_kib, wrote_at = [], None, None
    for line in proc.stderr:
        now = time.monotonic() - start
        line = line.rstrip()
        m = ETA.search(line)
        if m:
            estimates.append((now, int(m.group(1)), int(m.group(2)), float(m.group(3)), seconds(m.group(4))))
        elif line.startswith("wrote "):
            wrote_at = now        # the job's end; closing the process after it is not work the estimate covers
        elif "Maximum resident set size" in line:
            rss_kib = int(line.rsplit(":", 1)[1])
        if not line.startswith("\t"):
            print(f"[{now:7.1f} s] {line}", flush=True)
    proc.wait()
    end = time.monotonic() - start
    if not timed:
        rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        print(f"lcmsr sr failed (exit {proc.returncode})")
        return 1
    finish = wrote_at or end
    print(f"\n{'at':>8} {'tile':>10} {'MP/s':>6} {'said left':>10} {'real left':>10} {'error':>7}")
    for t, done, total, rate, left in estimates:
        real = finish - t
        print(f"{t:7.1f}s {done:>5}/{total:<4} {rate:6.2f} {left:9.0f}s {real:9.1f}s "
              f"{100 * (left - real) / real:+6.0f}%")
    ok = True
    if estimates:
        t, _, _, _, left = estimates[0]
        error = (left - (finish - t)) / (finish - t)
        ok &= abs(error) <= args.tolerance
        print(f"first estimate: {left:.0f} s left at {t:.1f} s; real {finish - t:.1f} s: error {100 * error:+.0f} % "
              f"({'within' if abs(error) <= args.tolerance else 'OUTSIDE'} {100 * args.tolerance:.0f} %)")
    else:
        ok = False
        print("no estimate was logged (a one-batch raster has none to give)")
    peak = rss_kib * 1024 / 1e9 if rss_kib else float("nan")
    ok &= peak <= args.max_rss_gb
    print(f"peak RSS {peak:.2f} GB ({'within' if peak <= args.max_rss_gb else 'OVER'} {args.max_rss_gb} GB), "
          f"job done at {finish:.0f} s, process at {end:.0f} s")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
