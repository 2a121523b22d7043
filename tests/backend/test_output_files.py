"""What a command writes is exactly what it declares (issue 25): formats whose driver writes files named
after the output are refused before any work and never moved into place; nodata stays per band or the job
is refused; an existing GeoPackage with other layers is refused; evaluation checks the grid and declares
its report pictures; messages stay on one line."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

from test_raster_standin import StandInModel, read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.metrics.evaluate import (check_pair, evaluate_pair, picture_path, report_outputs,  # noqa: E402
                                    write_html_report)
from lcmsr.paths import OutputPathError, check_file_output  # noqa: E402
from lcmsr.progress import Progress  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.degrade import degrade  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

FAST = SROptions(tile=32, overlap=8, batch=4, device="cpu", ignore_domain=True)


def listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def byte_raster(path, bands=3, nodata=None, driver="GTiff", seed=0, h=24, w=20):
    data = textured(h, w).round().astype(np.uint8)[:1].repeat(bands, 0)
    data = np.clip(data.astype(int) + np.arange(bands)[:, None, None] * (seed + 1), 1, 250).astype(np.uint8)
    src = write_raster(path, data, driver=driver, options=())
    if nodata is not None:
        ds = gdal.Open(src, gdal.GA_Update)
        for i, value in enumerate(nodata):
            band = ds.GetRasterBand(i + 1)
            if value is not None:
                arr = band.ReadAsArray()
                arr[i::5, ::3] = value
                band.WriteArray(arr)
                band.SetNoDataValue(value)
        ds = None
    return src


# ---------------------------------------------------------------- companion files

@pytest.mark.parametrize("name,driver", [("in.tif.ers", "ERS"), ("out.bil", "EHdr"), ("out.rst", "RST"),
                                         ("out.mpr", "ILWIS"), ("out.sdat", "SAGA")])
def test_formats_that_write_files_named_after_the_output_are_neither_offered_nor_accepted(tmp_path, name, driver):
    assert name.rsplit(".", 1)[1] not in io.output_formats()
    src = byte_raster(tmp_path / "in.tif")
    before = listing(tmp_path)
    with pytest.raises(io.RasterError, match=f"{driver} format .* writes other files"):
        superresolve(src, tmp_path / name, StandInModel(scale=2), FAST)
    with pytest.raises(io.RasterError, match=f"{driver} format"):
        degrade(src, tmp_path / name, 2)
    assert listing(tmp_path) == before


def test_a_creation_option_that_adds_a_world_file_is_refused_before_any_work(tmp_path):
    src = byte_raster(tmp_path / "in.tif")
    (tmp_path / "roads.wld").write_text("mine")
    with pytest.raises(io.RasterError, match=r"PNG format .* \(roads.wld\)"):
        superresolve(src, tmp_path / "roads.png", StandInModel(scale=2),
                     SROptions(**{**FAST.__dict__, "creation_options": ["WORLDFILE=YES"]}))
    assert (tmp_path / "roads.wld").read_text() == "mine"


def test_the_writer_moves_nothing_but_the_output_and_its_side_cars(tmp_path):
    """Past the probe (here bypassed with a format object made by hand), the writer itself refuses."""
    (tmp_path / "out.hdr").write_text("an ENVI header of another raster")
    before = listing(tmp_path)
    spec = io.OutputSpec(16, 16, gdal.GDT_Byte, nodata=[None], fill=[None])
    with pytest.raises(io.RasterWriteError, match="wrote other files"):
        with io.AtomicRaster(str(tmp_path / "out.bil"), spec, fmt=io.OutputFormat("EHdr")) as w:
            w.write(0, 0, np.zeros((1, 16, 16), np.uint8))
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- nodata per band

def test_bands_with_different_nodata_are_kept_per_band_or_refused_or_nan(tmp_path):
    src = byte_raster(tmp_path / "bands.img", nodata=[0, 255, 7], driver="HFA")
    model = StandInModel(scale=2)
    with pytest.raises(io.RasterError, match=r"different nodata values \(0, 255, 7\) but the GTiff format"):
        superresolve(src, tmp_path / "out.tif", model, FAST)
    with pytest.raises(io.RasterError, match="GTiff format"):
        degrade(src, tmp_path / "lr.tif", 2)
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "lr.tif").exists()

    res = superresolve(src, tmp_path / "out.img", model, FAST)
    ds = gdal.Open(res.path)
    assert [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(3)] == [0, 255, 7]
    inp = read_raster(src)
    out = read_raster(res.path)
    for b, nd in enumerate((0, 255, 7)):
        np.testing.assert_array_equal(out[b] == nd, (inp[b] == nd).repeat(2, 0).repeat(2, 1))

    progress = Recorder()
    res = superresolve(src, tmp_path / "f32.tif", model, SROptions(**{**FAST.__dict__, "output_type": "float32"}),
                       progress)
    out = read_raster(res.path)
    ds = gdal.Open(res.path)
    assert all(np.isnan(ds.GetRasterBand(i + 1).GetNoDataValue()) for i in range(3))
    for b, nd in enumerate((0, 255, 7)):
        np.testing.assert_array_equal(np.isnan(out[b]), (inp[b] == nd).repeat(2, 0).repeat(2, 1))
    assert any("nodata is NaN" in m for m in progress.infos)


class Recorder(Progress):
    def __init__(self):
        self.infos = []

    def info(self, message):
        self.infos.append(message)


def test_the_output_check_compares_nodata(tmp_path):
    path = write_raster(tmp_path / "x.tif", np.ones((1, 8, 8), np.uint8), nodata=3)
    spec = io.OutputSpec(8, 8, gdal.GDT_Byte, nodata=[4], fill=[4])
    io._verify(path, spec, "x")   # without the comparison: only size and the last row
    with pytest.raises(io.RasterWriteError, match="nodata 3 in band 1, expected 4"):
        io._verify(path, spec, "x", nodata=True)


def test_float64_nodata_beyond_float32_becomes_nan_without_python_warnings(tmp_path):
    data = textured(24, 20)[:1].astype(np.float64) / 255
    data[0, ::4, ::3] = -1.7976931348623157e308
    src = write_raster(tmp_path / "f64.tif", data, gdal.GDT_Float64, nodata=-1.7976931348623157e308)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=2, bands=1),
                           SROptions(**{**FAST.__dict__, "output_type": "float32"}))
    out = read_raster(res.path)[0]
    assert np.isnan(gdal.Open(res.path).GetRasterBand(1).GetNoDataValue())
    np.testing.assert_array_equal(np.isnan(out), (data[0] < -1e300).repeat(2, 0).repeat(2, 1))
    assert np.isfinite(out[~np.isnan(out)]).all()


# ---------------------------------------------------------------- GeoPackage containers

def test_an_existing_geopackage_with_other_layers_is_refused_and_a_former_output_replaced(tmp_path):
    from osgeo import ogr

    src = byte_raster(tmp_path / "in.tif")
    gpkg = tmp_path / "layers.gpkg"
    gdal.Translate(str(gpkg), src, format="GPKG", creationOptions=["RASTER_TABLE=dem"])
    v = ogr.Open(str(gpkg), 1)
    v.CreateLayer("roads", geom_type=ogr.wkbPoint)
    v = None
    before = gpkg.read_bytes()
    with pytest.raises(io.RasterError, match=r"GeoPackage holding other layers \(dem \(tiles\), roads \(features\)"):
        superresolve(src, gpkg, StandInModel(scale=2), FAST)
    assert gpkg.read_bytes() == before
    former = tmp_path / "former.gpkg"
    gdal.Translate(str(former), src, format="GPKG")
    assert io.container_layers(str(former)) == []
    superresolve(src, former, StandInModel(scale=2), FAST)
    assert gdal.Open(str(former)).RasterXSize == 40


# ---------------------------------------------------------------- evaluation

def _moved(src, dst, dx=0.0, epsg=None):
    ds = gdal.Translate(str(dst), src)
    gt = list(ds.GetGeoTransform())
    gt[0] += dx
    ds.SetGeoTransform(gt)
    if epsg:
        from osgeo import osr

        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    ds = None
    return str(dst)


def test_evaluation_compares_crs_and_corners_before_any_pixel(tmp_path):
    sr = byte_raster(tmp_path / "sr.tif", h=48, w=48)
    assert check_pair(sr, _moved(sr, tmp_path / "same.tif"), 4) == 4
    evaluate_pair(sr, _moved(sr, tmp_path / "quarter.tif", dx=0.4), 4, lpips=False)   # 0.2 pixel: same grid
    with pytest.raises(ValueError, match=r"in EPSG:4326 .* but SR .* in EPSG:32611"):
        evaluate_pair(sr, _moved(sr, tmp_path / "geo.tif", epsg=4326), 4, lpips=False)
    with pytest.raises(ValueError, match="do not overlap at all"):
        evaluate_pair(sr, _moved(sr, tmp_path / "far.tif", dx=50000), 4, lpips=False)
    with pytest.raises(ValueError, match=r"are 0.5 of SR .* pixels apart"):
        check_pair(sr, _moved(sr, tmp_path / "half.tif", dx=1.0), 4)
    lr = str(tmp_path / "lr.tif")
    gdal.Translate(lr, sr, width=24, height=24)
    check_pair(sr, lr=lr)   # origin kept, pixels twice as large: SR's grid
    with pytest.raises(ValueError, match="LR .* do not cover the same ground"):
        check_pair(sr, lr=byte_raster(tmp_path / "lr2.tif", h=24, w=24))   # LR pixels as small as SR's
    with pytest.raises(ValueError, match="LR .* do not cover the same ground"):
        check_pair(sr, lr=_moved(lr, tmp_path / "lr-east.tif", dx=4.0))


def test_report_pictures_are_declared_and_checked_against_the_inputs(tmp_path):
    report = tmp_path / "rep.html"
    declared = dict((p, w) for w, p in report_outputs(report, ["", "a"]))
    assert str(picture_path(report, "", "crop_sr")) in declared
    assert str(tmp_path / "rep_a_error_map.png") in declared
    hr = tmp_path / "rep_crop_sr.png"
    hr.write_bytes(b"an input")
    pictures = [dict(name="crop_sr", title="t", rgb=np.zeros((4, 4, 3), np.uint8), group="crops")]
    with pytest.raises(OutputPathError, match="destroy that input"):
        write_html_report(report, {"psnr": 1.0}, "t", pictures=pictures, inputs=[("the reference", hr)])
    assert hr.read_bytes() == b"an input" and not report.exists()
    with pytest.raises(OutputPathError, match="is a folder"):
        check_file_output(tmp_path, "--json")


def test_cli_errors_are_one_line_whatever_the_path_holds(tmp_path):
    src = byte_raster(tmp_path / "in.tif")
    out = tmp_path / "two\nlines\x1b[2J.ers"
    proc = subprocess.run([sys.executable, "-m", "lcmsr", "degrade", src, str(out), "--quiet"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "two\\nlines\\x1b[2J.ers" in proc.stderr, proc.stderr


def test_a_model_file_given_as_a_checkpoint_is_named_as_given(tmp_path):
    from conftest import write_tiny_model
    from lcmsr.train.checkpoint import CheckpointError, load_checkpoint

    model = write_tiny_model(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors is not a training checkpoint .* LCMSR model file"):
        load_checkpoint(model)


def test_the_evaluation_request_declares_every_file_and_speaks_the_callers_words(tmp_path):
    from lcmsr.metrics.protocol import CLI_EVAL_TERMS, EvalRequest

    srs, hrs = tmp_path / "srs", tmp_path / "hrs"
    srs.mkdir()
    hrs.mkdir()
    for d in (srs, hrs):
        byte_raster(d / "a.tif", h=48, w=48)
        byte_raster(d / "b.tif", h=48, w=48)
    request = EvalRequest(sr=str(srs), hr=str(hrs), html=str(tmp_path / "r.html"), json=str(tmp_path / "r.json"))
    outputs = {p for _, p in request.outputs()}
    assert {str(tmp_path / "r.json"), str(tmp_path / "r.html"), str(tmp_path / "r_a_crop_sr.png"),
            str(tmp_path / "r_b_error_map.png")} <= outputs
    assert str(srs / "b.tif") in {p for _, p in request.inputs()}
    assert [name for name, _, _ in request.check()] == ["a", "b"]
    terms = dict(CLI_EVAL_TERMS, sr="SR layer", hr="Reference layer", lr="LR layer")
    with pytest.raises(ValueError, match="SR layer needs Reference layer .*, LR layer"):
        EvalRequest(sr=str(srs / "a.tif"), terms=terms).validate()
