"""Issue 16's silent-corruption, hang and training-folder families (fresh cases, not the attack's).

``run_corruption``: values at the ends of their types (Int16 extremes, UInt64 max, Int64 near 2**62,
a single 3e38 / 1e300 / -1.7e308 pixel, Float64 denormals), RPC-only georeferencing, and inputs that
would block forever (FIFOs, a character device, a 10^6 x 10^6 VRT to evaluate).  A success must have
finite pixels inside each input band's value range, of the input's type (and RPCs that put a ground
point on the same place); a refusal must be one line naming the input; nothing may be left behind.

``run_trainfolder``: trainings sharing a folder (a second and a third on a locked one), damaged
newest checkpoints, zero intervals, a file as the folder, SIGTERM and SIGINT during training.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from robustness_cases import (CLEAR, CORRECT, CRASH, HANG, LOST, OVERLAP, PY, TILE, WRONG, _vrt, check_sr_output,
                              child_env, file_hash, leftovers, one_line, train_sources, write_raster)

HANG_TIMEOUT = 60   # a refusal takes seconds; a FIFO that is opened blocks until this kills it


def _spiked(value, type_name):
    def values(b, rng, shape):
        import numpy as np

        a = rng.normal(0.2, 0.1, shape)
        a[shape[0] // 3, shape[1] // 2] = value
        return a
    return lambda d: write_raster(d / f"spike_{type_name}.tif", 24, 20, 3, type_name, values=values)


def _ints(name, type_name, lo, hi):
    def values(b, rng, shape):
        import numpy as np

        dtype = np.int64 if lo < 0 else np.uint64
        return np.where(rng.random(shape) < 0.5, dtype(lo), dtype(hi)) if hi - lo > 2**40 else \
            rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)
    return lambda d: write_raster(d / f"{name}.tif", 22, 18, 3, type_name, values=values)


def _near_2_62(d: Path) -> Path:
    import numpy as np

    return write_raster(d / "int64_2_62.tif", 20, 20, 3, "Int64",
                        values=lambda b, rng, shape: np.int64(2**62) + rng.integers(0, 10**6, shape))


def _denormals(d: Path) -> Path:
    return write_raster(d / "denormal.tif", 20, 20, 3, "Float64",
                        values=lambda b, rng, shape: rng.normal(0, 1, shape) * 1e-310)


def _rpc_only(d: Path) -> Path:
    from robustness_cases import _gdal

    gdal = _gdal()
    p = write_raster(d / "rpc_only.tif", 30, 26, 3, geotransform=None, crs=False)
    ds = gdal.Open(str(p), gdal.GA_Update)
    ds.SetMetadata(RPC, "RPC")
    ds = None
    return p


RPC = {"LINE_OFF": "12.5", "SAMP_OFF": "14.75", "LAT_OFF": "-33.9", "LONG_OFF": "151.2", "HEIGHT_OFF": "20",
       "LINE_SCALE": "13", "SAMP_SCALE": "15", "LAT_SCALE": "0.004", "LONG_SCALE": "0.005", "HEIGHT_SCALE": "50",
       "LINE_NUM_COEFF": " ".join(["0.001", "0.02", "-1.01", "0.003"] + ["0"] * 16),
       "LINE_DEN_COEFF": " ".join(["1", "0.001"] + ["0"] * 18),
       "SAMP_NUM_COEFF": " ".join(["-0.002", "0.99", "0.04", "0.001"] + ["0"] * 16),
       "SAMP_DEN_COEFF": " ".join(["1"] + ["0"] * 19)}


def _rpc_problem(src: Path, dst: Path, scale: int) -> str:
    from robustness_cases import _gdal

    gdal = _gdal()
    a, b = gdal.Open(str(src)), gdal.Open(str(dst))
    if not b.GetMetadata("RPC"):
        return "the output lost its RPCs"
    ta, tb = gdal.Transformer(a, None, ["METHOD=RPC"]), gdal.Transformer(b, None, ["METHOD=RPC"])
    for lon, lat in ((151.2, -33.9), (151.203, -33.902), (151.198, -33.897)):
        pa, pb = ta.TransformPoint(1, lon, lat, 20)[1], tb.TransformPoint(1, lon, lat, 20)[1]
        if abs(pb[0] - scale * pa[0]) > 0.1 or abs(pb[1] - scale * pa[1]) > 0.1:
            return f"ground point ({lon}, {lat}) is at {pb[:2]} in the output, {[scale * v for v in pa[:2]]} expected"
    return ""


def _range_problem(src: Path, dst: Path) -> str:
    """'' when every valid output pixel is finite and inside its input band's valid value range."""
    import numpy as np

    from robustness_cases import _gdal

    gdal = _gdal()
    a, b = gdal.Open(str(src)), gdal.Open(str(dst))
    for i in range(1, b.RasterCount + 1):
        x = a.GetRasterBand(i).ReadAsArray()
        y = b.GetRasterBand(i).ReadAsArray()
        ok = b.GetRasterBand(i).GetMaskBand().ReadAsArray() != 0
        x = x[np.isfinite(x)] if x.dtype.kind == "f" else x.ravel()
        y = y[ok]
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            return f"band {i}: {int((~np.isfinite(y)).sum())} non-finite pixel(s)"
        if y.size and (y.min() < x.min() or y.max() > x.max()):
            return f"band {i}: output {y.min()}..{y.max()} outside the input's {x.min()}..{x.max()}"
    return ""


