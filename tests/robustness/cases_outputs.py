"""Robustness families of issue 25: what an output format writes, per-band nodata, evaluation's grid and
report files, GeoPackage containers, and messages — all through the `lcmsr` CLI as a user would meet them.

* ``outputs-companions``: formats whose driver writes files named after OUT (ERS, EHdr, MFF, RST, SAGA,
  ILWIS, a world file asked for with --co) over an input, an ENVI header, a shapefile's .prj or the main
  output; each must be refused in one line before any work, every file as before, nothing new.
* ``outputs-nodata``: inputs whose bands have different nodata values (0, 255, 7; a value and none), and
  Float64's -1.797e308 written as Float32: nodata kept per band (.img), carried as NaN (float outputs), or
  refused in one line (integer GeoTIFF / GeoPackage); never collapsed to one value, no Python warning.
* ``eval-grid``: references in another CRS, 50 km away, half a pixel off; LR and uncertainty rasters off
  the SR's grid; a folder whose second pair is off: refused before any report is written.
* ``eval-outputs``: report pictures named like an input, --json that is a folder, --html under a file.
* ``outputs-gpkg``: an output into an existing GeoPackage with other layers (refused, unchanged) or that
  is a former single-raster output (replaced).
* ``outputs-messages``: paths with a newline or an escape code, --stage1 given a model file, missing PROJ
  data: one line naming the problem.
Quick mode: a few cases of each.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from cases_paths import _lcmsr, _refusal, _run
from robustness_cases import (CLEAR, CLI_TIMEOUT, CORRECT, CRASH, HANG, LOST, TILE, OVERLAP, WRONG, check_sr_output,
                              child_env, file_hash, write_raster)


def run_outputs(suite) -> None:
    _companions(suite)
    _nodata(suite)
    _eval_grid(suite)
    _eval_outputs(suite)
    _gpkg(suite)
    _messages(suite)


def _sr(src, dst, model, *extra):
    return _lcmsr("sr", src, dst, "--model", model, "--device", "cpu", "--tile", TILE, "--overlap", OVERLAP,
                  "--quiet", *extra)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): file_hash(p) for p in folder.rglob("*") if p.is_file()}


def _finished(suite, fam, name, cmd, folder: Path, check, keep=(), env=None) -> tuple[int | None, str]:
    """Run ``cmd``, which must succeed: every file of ``folder`` but ``keep`` unchanged, nothing new but
    ``keep`` and its side-cars, and ``check()`` (-> '' or what is wrong) satisfied."""
    before = _snapshot(folder)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env or child_env())
    except subprocess.TimeoutExpired:
        suite.record(fam, name, HANG, f"no exit within {CLI_TIMEOUT} s")
        return None, ""
    seconds = time.monotonic() - t0
    after = _snapshot(folder)
    mine = lambda k: any(k == n or k.startswith(n + ".") for n in keep)   # noqa: E731
    changed = [k for k, v in before.items() if after.get(k) != v and not mine(k)]
    new = [k for k in set(after) - set(before) if not mine(k)]
    err = proc.stderr
    if changed:
        suite.record(fam, name, LOST, f"changed: {changed}")
    elif new:
        suite.record(fam, name, LOST, f"left {sorted(new)}")
    elif proc.returncode != 0 or "Traceback" in err or "Warning:" in err:
        suite.record(fam, name, CRASH if proc.returncode in (0, 2) else WRONG,
                     f"exit {proc.returncode}: {err.strip()[-400:]}")
    else:
        problem = check()
        suite.record(fam, name, WRONG if problem else CORRECT, problem, seconds)
    return proc.returncode, err


# ---------------------------------------------------------------- companion files

def _envi(path: Path) -> Path:
    """An ENVI raster (path = the .dat; its header NAME.hdr beside it)."""
    return write_raster(path, 24, 24, 3, driver="ENVI")


def _companions(suite) -> None:
    fam = suite.family("outputs-companions", "output formats that write files named after OUT",
                       "sr / degrade / --uncertainty into ERS, EHdr .bil, MFF .hdr, RST, SAGA, ILWIS .mpr and a "
                       "PNG world file (--co WORLDFILE=YES) where those names are an input, an ENVI header, a "
                       "shapefile's .prj or the main output")
    folder = suite.work / "outputs-companions"
    folder.mkdir(parents=True, exist_ok=True)
    src = write_raster(folder / "in.tif", 24, 24, 3)
    model = suite.models.get(3, 2)
    cases = [("sr in.tif in.tif.ers (ERS writes its pixels to in.tif)", _sr(src, folder / "in.tif.ers", model),
              ["in.tif.ers", "ERS"])]
    if not suite.quick:
        scene = _envi(folder / "scene.dat")
        (folder / "roads.prj").write_text('GEOGCS["WGS 84"]')
        (folder / "roads.shp").write_bytes(b"\0" * 100)
        (folder / "old.tif").write_bytes(src.read_bytes())
        cases += [
            ("degrade in.tif in.tif.ers", _lcmsr("degrade", src, folder / "in.tif.ers", "--quiet"),
             ["in.tif.ers", "ERS"]),
            ("sr scene.dat scene.bil (EHdr writes scene.hdr, the input's header)",
             _sr(scene, folder / "scene.bil", model), ["scene.bil", "EHdr"]),
            ("sr into roads.bil beside a shapefile (EHdr writes roads.prj)", _sr(src, folder / "roads.bil", model),
             ["roads.bil", "EHdr"]),
            ("--uncertainty old.tif.ers beside OUT old.tif", _sr(src, folder / "old.tif", model, "--uncertainty",
                                                                folder / "old.tif.ers"), ["old.tif.ers", "ERS"]),
            ("sr into scene.hdr (MFF writes scene.b00 ...)", _sr(src, folder / "scene.hdr", model),
             ["scene.hdr", "MFF"]),
            ("sr into in.rst (RST writes in.rdc)", _sr(src, folder / "in.rst", model), ["in.rst", "RST"]),
            ("sr into out.mpr (ILWIS writes out.mp#)", _sr(src, folder / "out.mpr", model), ["out.mpr", "ILWIS"]),
            ("degrade into out.sdat (SAGA writes out.sgrd)", _lcmsr("degrade", src, folder / "out.sdat", "--quiet"),
             ["out.sdat", "SAGA"]),
            ("sr into roads.png --co WORLDFILE=YES (writes roads.wld)",
             _sr(src, folder / "roads.png", model, "--co", "WORLDFILE=YES"), ["roads.png", "PNG"]),
        ]
    for name, cmd, names in cases:
        _refusal(suite, fam, name, cmd, folder, names)


# ---------------------------------------------------------------- per-band nodata

def _per_band_nodata(path: Path, nodata, type_name="Byte", seed=0) -> Path:
    """An Erdas Imagine raster (which keeps one nodata value per band) with a few nodata pixels per band."""
    import numpy as np

    def values(b, rng, shape):
        v = rng.integers(1, 250, shape) if type_name == "Byte" else rng.normal(100, 20, shape)
        if nodata[b] is not None:
            v[b::7, ::5] = nodata[b]
        return v

    p = write_raster(path, 24, 24, len(nodata), type_name, values=values, driver="HFA", seed=seed)
    from osgeo import gdal

    ds = gdal.Open(str(p), gdal.GA_Update)
    for b, value in enumerate(nodata):
        if value is not None:
            ds.GetRasterBand(b + 1).SetNoDataValue(value)
    ds = None
    del np
    return p


def _nodata_check(src: Path, dst: Path, want: list) -> str:
    """'' when every band of ``dst`` has nodata ``want[b]`` (None, a value, or 'nan') and is nodata exactly
    where its input band is (at x2, each input pixel covers 2x2 output pixels)."""
    import numpy as np
    from osgeo import gdal

    problem = check_sr_output(src, dst, 2, False) if not any(w == "nan" for w in want) else ""
    if problem and "nodata" not in problem:
        return problem
    a, b = gdal.Open(str(src)), gdal.Open(str(dst))
    for i, w in enumerate(want):
        got = b.GetRasterBand(i + 1).GetNoDataValue()
        ok = (got is None) if w is None else (got is not None and np.isnan(got)) if w == "nan" else got == w
        if not ok:
            return f"band {i + 1} has nodata {got}, expected {w}"
        na = a.GetRasterBand(i + 1).GetNoDataValue()
        if na is None:
            continue
        bad_in = (a.GetRasterBand(i + 1).ReadAsArray() == na).repeat(2, 0).repeat(2, 1)
        out = b.GetRasterBand(i + 1).ReadAsArray()
        bad_out = np.isnan(out) if w == "nan" else (out == got)
        if (bad_in != bad_out).any():
            return f"band {i + 1}: nodata at {int(bad_out.sum())} output pixels, the input's cover {int(bad_in.sum())}"
    return ""


def _nodata(suite) -> None:
    fam = suite.family("outputs-nodata", "per-band nodata and nodata a type cannot hold",
                       "bands with nodata 0, 255 and 7 (and a value beside none) into GeoTIFF, Erdas Imagine, "
                       "GeoPackage, Float32 GeoTIFF, by sr and degrade; Float64 with nodata -1.797e308 as "
                       "--output-type float32")
    folder = suite.work / "outputs-nodata"
    folder.mkdir(parents=True, exist_ok=True)
    src = _per_band_nodata(folder / "bands.img", [0, 255, 7])
    model = suite.models.get(3, 2)
    _refusal(suite, fam, "nodata 0/255/7 into a Byte GeoTIFF", _sr(src, folder / "out.tif", model, "--ignore-domain"),
             folder, ["nodata", "out.tif"], must_say="nodata")
    _finished(suite, fam, "nodata 0/255/7 into Erdas Imagine (kept per band)",
              _sr(src, folder / "out.img", model, "--ignore-domain"), folder,
              lambda: _nodata_check(src, folder / "out.img", [0, 255, 7]), keep=("out.img",))
    if suite.quick:
        return
    _finished(suite, fam, "nodata 0/255/7 as a Float32 GeoTIFF (NaN in every band)",
              _sr(src, folder / "f32.tif", model, "--ignore-domain", "--output-type", "float32"), folder,
              lambda: _nodata_check(src, folder / "f32.tif", ["nan"] * 3), keep=("f32.tif",))
    _refusal(suite, fam, "nodata 0/255/7 into a GeoPackage", _sr(src, folder / "out.gpkg", model, "--ignore-domain"),
             folder, ["out.gpkg", "GPKG"], must_say="nodata")
    _refusal(suite, fam, "degrade nodata 0/255/7 into a GeoTIFF", _lcmsr("degrade", src, folder / "lr.tif", "--quiet"),
             folder, ["lr.tif", "GTiff"], must_say="nodata")
    mixed = _per_band_nodata(folder / "mixed.img", [9, None, 9], seed=1)
    _refusal(suite, fam, "nodata 9 / none / 9 into a Byte GeoTIFF",
             _sr(mixed, folder / "mixed.tif", model, "--ignore-domain"), folder, ["nodata", "mixed.tif"],
             must_say="nodata")
    _finished(suite, fam, "nodata 9 / none / 9 into Erdas Imagine",
              _sr(mixed, folder / "mixed-out.img", model, "--ignore-domain"), folder,
              lambda: _nodata_check(mixed, folder / "mixed-out.img", [9, None, 9]), keep=("mixed-out.img",))
    f64 = write_raster(folder / "f64.tif", 24, 24, 3, "Float64", nodata=-1.7976931348623157e308,
                       values=lambda b, rng, s: __import__("numpy").where(rng.random(s) < 0.1, -1.7976931348623157e308,
                                                                          rng.normal(0.2, 0.1, s)))
    rc, err = _finished(suite, fam, "Float64 nodata -1.797e308 as --output-type float32 (NaN, no Python warning)",
                        _sr(f64, folder / "f64-32.tif", model, "--ignore-domain", "--output-type", "float32"), folder,
                        lambda: _nodata_check(f64, folder / "f64-32.tif", ["nan"] * 3), keep=("f64-32.tif",))
    if rc == 0 and "RuntimeWarning" in err:
        fam.results[-1].outcome, fam.results[-1].detail = CRASH, f"Python warnings: {err[-300:]}"


# ---------------------------------------------------------------- evaluation: the grid

def _shifted(src: Path, dst: Path, dx: float = 0.0, dy: float = 0.0, epsg: int | None = None) -> Path:
    from osgeo import gdal, osr

    gdal.UseExceptions()
    ds = gdal.Translate(str(dst), str(src))
    gt = list(ds.GetGeoTransform())
    ds.SetGeoTransform((gt[0] + dx, gt[1], gt[2], gt[3] + dy, gt[4], gt[5]))
    if epsg:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    ds = None
    return dst


def _eval_grid(suite) -> None:
    fam = suite.family("eval-grid", "evaluation of rasters that are not on one grid",
                       "`lcmsr eval` with a reference in another CRS, 50 km away, half a pixel off; an LR or "
                       "uncertainty raster off the SR's grid; a folder whose second pair is off (no --json "
                       "written); the same grid scores")
    folder = suite.work / "eval-grid"
    folder.mkdir(parents=True, exist_ok=True)
    sr = write_raster(folder / "sr.tif", 48, 48, 3, seed=1)   # pixel 2 m at (500000, 4600000), EPSG:32633
    far = _shifted(sr, folder / "far.tif", dx=50000)
    _refusal(suite, fam, "reference 50 km away", _lcmsr("eval", "--sr", sr, "--hr", far, "--no-lpips", "--json",
                                                         folder / "r.json"), folder, ["far.tif"],
             must_say="do not overlap")
    same = _shifted(sr, folder / "same.tif")
    _finished(suite, fam, "reference on the same grid", _lcmsr("eval", "--sr", sr, "--hr", same, "--no-lpips",
                                                                "--json", folder / "ok.json"), folder,
              lambda: "" if (folder / "ok.json").exists() else "no JSON written", keep=("ok.json",))
    if suite.quick:
        return
    cases = [
        ("reference in EPSG:32634", _shifted(sr, folder / "utm34.tif", epsg=32634), "--hr", "EPSG:32634"),
        ("reference half a pixel east", _shifted(sr, folder / "half.tif", dx=1.0), "--hr", "half.tif"),
        ("uncertainty 10 pixels south", _shifted(sr, folder / "unc.tif", dy=-20.0), "--uncertainty", "unc.tif"),
    ]
    for name, other, flag, must in cases:
        extra = ["--hr", same] if flag == "--uncertainty" else []
        _refusal(suite, fam, name, _lcmsr("eval", "--sr", sr, flag, other, *extra, "--no-lpips", "--json",
                                          folder / "r.json"), folder, [os.path.basename(other)], must_say=must)
    lr = write_raster(folder / "lr.tif", 24, 24, 3, seed=2)
    from osgeo import gdal

    ds = gdal.Open(str(lr), gdal.GA_Update)
    ds.SetGeoTransform((500100.0, 4.0, 0.0, 4600000.0, 0.0, -4.0))   # 25 LR pixels east
    ds = None
    _refusal(suite, fam, "LR input 25 pixels east", _lcmsr("eval", "--sr", sr, "--lr", lr, "--no-lpips", "--json",
                                                           folder / "r.json"), folder, ["lr.tif"])
    srs, hrs = folder / "srs", folder / "hrs"
    srs.mkdir()
    hrs.mkdir()
    for k in ("a", "b"):
        write_raster(srs / f"{k}.tif", 48, 48, 3, seed=3)
        _shifted(srs / f"{k}.tif", hrs / f"{k}.tif", dx=0.0 if k == "a" else 30000.0)
    _refusal(suite, fam, "folders: the second pair 30 km apart, checked before the first is scored",
             _lcmsr("eval", "--sr", srs, "--hr", hrs, "--no-lpips", "--json", folder / "r.json", "--html",
                    folder / "r.html"), folder, ["b.tif"], must_say="do not overlap")


# ---------------------------------------------------------------- evaluation: report files

def _eval_outputs(suite) -> None:
    fam = suite.family("eval-outputs", "evaluation report files",
                       "--html whose pictures (REPORT_<image>_<picture>.png) are named like an input, for one "
                       "pair and for folders; --json that is a folder; --html under a file; a report whose "
                       "pictures are all declared")
    folder = suite.work / "eval-outputs"
    folder.mkdir(parents=True, exist_ok=True)
    sr = write_raster(folder / "sr.tif", 48, 48, 3, seed=1)
    hr = write_raster(folder / "rep_crop_reference.png", 48, 48, 3, seed=2, driver="PNG", crs=False,
                      geotransform=None)
    _refusal(suite, fam, "--html rep.html: its picture rep_crop_reference.png is --hr",
             _lcmsr("eval", "--sr", sr, "--hr", hr, "--no-lpips", "--html", folder / "rep.html"), folder,
             "rep_crop_reference.png", must_say="destroy")
    if suite.quick:
        return
    (folder / "jdir").mkdir()
    same = write_raster(folder / "hr.tif", 48, 48, 3, seed=1)
    _refusal(suite, fam, "--json is a folder (before any scoring)",
             _lcmsr("eval", "--sr", sr, "--hr", same, "--no-lpips", "--json", folder / "jdir"), folder, "jdir",
             must_say="folder")
    (folder / "afile").write_text("x")
    _refusal(suite, fam, "--html under a file", _lcmsr("eval", "--sr", sr, "--hr", same, "--no-lpips", "--html",
                                                       folder / "afile" / "r.html"), folder, "afile")
    srs, hrs = folder / "srs", folder / "hrs"
    srs.mkdir()
    hrs.mkdir()
    for d, seed in ((srs, 4), (hrs, 5)):
        write_raster(d / "x.tif", 48, 48, 3, seed=seed)
        # An image whose name the picture crop_sr of section "x" of the report srs/out.html would take.
        write_raster(d / "out_x_crop_sr.png", 48, 48, 3, seed=seed + 2, driver="PNG", crs=False, geotransform=None)
    _refusal(suite, fam, "folders: picture out_x_crop_sr.png of image x is an --sr image",
             _lcmsr("eval", "--sr", srs, "--hr", hrs, "--no-lpips", "--html", srs / "out.html"), srs,
             "out_x_crop_sr.png", must_say="destroy")
    before = set(os.listdir(folder))

    def declared() -> str:
        made = sorted(set(os.listdir(folder)) - before)
        wrong = [m for m in made if not (m == "ok.html" or (m.startswith("ok_") and m.endswith(".png")))]
        return f"undeclared files: {wrong}" if wrong else ("" if "ok.html" in made else "no report")
    _finished(suite, fam, "a report and its pictures", _lcmsr("eval", "--sr", sr, "--hr", same, "--no-lpips",
                                                               "--html", folder / "ok.html"), folder, declared,
              keep=("ok.html", "ok_crop_sr.png", "ok_crop_reference.png", "ok_crop_error.png", "ok_error_map.png"))


# ---------------------------------------------------------------- GeoPackage containers

def _gpkg_with_layers(path: Path, src: Path, vector: bool = True, second_raster: bool = False) -> Path:
    from osgeo import gdal, ogr

    gdal.UseExceptions()
    ds = gdal.Translate(str(path), str(src), format="GPKG", creationOptions=["RASTER_TABLE=dem"])
    ds = None
    if second_raster:
        ds = gdal.Translate(str(path), str(src), format="GPKG",
                            creationOptions=["RASTER_TABLE=ortho", "APPEND_SUBDATASET=YES"])
        ds = None
    if vector:
        v = ogr.Open(str(path), 1)
        layer = v.CreateLayer("roads", geom_type=ogr.wkbLineString)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt("LINESTRING (500000 4600000, 500010 4599990)"))
        layer.CreateFeature(f)
        f = layer = v = None
    return path


def _gpkg(suite) -> None:
    fam = suite.family("outputs-gpkg", "outputs into an existing GeoPackage",
                       "sr / degrade into a GeoPackage holding a vector layer, or two raster tables: refused, "
                       "unchanged; into a former single-raster output: replaced")
    folder = suite.work / "outputs-gpkg"
    folder.mkdir(parents=True, exist_ok=True)
    src = write_raster(folder / "in.tif", 24, 24, 3)
    model = suite.models.get(3, 2)
    layers = _gpkg_with_layers(folder / "layers.gpkg", src)
    _refusal(suite, fam, "sr into a GeoPackage with a vector layer", _sr(src, layers, model), folder, "layers.gpkg",
             must_say="other layers")
    if suite.quick:
        return
    two = _gpkg_with_layers(folder / "two.gpkg", src, vector=False, second_raster=True)
    _refusal(suite, fam, "sr into a GeoPackage with two raster tables", _sr(src, two, model), folder, "two.gpkg",
             must_say="other layers")
    _refusal(suite, fam, "degrade into a GeoPackage with a vector layer",
             _lcmsr("degrade", src, layers, "--quiet"), folder, "layers.gpkg", must_say="other layers")
    former = _gpkg_with_layers(folder / "former.gpkg", src, vector=False)
    _finished(suite, fam, "sr over a former single-raster GeoPackage output", _sr(src, former, model), folder,
              lambda: check_sr_output(src, former, 2, False), keep=("former.gpkg",))


# ---------------------------------------------------------------- messages

def _one_line(suite, fam, name, cmd, folder: Path, must_say: list[str], env=None) -> None:
    """Refused with exit 2 and exactly one stderr line that is the error (no warning lines of GDAL or Python
    are allowed to stand in for it), naming each of ``must_say``; the folder unchanged."""
    before = _snapshot(folder)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env or child_env())
    except subprocess.TimeoutExpired:
        suite.record(fam, name, HANG, f"no exit within {CLI_TIMEOUT} s")
        return
    after = _snapshot(folder)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lcmsr: error:")]
    if before != after:
        suite.record(fam, name, LOST, f"files changed or left: {sorted(set(after) ^ set(before))}")
    elif proc.returncode == 0:
        suite.record(fam, name, WRONG, "accepted")
    elif proc.returncode != 2 or "Traceback" in proc.stderr or len(errors) != 1 \
            or not proc.stderr.rstrip().endswith(errors[0]) or "Warning:" in proc.stderr:
        suite.record(fam, name, CRASH, f"exit {proc.returncode}: {proc.stderr.strip()[-400:]!r}")
    elif not all(m in errors[0] for m in must_say):
        suite.record(fam, name, CRASH, f"the message does not say {must_say}: {errors[0]}")
    else:
        suite.record(fam, name, CLEAR, errors[0])


def _messages(suite) -> None:
    fam = suite.family("outputs-messages", "messages naming paths and causes",
                       "an output path with a newline or an escape code, --stage1 given a model file, PROJ's "
                       "database missing (sr and eval), --json that is a folder")
    folder = suite.work / "outputs-messages"
    folder.mkdir(parents=True, exist_ok=True)
    src = write_raster(folder / "in.tif", 24, 24, 3)
    model = suite.models.get(3, 2)
    _one_line(suite, fam, "output name with a newline and an unknown extension",
              _sr(src, folder / "two\nlines.foo", model), folder, ["two\\nlines.foo"])
    if suite.quick:
        return
    _one_line(suite, fam, "output name with an escape code, as ERS", _sr(src, folder / "esc\x1b[2J.ers", model),
              folder, ["esc\\x1b[2J.ers", "ERS"])
    _one_line(suite, fam, "--stage1 is a model file", _lcmsr("train-consistency", src, "--stage1", model, "--out",
                                                              folder / "new.safetensors", "--iterations", 1,
                                                              "--checkpoint-dir", folder / "ck"),
              folder, [model.name, "model file"])
    no_proj = child_env(PROJ_DATA=str(folder / "no-proj"), PROJ_LIB=str(folder / "no-proj"))
    _one_line(suite, fam, "PROJ's database missing: sr", _sr(src, folder / "out.tif", model), folder,
              ["out.tif", "proj.db"], env=no_proj)
    other = _shifted(src, folder / "utm34.tif", epsg=32634)
    _one_line(suite, fam, "PROJ's database missing: eval of two CRSs",
              _lcmsr("eval", "--sr", src, "--hr", other, "--no-lpips"), folder, ["proj.db"], env=no_proj)
