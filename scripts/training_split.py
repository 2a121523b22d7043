#!/usr/bin/env python3
"""The default model's training tile, minus the demo sample's window, as four rectangles.

One definition of the cut (data/manifest.json: ``excluded_windows``) for every script that
reads the training data — the recipe's VRTs, the linear reference, the packed .npy arrays — so
none of them can let the demo sample's pixels into training.

  .venv/bin/python scripts/training_split.py --vrt build/default      # writes yell_{top,...}.vrt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAINING_TILE = "train/2019_YELL_2_528000_4978000_image_crop2.tif"
PIECES = ("top", "bottom", "left", "right")


def training_boxes(data: str | Path = "data") -> tuple[Path, dict[str, tuple[int, int, int, int]]]:
    """(tile path, {piece: (x, y, width, height)}) covering the tile except its excluded window."""
    from osgeo import gdal

    data = Path(data)
    manifest = json.loads((data / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == TRAINING_TILE)
    win = entry["excluded_windows"][0]
    tile = data / entry["path"]
    ds = gdal.Open(str(tile))
    width, height = ds.RasterXSize, ds.RasterYSize
    x0, y0, w, h = win["x"], win["y"], win["width"], win["height"]
    boxes = {"top": (0, 0, width, y0), "bottom": (0, y0 + h, width, height - y0 - h),
             "left": (0, y0, x0, h), "right": (x0 + w, y0, width - x0 - w, h)}
    return tile, boxes


def training_pieces(data: str | Path = "data"):
    """[(piece name, (3, h, w) float32 RGB array)] of the four rectangles."""
    from eval_model import read_rgb

    tile, boxes = training_boxes(data)
    rgb = read_rgb(str(tile))
    return [(name, rgb[:, y:y + h, x:x + w]) for name, (x, y, w, h) in boxes.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data")
    p.add_argument("--vrt", required=True, metavar="FOLDER", help="write yell_<piece>.vrt here")
    a = p.parse_args(argv)
    from osgeo import gdal

    gdal.UseExceptions()
    tile, boxes = training_boxes(a.data)
    Path(a.vrt).mkdir(parents=True, exist_ok=True)
    for name, box in boxes.items():
        gdal.Translate(str(Path(a.vrt) / f"yell_{name}.vrt"), gdal.Open(str(tile)), srcWin=list(box), format="VRT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