def _run(command, timeout=120):
    t0 = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0
    return proc, time.monotonic() - t0


def _refusal(proc, names) -> tuple[str, str]:
    """(outcome, detail) of a run that should have refused in one line naming one of ``names``."""
    err = proc.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if proc.returncode == 0:
        return WRONG, "succeeded"
    if "Traceback" in err or proc.returncode != 2 or not last.startswith("lcmsr"):
        return CRASH, f"exit {proc.returncode}: {err[-500:]}"
    if not any(str(n) in last for n in names):
        return CRASH, f"the error names none of {[str(n) for n in names]}: {last}"
    return CLEAR, last


# ====================================================================== corruption + hangs

def run_corruption(suite) -> None:
    fam = suite.family("corruption", "extreme values, 64-bit types, RPCs and inputs that would hang",
                       "Int16 extremes, UInt64 max, Int64 near 2**62 (also as Float32), a single 3e38 / 1e300 / "
                       "-1.7e308 pixel, Float64 denormals, RPC-only georeferencing; a FIFO or /dev/zero as input, "
                       "model or eval raster; eval of a 10^6 x 10^6 VRT")
    root = suite.work / "corruption"
    model = suite.models.get(3, 2)
    # (name, make, extra args, expect: "output" | "refuse", quick)
    cases = [
        ("Int16 at both ends of its range", _ints("int16_ends", "Int16", -32768, 32767), [], "output", False),
        ("UInt64 0 and 2**64-1", _ints("uint64_max", "UInt64", 0, 2**64 - 1), [], "output", False),
        ("Int64 -2**63 and 2**63-1", _ints("int64_ends", "Int64", -2**63, 2**63 - 1), [], "output", False),
        ("Int64 near 2**62", _near_2_62, [], "output", False),
        ("Int64 near 2**62 as Float32 output", _near_2_62, ["--output-type", "float32"], "refuse", False),
        ("Float32 with one 3e38 pixel", _spiked(3e38, "Float32"), [], "output", False),
        ("Float64 with one 1e300 pixel", _spiked(1e300, "Float64"), [], "output", True),
        ("Float64 with one -1.7e308 pixel", _spiked(-1.7e308, "Float64"), [], "output", False),
        ("Float64 with one 1e300 pixel as Float32 output", _spiked(1e300, "Float64"), ["--output-type", "float32"],
         "output", False),
        ("Float64 denormals", _denormals, [], "output", False),
        ("RPC-only georeferencing", _rpc_only, [], "output", False),
    ]
    for i, (name, make, extra, expect, quick) in enumerate(cases):
        if suite.quick and not quick:
            continue
        folder = root / f"{i:02d}"
        out_dir = folder / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        src = make(folder)
        before = file_hash(src)
        dst = out_dir / "sr.tif"
        proc, seconds = _run([PY, "-m", "lcmsr", "sr", str(src), str(dst), "--model", str(model), "--device", "cpu",
                              "--tile", str(TILE), "--overlap", str(OVERLAP), "--quiet", "--ignore-domain", *extra])
        if proc is None:
            suite.record(fam, name, HANG, "no exit within 120 s", seconds)
            continue
        rest = leftovers(out_dir, keep=("sr.tif",) if proc.returncode == 0 else ())
        if file_hash(src) != before:
            outcome, detail = LOST, "the input was modified"
        elif rest:
            outcome, detail = LOST, f"left {rest}"
        elif proc.returncode == 0:
            if expect == "refuse":
                outcome, detail = WRONG, "an output type that cannot hold the input was written"
            else:
                problem = ((check_sr_output(src, dst, 2, False) if not extra else "") or _range_problem(src, dst)
                           or (_rpc_problem(src, dst, 2) if "rpc" in src.name else ""))
                outcome, detail = (WRONG, problem) if problem else (CORRECT, "")
        elif expect == "output":
            outcome, detail = WRONG, f"refused: {one_line(proc.stderr)[-300:]}"
        else:
            outcome, detail = _refusal(proc, (src.name, "band"))
        suite.record(fam, name, outcome, detail, seconds)
    _hangs(suite, fam, root / "hangs", model)


