"""Outputs as asked: the format follows the extension, statistics are not inherited, colour
interpretation stays with its band, and the metadata says which model made the pixels."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_model
from test_raster_standin import StandInModel, read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr import __version__  # noqa: E402
from lcmsr import atomic  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

FAST = SROptions(tile=32, overlap=8, batch=4, device="cpu")
RGB = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)


def rgb_raster(path, h=24, w=20, **kw):
    src = write_raster(path, textured(h, w).round().astype(np.uint8), **kw)
    ds = gdal.Open(src, gdal.GA_Update)
    for i, (name, ci) in enumerate(zip(("red", "green", "blue"), RGB)):
        ds.GetRasterBand(i + 1).SetColorInterpretation(ci)
        ds.GetRasterBand(i + 1).SetDescription(name)
    ds = None
    return src


def options(**kw):
    return SROptions(**{**FAST.__dict__, **kw})


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("ext,driver", [("tif", "GTiff"), ("img", "HFA"), ("gpkg", "GPKG"), ("png", "PNG"),
                                        ("jpg", "JPEG")])
def test_the_extension_names_the_format(tmp_path, ext, driver):
    src = rgb_raster(tmp_path / "in.tif")
    reference = superresolve(src, tmp_path / "ref.tif", StandInModel(scale=2), FAST)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = superresolve(src, out_dir / f"sr.{ext}", StandInModel(scale=2), FAST)
    ds = gdal.Open(res.path)
    assert ds.GetDriver().ShortName == driver
    got, want = read_raster(res.path)[:3], read_raster(reference.path)
    if driver == "JPEG":   # lossy (and this texture is noisy): the same picture, not the same values
        assert np.corrcoef(got.ravel().astype(float), want.ravel().astype(float))[0, 1] > 0.9
    else:
        np.testing.assert_array_equal(got, want)
    assert ds.GetGeoTransform() == pytest.approx(gdal.Open(reference.path).GetGeoTransform())
    assert ds.GetMetadataItem("LCMSR_SCALE") == "2"
    ds = None
    # The atomic write left the raster and its own side-cars, no temporary file or folder.
    assert all(name == f"sr.{ext}" or name.startswith(f"sr.{ext}.") for name in folder_listing(out_dir)), \
        folder_listing(out_dir)


def test_other_extensions_and_impossible_types_are_refused_in_one_line_before_any_work(tmp_path):
    src = rgb_raster(tmp_path / "in.tif")
    model = StandInModel(scale=2)
    with pytest.raises(io.RasterError) as err:
        superresolve(src, tmp_path / "out.foo", model, FAST)
    message = str(err.value)
    assert "'.foo'" in message and ".tif" in message and ".img" in message and ".gpkg" in message
    assert "\n" not in message and model.batches == []
    with pytest.raises(io.RasterError, match=r"names the HFA format"):
        superresolve(src, tmp_path / "out.img", model, options(cog=True))
    with pytest.raises(io.RasterError, match=r"creation option FOO is not one the GTiff driver knows"):
        superresolve(src, tmp_path / "out.tif", model, options(creation_options=["FOO=1"]))
    sixteen = write_raster(tmp_path / "in16.tif", textured(24, 20, hi=4000).round().astype(np.uint16),
                           data_type=gdal.GDT_UInt16)
    with pytest.raises(io.RasterError, match=r"JPEG format \(\.jpg\) holds Byte values, but the output is UInt16: "
                                             r"use .*\.tif"):
        superresolve(sixteen, tmp_path / "out.jpg", StandInModel(scale=2, hi=4000.0), FAST)
    # XYZ writes one band: three are refused before any tile runs, one is written.
    with pytest.raises(io.RasterError, match=r"the XYZ format \(\.xyz\) cannot hold a 3-band Byte output"):
        superresolve(src, tmp_path / "out.xyz", model, FAST)
    assert model.batches == []
    assert folder_listing(tmp_path) == ["in.tif", "in16.tif"]
    superresolve(src, tmp_path / "one.xyz", StandInModel(scale=2, bands=1), options(bands=[2]))
    assert gdal.Open(str(tmp_path / "one.xyz")).GetDriver().ShortName == "XYZ"


def test_statistics_are_the_outputs_own_or_absent(tmp_path):
    src = rgb_raster(tmp_path / "in.tif")
    ds = gdal.Open(src)
    for b in (1, 2, 3):
        ds.GetRasterBand(b).ComputeStatistics(False)   # into in.tif.aux.xml, as QGIS does
    ds = None
    assert gdal.Open(src).GetRasterBand(1).GetMetadataItem("STATISTICS_MEAN") is not None
    # A stale side-car beside the destination must not survive the replacement either.
    (tmp_path / "out.tif.aux.xml").write_text('<PAMDataset><PAMRasterBand band="1"><Metadata>'
                                              '<MDI key="STATISTICS_MEAN">1</MDI></Metadata></PAMRasterBand>'
                                              '</PAMDataset>')
    for name in ("out.tif", "out.img"):
        res = superresolve(src, tmp_path / name, StandInModel(scale=2), FAST)
        ds = gdal.Open(res.path)
        pixels = read_raster(res.path).astype(np.float64)
        for b in (1, 2, 3):
            band = ds.GetRasterBand(b)
            stored = {k: v for k, v in (band.GetMetadata() or {}).items() if k.startswith("STATISTICS_")}
            assert stored == {}, (name, b, stored)
            lo, hi, mean, std = band.ComputeStatistics(False)
            p = pixels[b - 1]
            assert (lo, hi) == (p.min(), p.max()) and mean == pytest.approx(p.mean()) and \
                std == pytest.approx(p.std(), rel=1e-6)
        ds = None


def test_colour_interpretation_and_descriptions_follow_their_band(tmp_path):
    src = rgb_raster(tmp_path / "in.tif")
    res = superresolve(src, tmp_path / "bgr.tif", StandInModel(scale=2), options(bands=[3, 2, 1]))
    ds = gdal.Open(res.path)
    assert [ds.GetRasterBand(b).GetColorInterpretation() for b in (1, 2, 3)] == list(RGB[::-1])
    assert [ds.GetRasterBand(b).GetDescription() for b in (1, 2, 3)] == ["blue", "green", "red"]
    ds = None
    for ext in ("png", "gpkg"):
        res = superresolve(src, tmp_path / f"rgb.{ext}", StandInModel(scale=2), FAST)
        ds = gdal.Open(res.path)
        assert [ds.GetRasterBand(b).GetColorInterpretation() for b in (1, 2, 3)] == list(RGB), ext
        ds = None


def test_provenance_names_the_model_file_and_its_sha256(tmp_path):
    pytest.importorskip("torch").set_num_threads(1)
    from lcmsr.weights import load_model

    model_file = write_tiny_model(tmp_path / "tiny_x4.safetensors", scale=4)
    digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    src = rgb_raster(tmp_path / "in.tif", h=16, w=16)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetMetadataItem("LCMSR_MODEL", "an-earlier-run.safetensors")   # the input's own provenance is not ours
    ds = None
    expected = {"LCMSR_MODEL": "tiny_x4.safetensors", "LCMSR_MODEL_SHA256": digest, "LCMSR_SCALE": "4",
                "LCMSR_SAMPLER": "faithful", "LCMSR_STEPS": "1", "LCMSR_SEED": "7", "LCMSR_INPUT_BANDS": "3,2,1",
                "LCMSR_VERSION": __version__}
    opts = options(sampler="condnet", seed=7, bands=[3, 2, 1], tile=16, overlap=4, ignore_domain=True)
    # A path, and a model object loaded from that file (the plugin's model cache hands one over).
    for name, model in (("by_path.gpkg", model_file), ("by_object.tif", load_model(model_file))):
        res = superresolve(src, tmp_path / name, model, opts)
        meta = gdal.Open(res.path).GetMetadata()
        assert {k: meta.get(k) for k in expected} == expected, name
    meta = gdal.Open(superresolve(src, tmp_path / "standin.tif", StandInModel(scale=2), FAST).path).GetMetadata()
    assert "not a file" in meta["LCMSR_MODEL"] and "LCMSR_MODEL_SHA256" not in meta


def test_creation_options_and_overviews(tmp_path):
    src = rgb_raster(tmp_path / "in.tif", h=80, w=72)   # x4: 320 x 288, one overview level
    res = superresolve(src, tmp_path / "lzw.tif", StandInModel(scale=4),
                       options(creation_options=["COMPRESS=LZW"], overviews=True))
    ds = gdal.Open(res.path)
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "LZW"
    assert ds.GetRasterBand(1).GetOverviewCount() == 1 and ds.GetRasterBand(1).GetBlockSize() == [256, 256]
    ds = None
    res = superresolve(src, tmp_path / "ov.png", StandInModel(scale=4), options(overviews=True))
    assert gdal.Open(res.path).GetRasterBand(1).GetOverviewCount() == 1   # a .ovr beside it
    assert (tmp_path / "ov.png.ovr").exists()
    assert not [n for n in folder_listing(tmp_path) if n.startswith(".")]


def test_cli_writes_the_format_and_options_it_is_given(tmp_path):
    pytest.importorskip("torch")
    model_file = write_tiny_model(tmp_path / "tiny_x2.safetensors", scale=2)
    src = rgb_raster(tmp_path / "in.tif", h=16, w=16)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lcmsr", "sr", src, str(tmp_path / "out.img"), "--model", model_file, "--quiet",
           "--device", "cpu", "--tile", "16", "--overlap", "4", "--co", "COMPRESSED=YES", "--ignore-domain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ds = gdal.Open(str(tmp_path / "out.img"))
    assert ds.GetDriver().ShortName == "HFA" and ds.GetMetadataItem("LCMSR_MODEL") == "tiny_x2.safetensors"
    ds = None
    proc = subprocess.run(cmd[:5] + [str(tmp_path / "out.xyzzy")] + cmd[6:], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode != 0 and "'.xyzzy'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_killed_conversion_leaves_a_folder_the_next_run_sweeps(tmp_path):
    import subprocess as sp

    child = sp.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".sr.img.partial-{atomic.HOST_TAG}-{child.pid}-0badcafe"
    stale.mkdir()
    (stale / "sr.img").write_bytes(b"half")
    src = rgb_raster(tmp_path / "in.tif")
    superresolve(src, tmp_path / "sr.img", StandInModel(scale=2), FAST)
    assert not stale.exists()
