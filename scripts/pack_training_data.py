#!/usr/bin/env python3
"""Pack the default model's training and validation data as .npy arrays for a machine without GDAL.

The GPU machine has torch but neither GDAL nor QGIS; the training CLI reads ``(C, H, W)`` ``.npy``
files there (memory-mapped, never unpickled).  This writes, from the `make data` folder:

  OUT/train_{top,bottom,left,right}.npy   the training tile minus the demo window (as train_default.sh)
  OUT/val_<name>.npy                      the four validation tiles (their GDAL NoData is not kept)

about 17 MiB of uint8 in all, well inside what the device tool carries (64 MiB).  On the GPU machine:

  PYTHONPATH=backend python -m lcmsr train-autoencoder OUT/train_*.npy --val OUT/val_*.npy --device cuda ...

  .venv/bin/python scripts/pack_training_data.py [--data data] [--out build/gpu-data]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_model import read_rgb  # noqa: E402
from training_split import training_pieces  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data")
    p.add_argument("--out", default="build/gpu-data")
    a = p.parse_args(argv)
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, piece in training_pieces(data):
        written.append(out / f"train_{name}.npy")
        np.save(written[-1], np.ascontiguousarray(piece.astype(np.uint8)))
    for path in sorted((data / "val").iterdir()):
        written.append(out / f"val_{path.stem}.npy")
        np.save(written[-1], read_rgb(str(path)).astype(np.uint8))
    total = sum(f.stat().st_size for f in written)
    print(f"{len(written)} arrays, {total / 2**20:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
