"""Issue 23's checks of `lcmsr batch` with the real units on real rasters.

Four real rasters (8-bit RGB, 16-bit 4-band Sentinel-2, a 6-band stack, one with nodata) and a scene
split into four units: a local two-worker Dask cluster gives the local executor's bytes; kill -9 of a
worker or of the driver mid-run, then a rerun, recomputes only what was unfinished and gives the same
bytes; a catalogue with bad items reports each in one line and completes the rest; a STAC item of
single-band assets becomes one stacked input; the outputs share one VRT mosaic per CRS.

The tiny test model (band-wise domain) stands in for a trained one: the byte checks do not depend on
what the model learnt, and it keeps the module near a minute on two cores.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

gdal = pytest.importorskip("osgeo.gdal")
pytest.importorskip("distributed")
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from lcmsr.sr.batch import LOG_NAME, JobLog, run_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
S2 = REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"
NEON = REPO / "resources" / "sample" / "neon_lr.tif"
SIZE = 96          # LR pixels a side of the four rasters: ~1 s each through the tiny model on one thread
FAST = dict(tile=64, overlap=16, ignore_domain=True, device="cpu", precision="fp32")


def tiny_bandwise(path) -> str:
    import torch

    from lcmsr import domain as dom
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(0)
    model = build_model(tiny_config(scale=4, bands=1))
    info = copy.deepcopy(model.info)
    info.domain = copy.deepcopy(dom.PRESETS["satellite-bandwise"])
    info.data_type, info.normalization = "Float32", type(info.normalization)([0.0], [1.0])
    return str(save_model(path, model, info))


def crop(src, dst, x, y, w, h, bands=None, nodata=None, **translate) -> str:
    ds = gdal.Translate(str(dst), str(src), srcWin=[x, y, w, h], bandList=bands, noData=nodata,
                        creationOptions=["TILED=YES"], **translate)
    ds = None
    return str(dst)


def mirrored(src, dst, w, h, bands) -> str:
    """A raster of ``w`` x ``h`` of ``src``'s real pixels (its bands ``bands``), mirrored past its edges."""
    ds = gdal.Open(str(src))
    data = np.stack([ds.GetRasterBand(b).ReadAsArray() for b in bands])
    data = np.pad(data, ((0, 0), (0, max(0, h - data.shape[1])), (0, max(0, w - data.shape[2]))), "symmetric")
    out = gdal.GetDriverByName("GTiff").Create(str(dst), w, h, len(bands), ds.GetRasterBand(1).DataType,
                                                options=["TILED=YES"])
    out.SetGeoTransform(ds.GetGeoTransform())
    out.SetProjection(ds.GetProjection())
    for i, b in enumerate(bands):
        band = out.GetRasterBand(i + 1)
        band.WriteArray(data[i, :h, :w])
        band.SetDescription(ds.GetRasterBand(b).GetDescription())
    out = None
    return str(dst)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    """The four real rasters and a scene that splits into 2 x 2 units of 256 LR pixels."""
    import torch

    torch.set_num_threads(1)   # the workers run one thread each: the reference too, for the same bytes
    d = tmp_path_factory.mktemp("rasters")
    rgb = crop(NEON, d / "neon_rgb8.tif", 16, 16, SIZE, SIZE)
    s2 = crop(S2, d / "S2B_T33UUU_u16.tif", 40, 40, SIZE, SIZE)
    # Six bands of real reflectance: the four bands, then red and NIR of the neighbouring window.
    four = gdal.Open(crop(S2, d / "a.tif", 100, 100, SIZE, SIZE)).ReadAsArray()
    two = gdal.Open(crop(S2, d / "b.tif", 100 + SIZE, 100, SIZE, SIZE, bands=[3, 4])).ReadAsArray()
    ds = gdal.GetDriverByName("GTiff").Create(str(d / "stack6_u16.tif"), SIZE, SIZE, 6, gdal.GDT_UInt16,
                                              options=["TILED=YES"])
    ref = gdal.Open(str(d / "a.tif"))
    ds.SetGeoTransform(ref.GetGeoTransform())
    ds.SetProjection(ref.GetProjection())
    for i, plane in enumerate(np.concatenate([four, two])):
        ds.GetRasterBand(i + 1).WriteArray(plane)
    ds = ref = None
    nodata = crop(S2, d / "S2B_T33UUU_nodata.tif", 150, 150, SIZE, SIZE, nodata=0)
    ds = gdal.Open(nodata, gdal.GA_Update)
    for b in range(1, 5):
        plane = ds.GetRasterBand(b).ReadAsArray()
        plane[:30, :40] = 0                      # a corner of nodata, as at a swath edge
        ds.GetRasterBand(b).WriteArray(plane)
    ds = None
    os.remove(d / "a.tif"), os.remove(d / "b.tif")
    scene = mirrored(S2, d / "S2B_T33UUU_B08_scene.tif", 300, 280, [4])
    return {"rasters": [rgb, s2, str(d / "stack6_u16.tif"), nodata], "scene": scene,
            "model": tiny_bandwise(d / "tiny_bandwise.safetensors")}