def _hangs(suite, fam, folder: Path, model: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    good = write_raster(folder / "good.tif", 20, 20, 3)
    fifo = folder / "pipe.tif"
    if not fifo.exists():
        os.mkfifo(fifo)
    huge = _vrt(folder, 10**6, 10**6, str(good))
    sr = [PY, "-m", "lcmsr", "sr"]
    cases = [  # (name, command, names the error must mention, quick)
        ("a FIFO as the SR input", sr + [str(fifo), str(folder / "o1.tif"), "--model", str(model), "--device", "cpu"],
         (fifo.name,), True),
        ("a FIFO as the model", sr + [str(good), str(folder / "o2.tif"), "--model", str(fifo), "--device", "cpu"],
         (fifo.name,), False),
        ("/dev/zero as the SR input", sr + ["/dev/zero", str(folder / "o3.tif"), "--model", str(model)],
         ("/dev/zero",), False),
        ("a FIFO as the evaluated raster", [PY, "-m", "lcmsr", "eval", "--sr", str(fifo), "--hr", str(good),
                                            "--scale", "2", "--no-lpips"], (fifo.name,), False),
        ("eval of a 10^6 x 10^6 VRT", [PY, "-m", "lcmsr", "eval", "--sr", str(huge), "--hr", str(huge),
                                       "--scale", "2", "--no-lpips"], (huge.name,), False),
    ]
    if not suite.quick:  # the model-file check is lcmsr.weights' (the modelfile helper's): a HANG until merged
        cases.append(("a FIFO given to `lcmsr info`", [PY, "-m", "lcmsr", "info", str(fifo)], (fifo.name,), False))
    for name, command, names, quick in cases:
        if suite.quick and not quick:
            continue
        before = sorted(p.name for p in folder.iterdir())
        proc, seconds = _run(command, timeout=HANG_TIMEOUT)
        if proc is None:
            suite.record(fam, name, HANG, f"no exit within {HANG_TIMEOUT} s", seconds)
            continue
        after = sorted(p.name for p in folder.iterdir())
        if after != before:
            suite.record(fam, name, LOST, f"left {sorted(set(after) - set(before))}", seconds)
            continue
        outcome, detail = _refusal(proc, names)
        suite.record(fam, name, outcome, detail, seconds)


# ====================================================================== training folders

def _train_cmd(src: Path, ckdir: Path, iterations: int, every: int = 2, *extra) -> list[str]:
    return [PY, "-m", "lcmsr", "train-autoencoder", str(src), "--scale", "4", "--patch", "32", "--batch", "2",
            "--config", "tiny", "--device", "cpu", "--no-lpips", "--lr", "1e-3", "--checkpoint-dir", str(ckdir),
            "--iterations", str(iterations), "--checkpoint-every", str(every), "--keep-checkpoints", "3", *extra]


def run_trainfolder(suite) -> None:
    import numpy as np

    fam = suite.family("trainfolder", "training folders: locks, damaged checkpoints, signals",
                       "a second and a third training on a locked checkpoint folder, SIGTERM/SIGINT mid-training "
                       "then resume, truncated/null/all-damaged newest checkpoint JSON, interval options of 0, "
                       "a file as the checkpoint folder")
    root = suite.work / "trainfolder"
    root.mkdir(parents=True, exist_ok=True)
    src = root / "src.npy"
    np.save(src, train_sources()[0])
    for sig in ((signal.SIGTERM,) if suite.quick else (signal.SIGTERM, signal.SIGINT)):
        _locked_then_signalled(suite, fam, root / f"locked-{sig.name}", src, sig)
    if suite.quick:
        return
    for damage in ("truncated", "null", "all"):
        _damaged(suite, fam, root / f"damaged-{damage}", src, damage)
    for flag in ("--checkpoint-every", "--log-every", "--val-every"):
        ckdir = root / f"zero{flag}"
        proc, seconds = _run(_train_cmd(src, ckdir, 3) + [flag, "0"])
        outcome, detail = (HANG, "no exit") if proc is None else _refusal(proc, (flag.strip("-").replace("-", "_"),
                                                                                 flag))
        if outcome == CLEAR and ckdir.exists():
            outcome, detail = LOST, f"made {ckdir.name} for a refused run"
        suite.record(fam, f"{flag} 0", outcome, detail, seconds)
    afile = root / "a-file"
    afile.write_text("keep me")
    proc, seconds = _run(_train_cmd(src, afile, 3))
    outcome, detail = (HANG, "no exit") if proc is None else _refusal(proc, (str(afile),))
    if outcome == CLEAR and ("is a file" not in detail or afile.read_text() != "keep me"):
        outcome, detail = WRONG, f"does not say the folder is a file, or changed it: {detail}"
    suite.record(fam, "a regular file as --checkpoint-dir", outcome, detail, seconds)


def _locked_then_signalled(suite, fam, ckdir: Path, src: Path, sig) -> None:
    """Training A holds the folder; B and C must be refused naming the folder and A; then ``sig`` to A:
    non-zero exit, a line saying where the resumable checkpoint is, and a resume that continues from it."""
    name = f"second and third training on a locked folder, then {sig.name}"
    t0 = time.monotonic()
    a = subprocess.Popen(_train_cmd(src, ckdir, 10**6, 10**6, "--quiet"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        lock = ckdir / ".lcmsr-train.lock"   # A is training once it holds the folder
        while a.poll() is None and not (lock.exists() and f"process {a.pid}" in lock.read_text()):
            if time.monotonic() - t0 > 120:
                raise subprocess.TimeoutExpired("training A", 120)
            time.sleep(0.2)
        time.sleep(2)   # a few steps in
        for who in ("second", "third"):
            proc, _ = _run(_train_cmd(src, ckdir, 3))
            if proc is None:
                suite.record(fam, name, HANG, f"the {who} training did not exit", time.monotonic() - t0)
                return
            outcome, detail = _refusal(proc, (str(ckdir),))
            if outcome != CLEAR or f"process {a.pid}" not in detail:
                suite.record(fam, name, outcome if outcome != CLEAR else WRONG,
                             f"{who}: {detail or 'does not name the process holding the folder'}", time.monotonic() - t0)
                return
        a.send_signal(sig)
        out, err = a.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        a.kill()
        a.wait()
        suite.record(fam, name, HANG, f"training did not stop on {sig.name}", time.monotonic() - t0)
        return
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    said = [ln for ln in err.splitlines() if f"stopped by {sig.name}" in ln and "resumable checkpoint" in ln]
    if a.returncode == 0 or not said or "Traceback" in err:
        suite.record(fam, name, CRASH if "Traceback" in err else WRONG,
                     f"exit {a.returncode}, said: {one_line(err[-300:])}", time.monotonic() - t0)
        return
    # Resume for one more step than the checkpoint holds: it must start where the signal left off.
    step = max(int(p.name[5:13]) for p in ckdir.glob("step-*.json"))
    proc, _ = _run(_train_cmd(src, ckdir, step + 1, 10**6, "--resume"))
    if proc is None or proc.returncode != 0 or f"resumed from step {step}" not in proc.stderr:
        suite.record(fam, name, WRONG, f"resume after {sig.name} failed: "
                                       f"{one_line((proc.stderr if proc else 'hang')[-300:])}", time.monotonic() - t0)
        return
    suite.record(fam, name, CORRECT, f"refused twice, stopped at step {step} with a checkpoint, resumed",
                 time.monotonic() - t0)


def _damaged(suite, fam, ckdir: Path, src: Path, damage: str) -> None:
    name = {"truncated": "truncated newest checkpoint JSON", "null": "newest checkpoint JSON is null",
            "all": "every checkpoint JSON damaged"}[damage]
    proc, _ = _run(_train_cmd(src, ckdir, 4, 2))
    if proc is None or proc.returncode != 0:
        suite.record(fam, name, WRONG, "could not make the checkpoints")
        return
    found = sorted(ckdir.glob("step-*.json"))
    for js in (found if damage == "all" else found[-1:]):
        js.write_text(js.read_text()[:len(js.read_text()) // 3] if damage != "null" else "null")
    proc, seconds = _run(_train_cmd(src, ckdir, 6, 2, "--resume"))
    if proc is None:
        suite.record(fam, name, HANG, "no exit", seconds)
    elif damage == "all":
        suite.record(fam, name, *_refusal(proc, (str(ckdir),)), seconds)
    elif proc.returncode == 0 and "resumed from step 2" in proc.stderr and found[-1].name in proc.stderr:
        suite.record(fam, name, CORRECT, "fell back to step 2 with a warning naming the damaged one", seconds)
    else:
        suite.record(fam, name, CRASH if "Traceback" in proc.stderr else WRONG,
                     f"exit {proc.returncode}: {one_line(proc.stderr[-400:])}", seconds)
