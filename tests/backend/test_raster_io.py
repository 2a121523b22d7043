"""The output keeps the input's CRS and scaled geotransform; inputs fail with clear errors; writes are atomic."""
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_raster_standin import StandInModel, read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.progress import Progress  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

HERE = Path(__file__).resolve().parent
FAST = SROptions(tile=32, overlap=8, batch=4)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def byte_raster(path, h=24, w=20, **kw):
    return write_raster(path, textured(h, w).round().astype(np.uint8), **kw)


# ---------------------------------------------------------------- georeferencing

@pytest.mark.parametrize("case,gt,epsg", [
    ("projected", (500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5), 32611),
    ("geographic", (-110.5, 1e-5, 0.0, 44.9, 0.0, -1e-5), 4326),
    ("rotated", (1000.0, 2.0, 0.6, 5000.0, 0.4, -2.0), 3857),
])
def test_output_keeps_crs_and_scaled_geotransform(tmp_path, case, gt, epsg):
    src = byte_raster(tmp_path / "in.tif", gt=gt, epsg=epsg)
    ds = gdal.Open(src)
    ds_in_crs = ds.GetProjection()
    ds = None
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=4), FAST)
    out = gdal.Open(res.path)
    assert (out.RasterXSize, out.RasterYSize) == (80, 96) == (res.width, res.height)
    got = out.GetGeoTransform()
    expect = (gt[0], gt[1] / 4, gt[2] / 4, gt[3], gt[4] / 4, gt[5] / 4)
    assert got == pytest.approx(expect, rel=1e-12, abs=1e-15)
    assert out.GetProjection() == ds_in_crs
    # The far corner lands on the same map coordinate at both resolutions.
    corner_in = (gt[0] + 20 * gt[1] + 24 * gt[2], gt[3] + 20 * gt[4] + 24 * gt[5])
    corner_out = (got[0] + 80 * got[1] + 96 * got[2], got[3] + 80 * got[4] + 96 * got[5])
    assert corner_out == pytest.approx(corner_in, rel=1e-12)
    assert not res.warnings


def test_no_crs_input_warns_and_writes_no_crs(tmp_path):
    src = byte_raster(tmp_path / "in.tif", gt=None, epsg=None)
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), FAST)
    out = gdal.Open(res.path)
    assert out.GetProjection() == ""
    assert out.GetGeoTransform(can_return_null=True) is None
    assert any("no coordinate reference system" in w for w in res.warnings)


def test_png_input_is_read(tmp_path):
    mem = gdal.GetDriverByName("MEM").Create("", 20, 16, 3, gdal.GDT_Byte)
    for i in range(3):
        mem.GetRasterBand(i + 1).WriteArray(textured(16, 20)[i].round().astype(np.uint8))
    gdal.GetDriverByName("PNG").CreateCopy(str(tmp_path / "in.png"), mem)
    res = superresolve(tmp_path / "in.png", tmp_path / "out.tif", StandInModel(scale=2), FAST)
    assert read_raster(res.path).shape == (3, 32, 40)


def test_metadata_band_descriptions_colour_and_nodata_are_copied(tmp_path):
    src = byte_raster(tmp_path / "in.tif", nodata=7)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetMetadata({"SENSOR": "NEON AOP", "DATE": "2019-07-01"})
    for i, (name, ci) in enumerate([("red", gdal.GCI_RedBand), ("green", gdal.GCI_GreenBand),
                                    ("blue", gdal.GCI_BlueBand)]):
        ds.GetRasterBand(i + 1).SetDescription(name)
        ds.GetRasterBand(i + 1).SetColorInterpretation(ci)
    ds = None
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), FAST)
    out = gdal.Open(res.path)
    assert out.GetMetadata()["SENSOR"] == "NEON AOP"
    assert [out.GetRasterBand(i).GetDescription() for i in (1, 2, 3)] == ["red", "green", "blue"]
    assert [out.GetRasterBand(i).GetColorInterpretation() for i in (1, 2, 3)] == \
        [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]
    assert out.GetRasterBand(2).GetNoDataValue() == 7
    # Tiled, compressed GeoTIFF
    assert out.GetRasterBand(1).GetBlockSize() == [256, 256] or out.RasterXSize < 256
    assert out.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") in ("DEFLATE", "ZSTD")