@pytest.fixture(scope="module")
def reference(rasters, tmp_path_factory):
    """The local executor's outputs (one process), the bytes every other run must give."""
    out = tmp_path_factory.mktemp("local")
    result = run_batch(rasters["rasters"] + [rasters["scene"]], str(out), rasters["model"], SROptions(**FAST),
                       executor="local", unit_size=256)
    assert result.exit_status == 0, result.failed
    return {os.path.basename(r.dst): Path(r.dst).read_bytes() for r in result.items}


def unit_events(out, run: int | None = None) -> list[dict]:
    """unit_done events of the log, of every run or of run ``run`` (0-based)."""
    events = JobLog(str(Path(out) / LOG_NAME)).events
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    if run is not None:
        events = events[starts[run]:(starts[run + 1] if run + 1 < len(starts) else None)]
    return [e for e in events if e["event"] == "unit_done"]


def outputs(out) -> dict:
    return {p.name: p.read_bytes() for p in Path(out).glob("*_sr.tif")}


def test_a_scene_split_into_units_matches_one_process_within_one_grey_level(rasters, reference, tmp_path):
    """The 300 x 280 scene ran as 2 x 2 units of 256 LR pixels and its output matches a single-process
    `superresolve` of the whole raster within one grey level (only a batch of another composition may round a
    value the other way); the four rasters keep their band counts (band-wise model: every band)."""
    assert sorted(reference) == sorted(Path(p).stem + "_sr.tif" for p in rasters["rasters"] + [rasters["scene"]])
    single = tmp_path / "single.tif"
    superresolve(rasters["scene"], single, rasters["model"], SROptions(**FAST))
    a = gdal.Open(str(single)).ReadAsArray().astype(int)
    scene_out = tmp_path / "scene_sr.tif"
    scene_out.write_bytes(reference["S2B_T33UUU_B08_scene_sr.tif"])
    b = gdal.Open(str(scene_out)).ReadAsArray().astype(int)
    assert a.shape == b.shape == (1120, 1200)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3
    bands = {}
    for name, data in reference.items():
        (tmp_path / name).write_bytes(data)
        bands[name] = gdal.Open(str(tmp_path / name)).RasterCount
    assert bands == {"neon_rgb8_sr.tif": 3, "S2B_T33UUU_u16_sr.tif": 4, "stack6_u16_sr.tif": 6,
                     "S2B_T33UUU_nodata_sr.tif": 4, "S2B_T33UUU_B08_scene_sr.tif": 1}


def _start(args, env=None) -> subprocess.Popen:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "backend"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "lcmsr", "batch", *args, "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_units(out, n, proc, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (Path(out) / LOG_NAME).exists() and len(unit_events(out)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the batch ended before {n} unit(s) were done:\n{proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no {n} unit(s) done in {timeout} s")


def _cli_args(rasters, out, *extra):
    return [*rasters["rasters"], rasters["scene"], "--out-dir", str(out), "--model", rasters["model"],
            "--tile", "64", "--overlap", "16", "--ignore-domain", "--device", "cpu", "--precision", "fp32",
            "--unit-size", "256", "--no-cog", *extra]


def _resumed_only_unfinished(out, reference) -> None:
    first = {(e["item"], e["index"]) for e in unit_events(out, 0)}
    second = {(e["item"], e["index"]) for e in unit_events(out, 1)}
    assert first and not first & second               # nothing done before was computed again
    assert len(first | second) == 8                   # and everything was done once
    assert outputs(out) == reference


