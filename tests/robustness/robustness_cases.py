"""Fault injection and fuzzing of LCMSR: case generators, runners, outcome accounting, RELIABILITY.md.

Used by ``scripts/robustness.py`` (the full run, ``make robustness``) and by
``test_robustness_quick.py`` (a small subset inside ``make test``); both call the
same generators, so the quick run is a sample of the full one.

Every case ends in exactly one outcome of :data:`OUTCOMES`.  The suite passes
when no case is a crash, a hang, a lost/partial file or a wrong outcome.  Heavy
imports (torch, GDAL) happen inside functions: the training child imports this
module without GDAL.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
import queue
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable

CORRECT, CLEAR, WRONG, CRASH, HANG, LOST = (
    "correct output", "clear error", "wrong outcome", "crash", "hang", "lost/partial file")
OUTCOMES = (CORRECT, CLEAR, WRONG, CRASH, HANG, LOST)
BAD = (WRONG, CRASH, HANG, LOST)

# SR settings of every raster case: tiles of 32 LR pixels make 1x1 .. 41x41 rasters span one to
# several tiles (the tiny models align tiles to 8 LR pixels, so overlap 4 rounds up to 8 < 32/2;
# at x3 they align to 16, so x3 cases use tiles of 64).
TILE, OVERLAP = 32, 4


def tile_for(scale: int) -> int:
    return 64 if scale == 3 else TILE
CLI_TIMEOUT = 120
QGIS_TIMEOUT = 120


@dataclass
class Outcome:
    family: str
    case: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Family:
    key: str
    title: str
    tried: str
    results: list[Outcome] = field(default_factory=list)


def child_env(**extra) -> dict:
    env = dict(os.environ)
    # The machine's cores are shared: one thread per child, and one is also the fastest for tiny models.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", QT_QPA_PLATFORM="offscreen")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "backend"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env.update(extra)
    return env


def file_hash(path) -> str | None:
    """Hash of a file (or a folder's listing); None when absent — the 'input untouched' check."""
    p = Path(path)
    if p.is_dir():
        return "dir:" + ",".join(sorted(x.name for x in p.iterdir()))
    if not p.exists():
        return None
    h = hashlib.sha256()
    if p.suffix.lower() == ".vrt":
        # QGIS computes band statistics when it loads a layer, and GDAL keeps them in a VRT by rewriting
        # it (other formats get a .aux.xml beside them): QGIS's doing, not LCMSR's.  So a VRT counts as
        # untouched when what it describes — pixels, georeferencing — is unchanged.
        try:
            ds = _gdal().Open(str(p))
            if ds.RasterXSize * ds.RasterYSize <= 10**7:  # a huge virtual raster: its description only
                h.update(ds.ReadAsArray().tobytes())
            h.update(repr((ds.RasterXSize, ds.RasterYSize, ds.RasterCount)).encode())
            h.update(repr((ds.GetGeoTransform(), ds.GetProjection())).encode())
            ds = None
        except RuntimeError as exc:
            h.update(str(exc).encode())
        return "vrt:" + h.hexdigest()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() + f":{p.stat().st_mode:o}"


def leftovers(folder: Path, keep=()) -> list[str]:
    """Files in an output folder other than ``keep``: partial outputs, temp files, GDAL side files."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "…"


# ====================================================================== models

class Models:
    """Tiny random-weight models (one per band count and scale), made once per run."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._paths: dict[tuple[int, int], Path] = {}

    def get(self, bands: int, scale: int = 2) -> Path:
        key = (bands, scale)
        if key not in self._paths:
            import torch

            from lcmsr.config import tiny_config
            from lcmsr.model import build_model
            from lcmsr.weights import save_model

            torch.manual_seed(bands * 10 + scale)
            path = self.folder / f"tiny_b{bands}_x{scale}.safetensors"
            save_model(path, build_model(tiny_config(scale=scale, bands=bands)))
            os.chmod(path, 0o644)  # read by children running as another user (read-only destination cases)
            self._paths[key] = path
        return self._paths[key]


# ====================================================================== raster cases

@dataclass
class RasterCase:
    name: str
    make: Callable[[Path], Path]      # writes the input into a folder, returns the path given to SR
    expect: str                       # "output" | "error"
    bands: int = 3                    # the model's band count
    scale: int = 2
    all_nodata: bool = False          # every input pixel is nodata: so must every output pixel be
    quick: bool = False


def _gdal():
    from osgeo import gdal

    gdal.UseExceptions()
    return gdal


def _srs_wkt(epsg: int = 32633) -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_raster(path: Path, width: int, height: int, bands: int = 3, type_name: str = "Byte", *,
                 values=None, nodata=None, crs=True, geotransform="north-up", seed=0, driver="GTiff",
                 options=(), alpha=False, gcps=False) -> Path:
    """A GDAL raster of random values in the type's usual range (``values`` overrides them)."""
    import numpy as np

    gdal = _gdal()
    dt = gdal.GetDataTypeByName(type_name)
    rng = np.random.default_rng(seed)
    mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, dt)
    if geotransform == "north-up":
        mem.SetGeoTransform((500000.0, 2.0, 0.0, 4600000.0, 0.0, -2.0))
    elif geotransform == "rotated":
        mem.SetGeoTransform((500000.0, 1.7320508, 1.0, 4600000.0, 1.0, -1.7320508))
    elif geotransform == "south-up":
        mem.SetGeoTransform((500000.0, 2.0, 0.0, 4600000.0, 0.0, 2.0))
    elif geotransform == "tiny-pixels":
        mem.SetGeoTransform((12.5, 1e-9, 0.0, 41.9, 0.0, -1e-9))
    if crs and geotransform:
        mem.SetProjection(_srs_wkt())
    if gcps:
        mem.SetGCPs([gdal.GCP(500000.0 + 2 * x, 4600000.0 - 2 * y, 0.0, x, y)
                     for x, y in ((0, 0), (width, 0), (0, height), (width, height))], _srs_wkt())
    for b in range(bands):
        band = mem.GetRasterBand(b + 1)
        if values is not None:
            arr = values(b, rng, (height, width))
        elif type_name.startswith("C"):
            arr = (rng.normal(100, 30, (height, width)) + 1j * rng.normal(0, 30, (height, width)))
        elif type_name in ("Float32", "Float64"):
            arr = rng.normal(0.2, 0.1, (height, width))
        else:
            arr = rng.integers(0, 255, (height, width))
        band.WriteArray(np.asarray(arr))
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if alpha and b == bands - 1:
            band.SetColorInterpretation(gdal.GCI_AlphaBand)
    out = gdal.GetDriverByName(driver).CreateCopy(str(path), mem, options=list(options))
    out = None  # noqa: F841
    return path


def _sized(w, h, **kw):
    return lambda d: write_raster(d / f"in_{w}x{h}.tif", w, h, **kw)


def _truncated(fraction: float):
    def make(d: Path) -> Path:
        full = write_raster(d / "full.tif", 64, 64, 3, options=["TILED=YES", "BLOCKXSIZE=16", "BLOCKYSIZE=16",
                                                             "COMPRESS=DEFLATE"])
        data = full.read_bytes()
        p = d / f"truncated_{int(fraction * 1000)}.tif"
        p.write_bytes(data[:int(len(data) * fraction)])
        full.unlink()
        return p
    return make


def _bytes_file(name: str, data_fn: Callable[[random.Random], bytes]):
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data_fn(random.Random(name)))
        return p
    return make