def test_cog_output(tmp_path):
    src = byte_raster(tmp_path / "in.tif", h=160, w=150)
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=4), SROptions(tile=64, overlap=8, cog=True))
    out = gdal.Open(res.path)
    assert out.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert out.GetRasterBand(1).GetOverviewCount() >= 1
    assert leftovers(tmp_path, {"in.tif", "out.tif"}) == []


# ---------------------------------------------------------------- clear input errors

def test_not_a_raster_and_missing_file(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    with pytest.raises(io.RasterError, match="notes.tif is not a raster"):
        superresolve(bad, tmp_path / "out.tif", StandInModel(), FAST)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        superresolve(tmp_path / "missing.tif", tmp_path / "out.tif", StandInModel(), FAST)


def test_band_out_of_range_is_named(tmp_path):
    src = byte_raster(tmp_path / "in.tif")
    with pytest.raises(io.RasterError, match=r"band 5 does not exist: .*in.tif has 3 band"):
        superresolve(src, tmp_path / "out.tif", StandInModel(), SROptions(bands=[1, 2, 5]))


def test_band_count_mismatch_names_both_counts_and_offers_bands(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(16, 16, bands=4).round().astype(np.uint8),
                       options=("PHOTOMETRIC=MINISBLACK",))  # 4 plain bands (RGB-NIR), not RGBA
    with pytest.raises(ValueError) as err:   # lcmsr.domain.DomainError: the band plan
        superresolve(src, tmp_path / "out.tif", StandInModel(bands=3), FAST)
    msg = str(err.value)
    assert "expects 3 band(s)" in msg and "4 band(s)" in msg and "--bands" in msg
    assert leftovers(tmp_path, {"in.tif"}) == []


def test_complex_data_is_refused(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(16, 16, bands=3).astype(np.complex64),
                       data_type=gdal.GDT_CFloat32)
    with pytest.raises(io.RasterError, match="band 1 of .*complex"):
        superresolve(src, tmp_path / "out.tif", StandInModel(), FAST)


def test_output_may_not_overwrite_the_input(tmp_path):
    src = byte_raster(tmp_path / "in.tif")
    digest = sha256(src)
    from lcmsr.paths import OutputPathError   # the one output-path rule (lcmsr.paths)

    with pytest.raises(OutputPathError, match="is also the input raster"):
        superresolve(src, src, StandInModel(scale=2), FAST)
    with pytest.raises(FileNotFoundError, match="output folder"):
        superresolve(src, tmp_path / "nowhere" / "out.tif", StandInModel(scale=2), FAST)
    assert sha256(src) == digest


# ---------------------------------------------------------------- nodata sources

def test_reader_validity_from_nodata_mask_alpha_and_nan(tmp_path):
    data = np.full((2, 8, 8), 50, np.uint8)
    data[:, 0, 0] = 255
    src = write_raster(tmp_path / "nd.tif", data, nodata=255)
    values, valid = io.WindowReader(src, [1, 2]).read(0, 0, 8, 8)
    assert values.dtype == np.float32 and not valid[:, 0, 0].any() and valid.sum() == 2 * 63

    rgba = np.full((4, 8, 8), 90, np.uint8)
    rgba[3] = 255
    rgba[3, :, :3] = 0
    src = write_raster(tmp_path / "rgba.tif", rgba, options=("TILED=YES", "ALPHA=YES"))
    ds = gdal.Open(src)
    assert io.select_bands(ds, None, src) == [1, 2, 3]  # alpha is a mask, not a band to super-resolve
    ds = None
    _, valid = io.WindowReader(src, [1, 2, 3]).read(0, 0, 8, 8)
    assert not valid[:, :, :3].any() and valid[:, :, 3:].all()

    ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "mask.tif"), 8, 8, 1, gdal.GDT_UInt16)
    ds.GetRasterBand(1).WriteArray(np.full((8, 8), 1000, np.uint16))
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    m = np.full((8, 8), 255, np.uint8)
    m[4:] = 0
    ds.GetRasterBand(1).GetMaskBand().WriteArray(m)
    ds = None
    _, valid = io.WindowReader(str(tmp_path / "mask.tif"), [1]).read(0, 0, 8, 8)
    assert valid[0, :4].all() and not valid[0, 4:].any()

    f = np.ones((1, 8, 8), np.float32)
    f[0, 2, 3] = np.nan
    src = write_raster(tmp_path / "nan.tif", f, data_type=gdal.GDT_Float32)
    _, valid = io.WindowReader(src, [1]).read(0, 0, 8, 8)
    assert valid.sum() == 63 and not valid[0, 2, 3]