@pytest.mark.slow
def test_two_dask_workers_give_the_local_bytes_even_after_kill_9_of_one_and_a_rerun(rasters, reference, tmp_path):
    """A local two-worker Dask cluster (one thread each) runs the four rasters and the scene's four units; one
    worker is killed with SIGKILL as soon as the first unit is in.  Dask runs the lost task again on the nanny's
    new worker, or gives up on it: either way a rerun finishes, computes no unit twice, and every output has the
    local executor's bytes.  The outputs share one mosaic per CRS and band layout."""
    psutil = pytest.importorskip("psutil")
    proc = _start(_cli_args(rasters, tmp_path, "--executor", "dask", "--workers", "2", "--no-mosaic"))
    try:
        _wait_for_units(tmp_path, 1, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        os.kill(workers[0].pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode in (0, 1), err
    rerun = _start(_cli_args(rasters, tmp_path, "--executor", "dask", "--workers", "2"))
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert "dask (a local cluster, 2 worker thread(s))" in out
    first = {(e["item"], e["index"]) for e in unit_events(tmp_path, 0)}
    second = {(e["item"], e["index"]) for e in unit_events(tmp_path, 1)}
    assert not first & second and len(first | second) == 8     # four one-unit rasters, the scene's 2 x 2 units
    assert outputs(tmp_path) == reference
    # One CRS per mosaic; the Sentinel-2 outputs of 1, 4 and 6 bands cannot share a VRT: one each.
    mosaics = sorted(line.split(" (", 1)[1] for line in out.splitlines() if line.startswith("mosaic "))
    assert mosaics == ["1 raster(s), EPSG:32612)", "1 raster(s), EPSG:32633)", "1 raster(s), EPSG:32633)",
                       "2 raster(s), EPSG:32633)"], out
    for vrt in tmp_path.glob("mosaic*.vrt"):
        ds = gdal.Open(str(vrt))
        assert ds.RasterXSize >= SIZE * 4 and ds.GetRasterBand(1).GetOverviewCount() >= 1


@pytest.mark.slow
def test_kill_9_of_the_driver_then_a_rerun_recomputes_only_what_was_unfinished(rasters, reference, tmp_path):
    proc = _start(_cli_args(rasters, tmp_path, "--no-mosaic"))
    try:
        _wait_for_units(tmp_path, 3, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert len(unit_events(tmp_path, 0)) < 8
    rerun = _start(_cli_args(rasters, tmp_path, "--no-mosaic"))
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert "0 failed" in out
    _resumed_only_unfinished(tmp_path, reference)


def test_a_catalogue_with_bad_items_reports_each_in_one_line_and_completes_the_rest(rasters, tmp_path):
    data = tmp_path / "catalogue"
    data.mkdir()
    good = crop(S2, data / "S2B_T33UUU_good.tif", 0, 0, 48, 48)
    (data / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(400))
    # 300 m pixels: outside the band-wise model's 10-120 m (and more than 2x outside), and any model's.
    far = crop(S2, data / "S2B_T33UUU_300m.tif", 0, 0, 48, 48)
    ds = gdal.Open(far, gdal.GA_Update)
    g = ds.GetGeoTransform()
    ds.SetGeoTransform((g[0], 300.0, 0.0, g[3], 0.0, -300.0))
    ds = None
    listing = tmp_path / "list.txt"
    listing.write_text(f"{data}/missing.tif\n")
    out = tmp_path / "out"
    # No --model: each input's model is chosen by its domain, so the 300 m raster fits none of them.
    proc = _start([str(data), str(listing), "--out-dir", str(out), "--tile", "64", "--overlap", "16",
                   "--device", "cpu"])
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr
    failed = [line for line in stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 3, stdout
    reasons = {line.split(": ", 1)[0][len("FAILED "):]: line.split(": ", 1)[1] for line in failed}
    assert "does not exist" in reasons[f"{data}/missing.tif"]
    assert "is not a raster GDAL can read" in reasons[str(data / "corrupt.tif")]
    assert "input pixel 300 m" in reasons[far] and "lcmsr_x4_satellite_bandwise" in reasons[far]
    logged = [e for e in JobLog(str(out / LOG_NAME)).events if e["event"] == "item_failed"]
    assert len(logged) == 3 and all("\n" not in e["error"] for e in logged)
    assert "1 done, 0 done before, 3 failed" in stdout
    # The good item is a Cloud Optimized GeoTIFF (the batch's default), 4 bands, x4.
    ds = gdal.Open(str(out / "S2B_T33UUU_good_sr.tif"))
    assert (ds.RasterXSize, ds.RasterCount) == (192, 4)
    assert ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert (out / "mosaic.vrt").exists() and not (out / "mosaic.vrt.ovr").exists()   # 192 px: no overview needed


def test_a_stac_item_of_single_band_assets_is_one_stacked_input(rasters, tmp_path):
    assets = {}
    for b, name in enumerate(["B02", "B03", "B04", "B08"], start=1):
        crop(S2, tmp_path / f"T33UUU_{name}.tif", 0, 0, 48, 48, bands=[b])
        assets[name] = {"href": f"T33UUU_{name}.tif", "type": "image/tiff; application=geotiff",
                        "roles": ["data"], "eo:bands": [{"name": name}]}
    assets["thumbnail"] = {"href": "thumb.png", "roles": ["thumbnail"]}
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "S2B_T33UUU_20170216", "assets": assets}]}))
    result = run_batch([str(stac)], str(tmp_path / "out"), rasters["model"], SROptions(**FAST),
                       assets=["B04", "B03", "B02", "B08"])
    assert result.exit_status == 0, result.failed
    ds = gdal.Open(result.items[0].dst)
    assert ds.RasterCount == 4 and ds.RasterXSize == 192
    assert [ds.GetRasterBand(i).GetDescription() for i in range(1, 5)] == ["B04", "B03", "B02", "B08"]
    # The stacked input's bands are the assets in the order asked, pixel for pixel.
    stack = gdal.Open(str(tmp_path / "out" / ".lcmsr-stacks" / "S2B_T33UUU_20170216.vrt")).ReadAsArray()
    assert np.array_equal(stack[0], gdal.Open(str(tmp_path / "T33UUU_B04.tif")).ReadAsArray())