def _corrupt_tiles(d: Path) -> Path:
    """A GeoTIFF whose header is intact but whose compressed tiles are overwritten with noise."""
    p = write_raster(d / "corrupt_tiles.tif", 64, 64, 3,
                     options=["TILED=YES", "BLOCKXSIZE=16", "BLOCKYSIZE=16", "COMPRESS=DEFLATE"])
    data = bytearray(p.read_bytes())
    rng = random.Random(7)
    for i in range(len(data) // 3, len(data) - 400):
        data[i] = rng.randrange(256)
    p.write_bytes(bytes(data))
    return p


def _vrt(d: Path, width: int, height: int, source: str) -> Path:
    p = d / f"virtual_{width}x{height}.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}'
        f'</SourceFilename><SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="8" ySize="8"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3))
    p.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{bands}</VRTDataset>')
    return p


def _huge_vrt(d: Path) -> Path:
    small = write_raster(d / "small.tif", 8, 8, 3)
    return _vrt(d, 200000, 200000, str(small))


def _dangling_vrt(d: Path) -> Path:
    return _vrt(d, 16, 16, str(d / "missing_source.tif"))


def _type_values(type_name: str):
    import numpy as np

    ranges = {"Byte": (0, 255), "Int8": (-128, 127), "UInt16": (0, 65535), "Int16": (-32768, 32767),
              "UInt32": (0, 2**32 - 1), "Int32": (-2**31, 2**31 - 1), "UInt64": (0, 2**40),
              "Int64": (-2**40, 2**40)}
    if type_name in ranges:
        lo, hi = ranges[type_name]
        # Both ends of the type's range, and values in between.
        return lambda b, rng, shape: np.where(rng.random(shape) < 0.1, lo,
                                              np.where(rng.random(shape) < 0.1, hi, rng.integers(lo, hi, shape)))
    return None


def gtiff_types() -> list[str]:
    """Every data type GDAL's GeoTIFF driver writes here (GDAL 3.6: no Int8; 3.7+: Int8)."""
    gdal = _gdal()
    return gdal.GetDriverByName("GTiff").GetMetadataItem("DMD_CREATIONDATATYPES").split()


def raster_cases() -> list[RasterCase]:
    import numpy as np

    cases: list[RasterCase] = []

    def add(name, make, expect="output", quick=False, **kw):
        cases.append(RasterCase(name, make, expect, quick=quick, **kw))

    # --- sizes: 1x1, 1xN, Nx1, primes, smaller than a tile, several tiles; scales 2, 3, 8
    for w, h in ((1, 1), (1, 7), (7, 1), (1, 41), (41, 1), (2, 2), (13, 17), (31, 29), (5, 11), (41, 37)):
        add(f"size {w}x{h}", _sized(w, h), quick=(w, h) in ((1, 1), (13, 17)))
    for scale in (3, 8):
        for w, h in ((1, 1), (3, 5), (23, 19)):
            add(f"size {w}x{h} x{scale}", _sized(w, h), scale=scale, quick=(scale, w) == (3, 23))

    # --- every data type GDAL writes
    for t in gtiff_types():
        expect = "error" if t.startswith("C") else "output"
        add(f"type {t}", lambda d, t=t: write_raster(d / f"type_{t}.tif", 19, 13, type_name=t,
                                                      values=_type_values(t)),
            expect, quick=t in ("UInt16", "CFloat32"))
    add("type Int8 (Byte PIXELTYPE=SIGNEDBYTE)",
        lambda d: write_raster(d / "signedbyte.tif", 19, 13, options=["PIXELTYPE=SIGNEDBYTE"],
                               values=lambda b, rng, s: rng.integers(-128, 127, s)))
    add("mixed band types (Byte, Int16, Float32)", _mixed_types)

    # --- nodata everywhere / nowhere / NaN / out of the type's range / masks
    add("nodata everywhere (Byte, 0)", lambda d: write_raster(
        d / "nodata_all.tif", 23, 19, nodata=0, values=lambda b, rng, s: np.zeros(s)), all_nodata=True, quick=True)
    add("nodata everywhere (Float32, NaN)", lambda d: write_raster(
        d / "nan_all.tif", 23, 19, type_name="Float32", nodata=float("nan"),
        values=lambda b, rng, s: np.full(s, np.nan)), all_nodata=True)
    add("nodata nowhere (nodata 0, no pixel is 0)", lambda d: write_raster(
        d / "nodata_none.tif", 23, 19, nodata=0, values=lambda b, rng, s: rng.integers(1, 255, s)))
    add("nodata NaN, half NaN", lambda d: write_raster(
        d / "nan_half.tif", 23, 19, type_name="Float32", nodata=float("nan"),
        values=lambda b, rng, s: np.where(rng.random(s) < 0.5, np.nan, rng.random(s))), quick=True)
    add("NaN and inf pixels, no nodata set", lambda d: write_raster(
        d / "nan_inf.tif", 23, 19, type_name="Float64",
        values=lambda b, rng, s: np.choose(rng.integers(0, 4, s), [rng.random(s), np.nan, np.inf, -np.inf])))
    add("nodata -9999 on a Byte band (outside its range)", lambda d: write_raster(
        d / "nodata_out_of_range.tif", 23, 19, nodata=-9999))
    add("nodata 1e38 on Float32", lambda d: write_raster(
        d / "nodata_big.tif", 23, 19, type_name="Float32", nodata=1e38,
        values=lambda b, rng, s: np.where(rng.random(s) < 0.3, 1e38, rng.random(s))))
    add("one band all nodata, others valid", lambda d: write_raster(
        d / "band_all_nodata.tif", 23, 19, nodata=0, values=lambda b, rng, s: np.zeros(s) if b == 1
        else rng.integers(1, 255, s)))
    add("RGBA with alpha 0 in part", lambda d: write_raster(
        d / "rgba.tif", 23, 19, bands=4, alpha=True, options=["ALPHA=YES"],
        values=lambda b, rng, s: (rng.random(s) < 0.7) * 255 if b == 3 else rng.integers(0, 255, s)))
    add("internal mask band", _masked)
    add("extreme Float32 values (±1e30)", lambda d: write_raster(
        d / "extreme.tif", 23, 19, type_name="Float32",
        values=lambda b, rng, s: rng.choice([-1e30, 1e30, 0.0, 1e-40], size=s)))

    # --- 1 to 12 bands (a model per band count)
    for n in range(1, 13):
        add(f"{n} band(s)", lambda d, n=n: write_raster(d / f"bands_{n}.tif", 17, 11, bands=n), bands=n,
            quick=n == 12)
    add("4 bands into a 3-band model", lambda d: write_raster(d / "bands_4_for_3.tif", 17, 11, bands=4),
        "error", quick=True)
    add("2 bands into a 3-band model", lambda d: write_raster(d / "bands_2_for_3.tif", 17, 11, bands=2),
        "error")

    # --- georeferencing
    add("no CRS, no geotransform", lambda d: write_raster(d / "nogeo.tif", 23, 19, crs=False, geotransform=None),
        quick=True)
    add("geotransform without CRS", lambda d: write_raster(d / "nocrs.tif", 23, 19, crs=False))
    add("rotated geotransform", lambda d: write_raster(d / "rotated.tif", 23, 19, geotransform="rotated"),
        quick=True)
    add("south-up geotransform", lambda d: write_raster(d / "southup.tif", 23, 19, geotransform="south-up"))
    add("1e-9 degree pixels", lambda d: write_raster(d / "tinypix.tif", 23, 19, geotransform="tiny-pixels"))
    add("GCPs instead of a geotransform", lambda d: write_raster(
        d / "gcps.tif", 23, 19, crs=False, geotransform=None, gcps=True))

    # --- other GDAL formats
    add("PNG", lambda d: write_raster(d / "in.png", 23, 19, crs=False, geotransform=None, driver="PNG"))
    add("JPEG", lambda d: write_raster(d / "in.jpg", 23, 19, crs=False, geotransform=None, driver="JPEG"))
    add("VRT 200000x200000 (output cannot fit on disk)", _huge_vrt, "error")
    add("VRT with a missing source file", _dangling_vrt, "error")

    # --- truncated or garbage files
    for frac in (0.0, 0.002, 0.1, 0.5, 0.9, 0.99):
        add(f"GeoTIFF truncated to {frac:.1%}", _truncated(frac), "error", quick=frac in (0.5,))
    add("GeoTIFF with noise over its tiles", _corrupt_tiles, "error")
    add("random bytes named .tif", _bytes_file("garbage.tif", lambda r: bytes(r.randrange(256) for _ in range(4096))),
        "error", quick=True)
    add("TIFF magic then random bytes", _bytes_file(
        "magic.tif", lambda r: b"II*\x00" + bytes(r.randrange(256) for _ in range(2048))), "error")
    add("BigTIFF magic then zeros", _bytes_file("bigtiff.tif", lambda r: b"II+\x00\x08\x00\x00\x00" + bytes(512)),
        "error")
    add("text file named .tif", _bytes_file("notes.tif", lambda r: b"this is not a raster\n" * 20), "error")
    add("PNG signature then random bytes", _bytes_file(
        "broken.png", lambda r: b"\x89PNG\r\n\x1a\n" + bytes(r.randrange(256) for _ in range(1024))), "error")
    add("a folder named .tif", lambda d: (d / "folder.tif").mkdir() or d / "folder.tif", "error")
    add("a path that does not exist", lambda d: d / "missing.tif", "error")
    return cases


def _mixed_types(d: Path) -> Path:
    import numpy as np

    gdal = _gdal()
    p = d / "mixed.vrt"
    parts = []
    for b, t in enumerate(("Byte", "Int16", "Float32")):
        write_raster(d / f"mixed_{t}.tif", 17, 11, bands=1, type_name=t,
                     values=lambda _b, rng, s: rng.integers(0, 200, s).astype(np.float64))
        parts.append(str(d / f"mixed_{t}.tif"))
    vrt = gdal.BuildVRT(str(p), parts, separate=True)
    vrt = None  # noqa: F841
    return p


def _masked(d: Path) -> Path:
    import numpy as np

    gdal = _gdal()
    p = write_raster(d / "masked.tif", 23, 19)
    ds = gdal.Open(str(p), gdal.GA_Update)
    gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    m = np.full((19, 23), 255, np.uint8)
    m[5:12, 3:9] = 0
    ds.GetRasterBand(1).GetMaskBand().WriteArray(m)
    ds = None
    gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
    return p


def check_sr_output(src: Path, dst: Path, scale: int, all_nodata: bool) -> str:
    """'' when ``dst`` is a correct SR of ``src`` in structure and georeferencing, else what is wrong."""
    import numpy as np

    gdal = _gdal()
    try:
        a = gdal.Open(str(src))
        b = gdal.Open(str(dst))
    except RuntimeError as exc:
        return f"output does not open: {exc}"
    bands = [i for i in range(1, a.RasterCount + 1)
             if a.GetRasterBand(i).GetColorInterpretation() != gdal.GCI_AlphaBand] or [1]
    want = (a.RasterXSize * scale, a.RasterYSize * scale, len(bands))
    got = (b.RasterXSize, b.RasterYSize, b.RasterCount)
    if got != want:
        return f"output is {got}, expected {want}"
    gt_a, gt_b = a.GetGeoTransform(can_return_null=True), b.GetGeoTransform(can_return_null=True)
    if gt_a is not None:
        want_gt = (gt_a[0], gt_a[1] / scale, gt_a[2] / scale, gt_a[3], gt_a[4] / scale, gt_a[5] / scale)
        if gt_b is None or not np.allclose(gt_b, want_gt, rtol=1e-9, atol=0):
            return f"geotransform {gt_b}, expected {want_gt}"
    elif gt_b is not None and not a.GetGCPCount():
        return f"output has geotransform {gt_b} but the input had none"
    if (a.GetProjection() or "") != (b.GetProjection() or ""):
        return "CRS differs from the input's"
    if a.GetGCPCount() != b.GetGCPCount():
        return f"{b.GetGCPCount()} GCPs, the input has {a.GetGCPCount()}"
    for i, bi in enumerate(bands, 1):
        na, nb = a.GetRasterBand(bi).GetNoDataValue(), b.GetRasterBand(i).GetNoDataValue()
        if na is not None and nb is not None and b.GetRasterBand(i).DataType == gdal.GDT_Float32:
            na, nb = float(np.float32(na)), float(np.float32(nb))  # GDAL matches nodata in the band's type
        if not (na == nb or (na is not None and nb is not None and np.isnan(na) and np.isnan(nb))):
            return f"band {i} nodata {nb}, input band {bi} has {na}"
    data = b.ReadAsArray().reshape(len(bands), want[1], want[0])
    mask = b.GetRasterBand(1).GetMaskBand().ReadAsArray() != 0
    types = {a.GetRasterBand(i).DataType for i in bands}
    if len(types) == 1 and b.GetRasterBand(1).DataType not in types:
        return f"output type {gdal.GetDataTypeName(b.GetRasterBand(1).DataType)} is not the input's"
    if all_nodata:
        for i in range(len(bands)):
            nd = b.GetRasterBand(i + 1).GetNoDataValue()
            band = data[i]
            invalid = np.isnan(band) if nd is not None and np.isnan(nd) else (band == nd if nd is not None else ~mask)
            if not invalid.all():
                return f"input is all nodata but band {i + 1} has {int((~invalid).sum())} valid pixel(s)"
    elif data.dtype.kind == "f":
        valid = mask & np.all([~np.isnan(data[i]) for i in range(len(bands))], axis=0)
        if valid.any() and not np.isfinite(data[:, valid]).all():
            return "non-finite values in valid output pixels"
    return ""


# ====================================================================== runner base

class Suite:
    def __init__(self, work: Path, quick: bool, seed: int = 0, log=print):
        self.work, self.quick, self.seed, self.log = Path(work), quick, seed, log
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)
        self.models = Models(self.work / "models")
        self.rng = random.Random(seed)
        self.families: dict[str, Family] = {}
        self._qgis: QgisWorker | None = None

    def family(self, key: str, title: str, tried: str) -> Family:
        return self.families.setdefault(key, Family(key, title, tried))

    def record(self, fam: Family, case: str, outcome: str, detail: str = "", seconds: float = 0.0) -> None:
        fam.results.append(Outcome(fam.key, case, outcome, detail, seconds))
        mark = "  " if outcome in (CORRECT, CLEAR) else "!!"
        self.log(f"{mark} [{fam.key}] {case}: {outcome}" + (f" — {one_line(detail, 160)}" if detail else ""))

    @property
    def qgis(self) -> "QgisWorker":
        if self._qgis is None:
            self._qgis = QgisWorker(self.work / "qgis-profile")
        return self._qgis

    def close(self) -> None:
        if self._qgis is not None:
            self._qgis.close()
            self._qgis = None

    def bad(self) -> list[Outcome]:
        return [r for f in self.families.values() for r in f.results if r.outcome in BAD]

    # ------------------------------------------------------------------ raster fuzzing
    def run_rasters(self) -> None:
        cli = self.family("raster-cli", "raster fuzzing through `lcmsr sr`",
                          "odd sizes (1x1, 1xN, primes, below one tile) at x2/x3/x8, every GTiff data type, "
                          "nodata everywhere/nowhere/NaN/masks/alpha, 1-12 bands, no CRS, rotated/south-up "
                          "geotransforms, GCPs, PNG/JPEG/VRT, truncated and garbage files")
        qg = self.family("raster-qgis", 'the same rasters through `processing.run("lcmsr:superresolve")`',
                         "the raster-cli inputs in a QGIS process; outputs compared with the CLI's")
        cases = [c for c in raster_cases() if c.quick or not self.quick]
        for i, case in enumerate(cases):
            folder = self.work / "rasters" / f"{i:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                src = case.make(folder)
            except Exception as exc:  # the generator itself failed: the case was not tried, say so
                self.record(cli, case.name, WRONG, f"could not generate the input: {exc}")
                continue
            model = self.models.get(case.bands, case.scale)
            cli_out = self._raster_cli(cli, case, src, model, folder / "cli")
            self._raster_qgis(qg, case, src, model, folder / "qgis", cli_out)

    def _classify_finished(self, case: RasterCase, src: Path, out_dir: Path, dst: Path, before: str | None,
                           ok: bool, message: str, raw: bool) -> tuple[str, str]:
        if file_hash(src) != before:
            return LOST, "the input was modified"
        extra = leftovers(out_dir, keep=("sr.tif", "sr.tif.aux.xml") if ok else ())
        if extra:
            return LOST, f"left in the output folder: {', '.join(extra)}"
        if raw:
            return CRASH, message
        if ok:
            if case.expect == "error":
                return WRONG, "an output was written for an input that should be refused"
            problem = check_sr_output(src, dst, case.scale, case.all_nodata)
            return (WRONG, problem) if problem else (CORRECT, "")
        if case.expect == "output":
            return WRONG, f"refused a usable input: {message}"
        if not message.strip() or "Traceback" in message or len(message) > 1200:
            return CRASH, f"unclear error: {message!r}"
        # "Clear" means it says what is wrong with what: the input, a band, the output or the model.
        names = (src.name, "INPUT", "band", "output", str(out_dir), "model")
        if not any(n in message for n in names):
            return CRASH, f"the error names neither the input nor a band, the output or the model: {message!r}"
        return CLEAR, message

    def _raster_cli(self, fam, case, src, model, out_dir) -> Path | None:
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "sr.tif"
        before = file_hash(src)
        cmd = [PY, "-m", "lcmsr", "sr", str(src), str(dst), "--model", str(model), "--device", "cpu",
               "--tile", str(tile_for(case.scale)), "--overlap", str(OVERLAP), "--quiet"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=child_env())
        except subprocess.TimeoutExpired:
            self.record(fam, case.name, HANG, f"no exit within {CLI_TIMEOUT} s", time.monotonic() - t0)
            return None
        seconds = time.monotonic() - t0
        err = proc.stderr.strip()
        last = err.splitlines()[-1] if err else ""
        raw = "Traceback" in err or proc.returncode not in (0, 2)
        if proc.returncode == 2 and not last.startswith("lcmsr: error:"):
            raw = True
        message = (f"exit {proc.returncode}: {err[-600:]}" if raw else last)
        outcome, detail = self._classify_finished(case, src, out_dir, dst, before, proc.returncode == 0, message, raw)
        self.record(fam, case.name, outcome, detail, seconds)
        return dst if outcome == CORRECT else None

    def _raster_qgis(self, fam, case, src, model, out_dir, cli_out: Path | None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "sr.tif"
        before = file_hash(src)
        t0 = time.monotonic()
        reply = self.qgis.call({"op": "sr", "src": str(src), "dst": str(dst), "model": str(model),
                                "tile": tile_for(case.scale)}, QGIS_TIMEOUT)
        seconds = time.monotonic() - t0
        if reply.get("status") in ("hang", "died"):
            self.record(fam, case.name, HANG if reply["status"] == "hang" else CRASH, reply.get("message", ""),
                        seconds)
            return
        shown = "\n".join(reply.get("errors", []) + [reply.get("message", "")])
        raw = reply["status"] == "exception" or "Traceback" in shown
        outcome, detail = self._classify_finished(case, src, out_dir, dst, before, reply["status"] == "ok",
                                                  one_line(reply.get("message", ""), 1000) if not raw else shown,
                                                  raw)
        if outcome == CORRECT and reply.get("layers", 0):
            outcome, detail = LOST, f"{reply['layers']} layer(s) left in the project by processing.run"
        if outcome == CORRECT and cli_out is not None:
            outcome, detail = self._same_as_cli(dst, cli_out)
        self.record(fam, case.name, outcome, detail, seconds)

    @staticmethod
    def _same_as_cli(dst: Path, cli_out: Path) -> tuple[str, str]:
        import numpy as np

        gdal = _gdal()
        a, b = gdal.Open(str(dst)).ReadAsArray(), gdal.Open(str(cli_out)).ReadAsArray()
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            return WRONG, "QGIS output differs from the CLI output of the same input and seed"
        return CORRECT, ""

    # ------------------------------------------------------------------ weights fuzzing
    def run_weights(self) -> None:
        fam = self.family("weights", "weights fuzzing through `lcmsr.weights.load_model` and the settings "
                                     "dialog's add-model path",
                          "truncations, single/multi bit flips, wrong format versions, wrong shapes/tensors, "
                          "huge or nested headers, pickles (torch.save, raw pickle with a payload), "
                          "non-finite values; an intact file as control")
        from lcmsr.weights import ModelFileError, load_model

        folder = self.work / "weights"
        folder.mkdir(parents=True, exist_ok=True)
        good = self.models.get(3, 2)
        marker = folder / "PAYLOAD_RAN"
        cases = weights_cases(good, folder, marker, self.rng, self.quick)
        for name, path, expect in cases:
            t0 = time.monotonic()
            try:
                load_model(path)
                loader, loaded = "", True
            except ModelFileError as exc:
                loader, loaded = str(exc), False
            except BaseException as exc:  # anything else reaching a user is a crash of the loader
                self.record(fam, name + " (loader)", CRASH, f"{type(exc).__name__}: {exc}")
                loader, loaded = None, False
            if loader is not None:
                if marker.exists():
                    self.record(fam, name + " (loader)", CRASH, "a pickle payload ran")
                elif loaded != (expect == "load"):
                    self.record(fam, name + " (loader)", WRONG,
                                "accepted a damaged file" if loaded else f"refused an intact file: {loader}")
                elif loaded:
                    self.record(fam, name + " (loader)", CORRECT, "", time.monotonic() - t0)
                elif str(path) not in loader and os.path.basename(str(path)) not in loader:
                    self.record(fam, name + " (loader)", CRASH, f"message does not name the file: {loader}")
                else:
                    self.record(fam, name + " (loader)", CLEAR, loader, time.monotonic() - t0)
            t0 = time.monotonic()
            reply = self.qgis.call({"op": "add_model", "path": str(path)}, QGIS_TIMEOUT)
            if reply.get("status") in ("hang", "died"):
                self.record(fam, name + " (dialog)", HANG if reply["status"] == "hang" else CRASH,
                            reply.get("message", ""))
                continue
            if reply["status"] == "exception":
                self.record(fam, name + " (dialog)", CRASH, reply.get("message", ""))
            elif reply["accepted"] != (expect == "load"):
                self.record(fam, name + " (dialog)", WRONG,
                            "the dialog accepted a damaged file" if reply["accepted"]
                            else f"the dialog refused an intact file: {reply['shown']}")
            elif reply["accepted"]:
                self.record(fam, name + " (dialog)", CORRECT, "", time.monotonic() - t0)
            elif reply["shown"] != reply["loader"] or not reply["shown"]:
                self.record(fam, name + " (dialog)", WRONG,
                            f"dialog showed {reply['shown']!r}, the loader says {reply['loader']!r}")
            else:
                self.record(fam, name + " (dialog)", CLEAR, reply["shown"], time.monotonic() - t0)

    # ------------------------------------------------------------------ kill -9 during training
    def run_training_kills(self) -> None:
        fam = self.family("train-kill", "kill -9 during training, then resume",
                          "SIGKILL at a random step plus a random fraction of a step (during steps, "
                          "checkpoint writes, start-up); stage 1 and stage 2; resume compared with an "
                          "uninterrupted run")
        import numpy as np
        import torch

        torch.set_num_threads(1)
        from lcmsr.train import checkpoint as ckpt
        from lcmsr.train import train_autoencoder, train_consistency

        folder = self.work / "train"
        folder.mkdir(parents=True, exist_ok=True)
        iterations, every = (6, 2) if self.quick else (12, 3)
        trials = 2 if self.quick else 20
        stage1_ck = str(train_autoencoder(train_options(folder / "stage1-base", 3, 3)).checkpoint)
        refs = {
            "stage1": train_autoencoder(train_options(folder / "ref1", iterations, every)),
            "stage2": train_consistency(train_options(folder / "ref2", iterations, every, stage1=stage1_ck,
                                                      out=str(folder / "ref2.safetensors"))),
        }
        step_time = max(0.01, refs["stage1"].seconds / iterations)
        for trial in range(trials):
            stage = "stage2" if trial % 4 == 3 else "stage1"
            kill_step = self.rng.randint(0, iterations - 1)
            delay = self.rng.uniform(0, 1.5 * step_time) if kill_step else self.rng.uniform(0, 2.0)
            name = f"trial {trial + 1:02d} {stage} kill after step {kill_step} + {delay * 1000:.0f} ms"
            ckdir = folder / f"trial-{trial:02d}"
            out = str(ckdir) + ".safetensors" if stage == "stage2" else None
            cmd = [PY, str(HERE / "train_child.py"), stage, str(ckdir), str(iterations), str(every),
                   stage1_ck if stage == "stage2" else "-", out or "-"]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
            seen = _kill_after_step(proc, kill_step, delay, timeout=CLI_TIMEOUT)
            if seen is None:
                self.record(fam, name, HANG, "the training child did not reach the kill point")
                continue
            if proc.returncode != -signal.SIGKILL:
                if proc.returncode == 0 and seen >= iterations:
                    pass  # finished before the kill landed: resume must then be a no-op that still works
                else:
                    self.record(fam, name, CRASH, f"child exit {proc.returncode}: {one_line(proc.stderr.read())}")
                    continue
            try:
                opts = train_options(ckdir, iterations, every, resume=True,
                                     stage1=stage1_ck if stage == "stage2" else None, out=out)
                resumed = (train_consistency if stage == "stage2" else train_autoencoder)(opts)
            except Exception as exc:
                self.record(fam, name, CRASH, f"resume failed: {type(exc).__name__}: {exc}")
                continue
            start = resumed.resumed_from or 0
            ref = refs[stage]
            if seen - start > every:
                self.record(fam, name, LOST, f"resumed from step {start} but step {seen} had been reached "
                                             f"(checkpoint every {every})")
                continue
            a = [h["loss"] for h in ref.history if "loss" in h]
            b = [h["loss"] for h in resumed.history if "loss" in h]
            if len(a) != len(b) or not np.allclose(a, b, rtol=1e-6, atol=0):
                self.record(fam, name, WRONG, f"loss curve differs from the uninterrupted run: {b} vs {a}")
                continue
            ta, tb = ckpt.load_checkpoint(ref.checkpoint).tensors, ckpt.load_checkpoint(resumed.checkpoint).tensors
            differ = [k for k in ta if k not in tb or not torch.equal(ta[k], tb[k])]
            if differ:
                self.record(fam, name, WRONG, f"final weights differ from the uninterrupted run: {differ[:3]}")
                continue
            if stage == "stage2":
                from lcmsr.weights import load_model

                load_model(out)
            self.record(fam, name, CORRECT, f"step {seen} reached, resumed from {start}", time.monotonic() - t0)

    # ------------------------------------------------------------------ kill -9 / write errors during SR
    def run_sr_faults(self) -> None:
        fam = self.family("sr-faults", "kill -9 and injected write errors during `lcmsr sr`",
                          "SIGKILL at random times (with and without an older output at the destination), "
                          "RLIMIT_FSIZE from 0 bytes to just under the output size, a read-only destination "
                          "folder, a read-only existing output, the input given as the output")
        folder = self.work / "sr-faults"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        side = 160 if self.quick else 480
        src = write_raster(folder / "input.tif", side, side, 3)
        os.chmod(src, 0o644)
        model = self.models.get(3, 2)
        before = file_hash(src)

        def cmd(dst, tile=TILE):
            return [PY, "-m", "lcmsr", "sr", str(src), str(dst), "--model", str(model), "--device", "cpu",
                    "--tile", str(tile), "--overlap", str(OVERLAP), "--quiet"]

        # Reference: a complete run, its time and size (the ranges of the kill times and size limits).
        ref_dir = folder / "ref"
        ref_dir.mkdir(exist_ok=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd(ref_dir / "sr.tif", tile=16 + OVERLAP * 4), capture_output=True, text=True,
                              timeout=CLI_TIMEOUT, env=child_env())
        ref_seconds = time.monotonic() - t0
        work_seconds = _job_seconds(proc.stdout) or ref_seconds / 2
        ref_size = (ref_dir / "sr.tif").stat().st_size if proc.returncode == 0 else 0
        problem = check_sr_output(src, ref_dir / "sr.tif", 2, False) if proc.returncode == 0 else proc.stderr
        self.record(fam, "reference run", WRONG if problem else CORRECT, one_line(problem), ref_seconds)
        if problem:
            return

        kills = 2 if self.quick else 12
        for k in range(kills):
            out_dir = folder / f"kill-{k:02d}"
            out_dir.mkdir(exist_ok=True)
            dst = out_dir / "sr.tif"
            old = None
            if k % 2:  # an older output must survive a killed run that would have replaced it
                dst.write_bytes(b"previous output")
                old = file_hash(dst)
            # Even trials: a random time from launch; odd ones: a random time after the job announced its
            # tiles, so that the kill lands while tiles are computed and the temp file is being written.
            during = k % 4 >= 2
            delay = self.rng.uniform(0.0, work_seconds) if during else self.rng.uniform(0.2, ref_seconds * 1.05)
            p = subprocess.Popen(cmd(dst, tile=16 + OVERLAP * 4), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=child_env())
            started = threading.Event()
            threading.Thread(target=lambda p=p, ev=started: [ev.set() for line in p.stderr if "tile(s) of" in line],
                             daemon=True).start()
            if during:
                started.wait(timeout=CLI_TIMEOUT)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
            name = (f"kill -9 {delay:.2f} s after the tiles started" if during else f"kill -9 after {delay:.2f} s") \
                + (" over an older output" if old else "")
            stale = [n for n in leftovers(out_dir, keep=("sr.tif", "sr.tif.aux.xml"))]
            if file_hash(src) != before:
                self.record(fam, name, LOST, "the input was modified")
            elif p.returncode == 0 or (dst.exists() and file_hash(dst) != old):
                # The output was complete and renamed into place before the kill (or the run finished):
                # then it must be the whole, correct output, never a part of one.
                problem = check_sr_output(src, dst, 2, False)
                self.record(fam, name + " (output was already complete)", LOST if problem else CORRECT,
                            problem or (f"exit {p.returncode}; {len(stale)} temp file(s) left" if stale
                                        else f"exit {p.returncode}"))
                if stale and not problem:
                    self._sweep_check(fam, name, cmd(dst), out_dir)
            else:
                # A killed process cannot clean up; its hidden temp file must be swept by the next run.
                detail = f"{len(stale)} hidden temp file(s) left" if stale else "nothing left"
                if stale and not self._sweep_check(fam, name, cmd(dst), out_dir):
                    continue
                self.record(fam, name, CLEAR, f"killed; destination as before, {detail}"
                            + (", removed by the next run" if stale else ""))

        limits = [0, 1024, 16 * 1024, ref_size // 2, ref_size - 1]
        if self.quick:
            limits = [1024, ref_size // 2]
        for limit in limits:
            out_dir = folder / f"fsize-{limit}"
            out_dir.mkdir(exist_ok=True)
            self._sr_expect_refusal(fam, f"RLIMIT_FSIZE {limit} bytes", cmd(out_dir / "sr.tif"), src, before,
                                    out_dir, preexec=lambda limit=limit: resource.setrlimit(
                                        resource.RLIMIT_FSIZE, (limit, limit)))
        # Read-only destinations: the child runs without the power to override permissions (0555 binds).
        ro = folder / "read-only"
        ro.mkdir(exist_ok=True)
        os.chmod(ro, 0o555)
        self._sr_expect_refusal(fam, "read-only destination folder", cmd(ro / "sr.tif"), src, before, ro,
                                preexec=_without_file_override)
        if not self.quick:
            rof = folder / "read-only-file"
            rof.mkdir(exist_ok=True)
            os.chmod(rof, 0o777)
            (rof / "sr.tif").write_bytes(b"read-only older output")
            os.chmod(rof / "sr.tif", 0o444)
            self._sr_expect_refusal(fam, "read-only existing output", cmd(rof / "sr.tif"), src, before, rof,
                                    preexec=_without_file_override, keep=("sr.tif",))
            self._sr_expect_refusal(fam, "output is the input", cmd(src), src, before, folder,
                                    keep=tuple(leftovers(folder)))

    def _sweep_check(self, fam, name, command, out_dir) -> bool:
        """A killed run cannot clean up after itself: the next run to the same destination must."""
        nxt = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=child_env())
        rest = leftovers(out_dir, keep=("sr.tif", "sr.tif.aux.xml"))
        if nxt.returncode != 0 or rest:
            self.record(fam, name, LOST, f"the temp file of the killed run was not removed by the next run: "
                                         f"{rest} (exit {nxt.returncode})")
            return False
        return True

    def _sr_expect_refusal(self, fam, name, command, src, before, out_dir, preexec=None, keep=()):
        kept = {k: file_hash(out_dir / k) for k in keep}
        t0 = time.monotonic()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=child_env(),
                                  preexec_fn=preexec)
        except subprocess.TimeoutExpired:
            self.record(fam, name, HANG, f"no exit within {CLI_TIMEOUT} s")
            return
        err = proc.stderr.strip()
        last = err.splitlines()[-1] if err else ""
        rest = [n for n in leftovers(out_dir) if n not in keep]
        if file_hash(src) != before:
            self.record(fam, name, LOST, "the input was modified")
        elif any(file_hash(out_dir / k) != h for k, h in kept.items()):
            self.record(fam, name, LOST, "a file that was there before was changed")
        elif proc.returncode == 0:
            self.record(fam, name, WRONG, "succeeded despite the injected fault")
        elif rest:
            self.record(fam, name, LOST, f"left {rest}")
        elif "Traceback" in err or proc.returncode != 2 or not last.startswith("lcmsr: error:"):
            self.record(fam, name, CRASH, f"exit {proc.returncode}: {err[-500:]}")
        else:
            self.record(fam, name, CLEAR, last, time.monotonic() - t0)

    # ------------------------------------------------------------------ cancel storms
    def run_cancel_storms(self) -> None:
        fam = self.family("cancel", "cancel storms on batch-mode `lcmsr:superresolve` runs in QGIS",
                          "batches of 3-5 rows run the way the batch dialog runs them (execute + load results); "
                          "feedback.cancel() at a random progress value or after a random delay from another "
                          "thread")
        folder = self.work / "cancel"
        folder.mkdir(parents=True, exist_ok=True)
        src = write_raster(folder / "input.tif", 96, 96, 3)
        before = file_hash(src)
        model = self.models.get(3, 2)
        storms = 2 if self.quick else 10
        for s in range(storms):
            rows = self.rng.randint(3, 5)
            out_dir = folder / f"storm-{s:02d}"
            out_dir.mkdir(exist_ok=True)
            dsts = [str(out_dir / f"row{r}.tif") for r in range(rows)]
            cancel_row = self.rng.randrange(rows)
            if s % 2:
                how = {"delay": self.rng.uniform(0.0, 0.8)}
            else:
                how = {"progress": self.rng.uniform(0.0, 99.0)}
            name = f"storm {s + 1:02d}: {rows} rows, cancel in row {cancel_row + 1} " + (
                f"after {how['delay']:.2f} s" if "delay" in how else f"at {how['progress']:.0f} %")
            reply = self.qgis.call({"op": "batch", "src": str(src), "dsts": dsts, "model": str(model),
                                    "cancel_row": cancel_row, **how}, QGIS_TIMEOUT)
            if reply.get("status") in ("hang", "died"):
                self.record(fam, name, HANG if reply["status"] == "hang" else CRASH, reply.get("message", ""))
                continue
            if reply["status"] == "exception":
                self.record(fam, name, CRASH, reply["message"])
                continue
            done, cancelled = reply["completed"], reply["cancelled"]
            problems = []
            if file_hash(src) != before:
                problems.append("the input was modified")
            for r, dst in enumerate(dsts):
                exists = os.path.exists(dst)
                if r in done:
                    problem = check_sr_output(src, Path(dst), 2, False) if exists else "missing output"
                    if problem:
                        problems.append(f"row {r + 1}: {problem}")
                elif exists:
                    problems.append(f"row {r + 1} was cancelled or not run but {Path(dst).name} exists")
            extra = leftovers(out_dir, keep=[Path(d).name for i, d in enumerate(dsts) if i in done] +
                              [Path(d).name + ".aux.xml" for i, d in enumerate(dsts) if i in done])
            if extra:
                problems.append(f"partial files: {extra}")
            if reply["layers"] != reply["layers_expected"]:
                problems.append(f"{reply['layers']} layer(s) in the project, expected {reply['layers_expected']} "
                                f"(one per finished row)")
            if cancelled is not None and not reply["cancel_message"].startswith("Cancelled"):
                problems.append(f"cancel reported as {reply['cancel_message']!r}")
            summary = f"{len(done)} row(s) finished, " + (f"row {cancelled + 1} cancelled" if cancelled is not None
                                                          else "the cancel landed after the last row's work")
            if problems:
                self.record(fam, name, LOST if any("exists" in p or "partial" in p or "layer" in p
                                                   for p in problems) else WRONG, "; ".join(problems))
            else:
                self.record(fam, name, CLEAR if cancelled is not None else CORRECT, summary)
            for dst in dsts:  # the next storm starts from an empty folder
                for p in (dst, dst + ".aux.xml"):
                    if os.path.exists(p):
                        os.remove(p)

    # ------------------------------------------------------------------ all
    def run(self, families=("rasters", "weights", "train", "sr", "cancel", "paths", "modelfile", "corruption",
                            "trainfolder", "outputs")) -> None:
        steps = {"rasters": self.run_rasters, "weights": self.run_weights, "train": self.run_training_kills,
                 "sr": self.run_sr_faults, "cancel": self.run_cancel_storms}
        # Families of their own modules: cases_<module>.py, run_<family>(suite).
        for name, module in (("paths", "paths"), ("modelfile", "modelfile"), ("corruption", "corruption"),
                             ("trainfolder", "corruption"), ("outputs", "outputs")):
            steps[name] = lambda name=name, module=module: getattr(__import__(f"cases_{module}"), f"run_{name}")(self)
        try:
            for key in families:
                steps[key]()
        finally:
            self.close()


def _job_seconds(stdout: str) -> float | None:
    """The SR job's own time from the CLI's summary line ('…, cpu fp32, 1.2 s')."""
    try:
        return float(stdout.strip().splitlines()[-1].rsplit(",", 1)[1].split()[0])
    except (IndexError, ValueError):
        return None


def _without_file_override() -> None:
    """Run the child as root without the power to override file permissions (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped from its bounding set, so execve gives it neither): a 0555 folder or a
    0444 file then refuses it as it would any user, while the checkout stays reachable even when it
    sits in a 0700 home folder (switching to 'nobody' could not reach the venv there).  Not root:
    permissions bind already."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _kill_after_step(proc: subprocess.Popen, step: int, delay: float, timeout: float) -> int | None:
    """SIGKILL ``proc`` ``delay`` seconds after it reported ``step`` (0: after start); the last step seen."""
    seen = 0
    deadline = time.monotonic() + timeout
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    while seen < step:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            proc.wait()
            return None
        if line is None:
            proc.wait()
            return seen
        if line.startswith("STEP "):
            seen = int(line.split()[1])
    end = time.monotonic() + delay
    while time.monotonic() < end and proc.poll() is None:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            break
        if line and line.startswith("STEP "):
            seen = int(line.split()[1])
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Steps the child printed before it died count as reached even if we read them only now.
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            break
        if line is None:
            break
        if line.startswith("STEP "):
            seen = int(line.split()[1])
    return seen


# ====================================================================== training helpers

def train_sources():
    import numpy as np

    def texture(h, w, seed):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 60 * np.sin(x / 3.0 + c) * np.cos(y / 5.0) + 20 * rng.standard_normal((h, w))
                        for c in range(3)])
        return np.clip(img, 0, 255).astype(np.uint8)

    return [texture(64, 64, 0), texture(48, 80, 1)]


def train_options(ckdir, iterations, every, **kw):
    from lcmsr.train import TrainOptions

    base = dict(sources=train_sources(), scale=4, patch=32, iterations=iterations, batch=2, lr=1e-3,
                config="tiny", checkpoint_dir=str(ckdir), checkpoint_every=every, val_every=10**6, log_every=1,
                device="cpu", lpips=False, seed=5)
    base.update(kw)
    return TrainOptions(**base)


# ====================================================================== weights cases

def weights_cases(good: Path, folder: Path, marker: Path, rng: random.Random, quick: bool):
    """(name, path, "load" | "refuse") for damaged copies of the intact model file ``good``."""
    import torch
    from safetensors.torch import load_file, save_file

    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = dict(header["__metadata__"])
    cases = []

    def add(name, content: bytes, expect="refuse"):
        p = folder / f"{len(cases):03d}.safetensors"
        p.write_bytes(content)
        cases.append((name, p, expect))

    def rewrite(name, edit_meta=None, edit_tensors=None):
        tensors = load_file(str(good))
        m = json.loads(meta["lcmsr"])
        if edit_meta:
            edit_meta(m)
        if edit_tensors:
            edit_tensors(tensors)
        p = folder / f"{len(cases):03d}.safetensors"
        new_meta = dict(meta, lcmsr=json.dumps(m))
        save_file(tensors, str(p), metadata=new_meta)
        cases.append((name, p, "refuse"))

    def header_bytes(h: dict) -> bytes:
        raw = json.dumps(h, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw

    add("intact file (control)", data, "load")
    # truncations: inside the length, inside the header, at its end, inside the data, one byte short
    cuts = [0, 4, 8, 9, 8 + n // 2, 8 + n, 8 + n + (len(data) - 8 - n) // 2, len(data) - 1]
    if not quick:
        cuts += [rng.randrange(1, len(data)) for _ in range(12)]
    else:
        cuts = [0, 8 + n // 2, len(data) - 1]
    for cut in cuts:
        add(f"truncated to {cut} of {len(data)} bytes", data[:cut])
    # bit flips: in the length, the header and the tensor data
    flips = 6 if quick else 60
    for i in range(flips):
        where = rng.choice(["length", "header", "data", "data", "data"]) if i >= 3 else \
            ["length", "header", "data"][i]
        lo, hi = {"length": (0, 8), "header": (8, 8 + n), "data": (8 + n, len(data))}[where]
        pos = rng.randrange(lo, hi)
        bit = rng.randrange(8)
        b = bytearray(data)
        b[pos] ^= 1 << bit
        add(f"bit {bit} of byte {pos} flipped ({where})", bytes(b))
    for k in (2, 16) if not quick else (16,):
        b = bytearray(data)
        for _ in range(k):
            b[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
        add(f"{k} random bit flips", bytes(b))
    # wrong format versions
    versions = [0, 3, 99, "1", None, 1.5, -1] if not quick else [3, "1"]
    for v in versions:
        rewrite(f"format_version {v!r}", lambda m, v=v: m.__setitem__("format_version", v))
    rewrite("format_version missing", lambda m: m.pop("format_version"))
    # wrong shapes and tensors
    def reshape_first(t):
        k = next(k for k in t if t[k].dim() == 4)
        t[k] = t[k].transpose(0, 1).contiguous()
    rewrite("a 4-d tensor's first two axes swapped", edit_tensors=reshape_first)
    rewrite("a tensor with one more output channel", edit_tensors=lambda t: t.__setitem__(
        "decoder.tail.bias", torch.zeros(t["decoder.tail.bias"].shape[0] + 1)))
    if not quick:
        rewrite("a tensor missing", edit_tensors=lambda t: t.pop(sorted(t)[0]))
        rewrite("an extra tensor", edit_tensors=lambda t: t.__setitem__("decoder.extra.weight", torch.ones(3)))
        rewrite("config for 4 bands over 3-band tensors", lambda m: (
            m.__setitem__("bands", 4), m["config"].__setitem__("bands", 4), m["band_names"].append("nir"),
            m["normalization"]["lo"].append(0), m["normalization"]["hi"].append(255)))
        rewrite("scale 5", lambda m: (m.__setitem__("scale", 5), m["config"].__setitem__("scale", 5)))
        rewrite("NaN in a tensor", edit_tensors=lambda t: t[sorted(t)[0]].view(-1).__setitem__(0, float("nan")))
        rewrite("normalisation lo = hi", lambda m: m["normalization"].__setitem__("hi", list(m["normalization"]["lo"])))
        rewrite("normalisation NaN", lambda m: m["normalization"]["lo"].__setitem__(0, float("nan")))
        rewrite("band names missing", lambda m: m.__setitem__("band_names", []))
        t0 = dict(header)
        first = next(k for k in header if k != "__metadata__")
        t0[first] = dict(header[first], dtype="F16")
        add("a tensor's dtype changed to F16 (sizes disagree)", header_bytes(t0) + data[8 + n:])
    # huge or hostile headers
    add("header length 2**64-1", struct.pack("<Q", 2**64 - 1) + data[8:])
    add("header length just over 100 MB", struct.pack("<Q", 100 * 1024 * 1024 + 1) + data[8:])
    add("header length = file size", struct.pack("<Q", len(data)) + data[8:])
    if not quick:
        add("header of 2 MB padding", _padded(header, 2 * 1024 * 1024) + data[8 + n:],
            "load")
        add("header nested 100000 deep", _length_prefixed(b"[" * 100000 + b"]" * 100000))
        add("header nested 100000 deep inside an object", _length_prefixed(
            b'{"__metadata__":' + b"[" * 100000 + b"]" * 100000 + b"}"))
        add("header that is a JSON list", _length_prefixed(b"[1,2,3]"))
        add("lcmsr metadata nested deep", header_bytes(
            {"__metadata__": {"lcmsr": "[" * 100000 + "]" * 100000}}))
        add("100000 empty tensor entries", header_bytes(
            {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100000)}))
        add("data offsets past the end", header_bytes(
            {**header, first: dict(header[first], data_offsets=[0, 10**12])}) + data[8 + n:])
        add("empty file", b"")
        add("PNG bytes", b"\x89PNG\r\n\x1a\n" + bytes(200))
    # pickles: nothing may unpickle (the payload would create the marker file)
    buf = folder / "torch_zip.pt"
    torch.save({"w": torch.ones(2)}, buf)
    add("torch.save zip checkpoint", buf.read_bytes())
    if not quick:
        torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
        add("torch.save legacy pickle", buf.read_bytes())
        add("pickle protocol 0 with a payload", pickle.dumps(_Payload(str(marker)), protocol=0))
    add("pickle protocol 4 with a payload", pickle.dumps(_Payload(str(marker)), protocol=4))
    buf.unlink()
    return cases


class _Payload:
    """Unpickling this creates ``path``: proof that something unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _length_prefixed(raw: bytes) -> bytes:
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _padded(header: dict, size: int) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (size - len(raw))
    return struct.pack("<Q", len(raw)) + raw


# ====================================================================== the QGIS worker

class QgisWorker:
    """A QGIS process (qgis_worker.py) answering one JSON request per line; restarted after a crash or hang."""

    def __init__(self, profile: Path):
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []

    def _start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        env = child_env(QGIS_CUSTOM_CONFIG_PATH=str(self.profile))
        self.proc = subprocess.Popen([PY, str(HERE / "qgis_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = queue.Queue()
        proc, lines = self.proc, self.lines
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        tail = self.stderr_tail = []
        threading.Thread(target=lambda: [tail.append(x) or tail.__delitem__(slice(0, -20)) for x in proc.stderr],
                         daemon=True).start()

    def call(self, request: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
            request = dict(request, startup=True)
        # The first request also waits for QGIS and torch to start.
        deadline = time.monotonic() + timeout + (60 if request.get("startup") else 0)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self._kill()
                return {"status": "hang", "message": f"no answer within {timeout:.0f} s"}
            if line is None:
                code = self.proc.wait()
                self.proc = None
                return {"status": "died", "message": f"QGIS process died (exit {code}): "
                                                     f"{one_line(''.join(self.stderr_tail[-5:]), 500)}"}
            if line.startswith("@@RESULT "):
                return json.loads(line[len("@@RESULT "):])

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
        self.proc = None


# ====================================================================== the report

def write_report(suite: Suite, out: Path, command: str, seconds: float) -> str:
    rows = []
    totals = {o: 0 for o in OUTCOMES}
    for fam in suite.families.values():
        counts = {o: sum(r.outcome == o for r in fam.results) for o in OUTCOMES}
        for o in OUTCOMES:
            totals[o] += counts[o]
        rows.append(f"| {fam.title} | {fam.tried} | {len(fam.results)} | "
                    + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    total = sum(totals.values())
    bad = suite.bad()
    lines = [
        "# Reliability: fault injection and fuzzing",
        "",
        "Generated by the robustness suite — do not edit by hand.",
        "",
        f"* Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"* Command: `{command}` ({'quick subset' if suite.quick else 'full run'}, seed {suite.seed}, "
        f"{seconds:.0f} s on {os.cpu_count()} core(s))",
        f"* Verdict: **{'PASS' if not bad else 'FAIL'}** — {total} cases, "
        f"{sum(totals[o] for o in BAD)} crash / hang / lost / wrong.",
        "",
        "Outcomes: *correct output* — finished and checked (size, georeferencing, nodata, data type; QGIS "
        "outputs equal to the CLI's; a resumed run equal to an uninterrupted one); *clear error* — refused or "
        "stopped with one sentence naming the problem, the destination as before and the input unchanged (for "
        "kills and cancels: stopped cleanly); *wrong outcome* — a usable input refused or a damaged one "
        "accepted; *crash* — a traceback, an unexpected exit or a message that does not say what is wrong; "
        "*hang* — no end within the timeout; *lost/partial file* — the input changed, a partial or stale file "
        "left, an older output damaged, more than one checkpoint interval lost, or a layer left behind.",
        "",
        "| family | what was tried | cases | " + " | ".join(OUTCOMES) + " |",
        "|---|---|---:|" + "---:|" * len(OUTCOMES),
        *rows,
        f"| **all** | | **{total}** | " + " | ".join(f"**{totals[o]}**" for o in OUTCOMES) + " |",
        "",
    ]
    if bad:
        lines += ["## Cases that failed", ""]
        lines += [f"* [{r.family}] {r.case}: **{r.outcome}** — {one_line(r.detail, 400)}" for r in bad]
        lines.append("")
    lines += ["## Every case", ""]
    for fam in suite.families.values():
        lines += [f"### {fam.title}", "", "| case | outcome | message or detail |", "|---|---|---|"]
        for r in fam.results:
            lines.append(f"| {r.case} | {r.outcome} | {one_line(r.detail, 220).replace('|', '/')} |")
        lines.append("")
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return text


def run_suite(quick: bool, out: Path | None, work: Path | None = None, seed: int = 0, command: str = "",
              families=("rasters", "weights", "train", "sr", "cancel", "paths"), log=print) -> Suite:
    import tempfile

    t0 = time.monotonic()
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="lcmsr-robustness-"))
    suite = Suite(work, quick, seed, log)
    try:
        suite.run(families)
    finally:
        if out is not None:
            write_report(suite, Path(out), command, time.monotonic() - t0)
        if own:
            _rmtree(work)
    return suite


def _rmtree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_dir():
            try:
                os.chmod(p, 0o755)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