def test_to_data_type_rounds_and_clips():
    v = np.array([[-3.6, 0.4, 0.5, 254.6, 300.0]], np.float32)
    assert io.to_data_type(v, gdal.GDT_Byte).tolist() == [[0, 0, 0, 255, 255]]
    assert io.to_data_type(v * 1000, gdal.GDT_Int16).tolist() == [[-3600, 400, 500, 32767, 32767]]
    assert io.to_data_type(v, gdal.GDT_Float32).dtype == np.float32


# ---------------------------------------------------------------- atomic output

def test_injected_write_error_leaves_no_output_and_keeps_an_existing_one(tmp_path, monkeypatch):
    src = byte_raster(tmp_path / "in.tif", h=100, w=90)
    digest = sha256(src)
    (tmp_path / "out.tif").write_bytes(b"previous result")
    calls = []

    def failing(self, y, data, mask=None):
        calls.append(y)
        if len(calls) == 2:
            raise io.RasterWriteError(28, "No space left on device")
        return original(self, y, data, mask)

    original = io.RasterWriter.write_rows
    monkeypatch.setattr(io.RasterWriter, "write_rows", failing)
    with pytest.raises(OSError, match="No space left"):
        superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), SROptions(tile=32, overlap=8, batch=1))
    assert len(calls) == 2
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"
    assert leftovers(tmp_path, {"in.tif", "out.tif"}) == []
    assert sha256(src) == digest


def test_file_size_limit_mid_write_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A real failing write: RLIMIT_FSIZE makes the kernel refuse the bytes (as a full disk would)."""
    rng = np.random.default_rng(0)
    src = write_raster(tmp_path / "in.tif", rng.random((1, 128, 128)).astype(np.float32) * 255,
                       data_type=gdal.GDT_Float32)
    digest = sha256(src)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(HERE)!r})
        import torch
        torch.set_num_threads(1)
        from test_raster_standin import StandInModel
        from lcmsr.raster.pipeline import superresolve, SROptions
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        try:
            superresolve({src!r}, {str(tmp_path / 'out.tif')!r},
                         StandInModel(scale=4, bands=1, noise_weight=0.5), SROptions(tile=32, overlap=8))
        except OSError as exc:
            print("ERROR", type(exc).__name__, exc)
            sys.exit(3)
        print("NO ERROR")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "RasterWriteError" in proc.stdout and "out.tif" in proc.stdout
    assert leftovers(tmp_path, {"in.tif"}) == []
    assert sha256(src) == digest


def test_not_enough_disk_space_is_refused_before_starting(tmp_path, monkeypatch):
    src = byte_raster(tmp_path / "in.tif")
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    with pytest.raises(io.RasterWriteError, match="not enough free disk space"):
        superresolve(src, tmp_path / "out.tif", StandInModel(scale=4), FAST)
    assert leftovers(tmp_path, {"in.tif"}) == []


def test_atomic_raster_removes_the_temporary_file_on_any_exception(tmp_path):
    spec = io.OutputSpec(width=8, height=8, data_type=gdal.GDT_Byte, fill=[None])
    with pytest.raises(KeyError):
        with io.AtomicRaster(str(tmp_path / "x.tif"), spec, Progress()) as w:
            w.write_rows(0, np.zeros((1, 4, 8), np.uint8))
            assert len(list(tmp_path.iterdir())) == 1 and next(tmp_path.iterdir()).name.startswith(".x.tif.partial-")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
