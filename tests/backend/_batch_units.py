"""Stand-in unit functions for the batch driver's own tests (job log, resume, per-item errors, executors).

A stand-in "raster" is a small JSON file: ``{"units": N, "fail": "plan" | "unit:I" | null, "delay": S}``.
The parts and the output are text derived from the input's bytes and the unit index, written atomically
like the real units' files.  The real units (lcmsr.sr.units) are exercised in test_batch_rasters.py.
"""
import hashlib
import json
import os
import time
from pathlib import Path

from lcmsr.atomic import AtomicPath


def write_input(path, units=2, fail=None, delay=0.0, auto_model=None) -> str:
    """``auto_model``: the model file "chosen by domain" when the batch names none."""
    with open(path, "w") as f:
        json.dump({"units": units, "fail": fail, "delay": delay, "auto_model": auto_model}, f)
    return str(path)


def _read(src) -> dict:
    try:
        with open(src) as f:
            return json.load(f)
    except ValueError:
        raise ValueError(f"{src} is not a raster GDAL can read (stand-in)") from None


def plan_scene(src, dst, model_or_path=None, options=None, progress=None, *, unit_size=0):
    spec = _read(src)
    if spec.get("fail") == "plan":
        raise ValueError(f"{os.path.basename(src)} is outside the model's domain: input pixel 300 m (stand-in)")
    folder = os.path.join(os.path.dirname(dst), ".parts", os.path.basename(dst))
    plan = {"src": os.path.abspath(src), "fail": spec.get("fail"), "delay": spec.get("delay", 0)}
    units = [{"scene": dst, "index": i, "region": [i, 0, 1, 1], "part": os.path.join(folder, f"{i}.part"),
              "plan": plan} for i in range(int(spec["units"]))]
    model = model_or_path or spec.get("auto_model")
    sha = hashlib.sha256(Path(model).read_bytes()).hexdigest() if model else None
    return {"src": os.path.abspath(src), "dst": dst, "model": model, "model_sha256": sha,
            "plan": plan, "units": units}


def run_unit(unit, progress=None):
    plan = unit["plan"]
    if plan["fail"] == f"unit:{unit['index']}":
        raise RuntimeError(f"unit {unit['index']} broke (stand-in)")
    start = time.time()
    time.sleep(plan["delay"])
    with open(plan["src"], "rb") as f:
        text = hashlib.sha256(f.read()).hexdigest() + f":{unit['index']}\n"
    os.makedirs(os.path.dirname(unit["part"]), exist_ok=True)
    with AtomicPath(unit["part"]) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return {"part": unit["part"], "sha256": hashlib.sha256(text.encode()).hexdigest(), "seconds": 0.0,
            "tiles": 1, "device": f"cpu pid {os.getpid()} gpu {os.environ.get('CUDA_VISIBLE_DEVICES', '-')} "
                                  f"from {start:.3f} to {time.time():.3f}"}


def assemble(scene, progress=None):
    parts = []
    for unit in scene["units"]:
        with open(unit["part"]) as f:
            parts.append(f.read())
    with AtomicPath(scene["dst"]) as tmp:
        with open(tmp, "w") as f:
            f.write("".join(parts))
    for unit in scene["units"]:
        os.remove(unit["part"])
    with open(scene["dst"], "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return {"path": scene["dst"], "sha256": sha, "seconds": 0.0}
