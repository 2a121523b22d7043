"""`lcmsr degrade`: the training pairs' downsampling, streamed, georeferenced, nodata-aware."""
import numpy as np
import pytest
import torch

from test_raster_standin import read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.ops import downsample_bicubic  # noqa: E402
from lcmsr.progress import Cancelled, Progress  # noqa: E402
from lcmsr.raster import degrade as degrade_module  # noqa: E402
from lcmsr.raster.degrade import degrade  # noqa: E402


def test_streamed_blocks_equal_one_whole_image_call(tmp_path, monkeypatch):
    monkeypatch.setattr(degrade_module, "BLOCK_LR", 8)  # many blocks on a small raster
    data = textured(90, 70, bands=2, lo=0, hi=1).astype(np.float32)
    src = write_raster(tmp_path / "hr.tif", data, data_type=gdal.GDT_Float32)
    res = degrade(src, tmp_path / "lr.tif", 4)
    assert (res.width, res.height) == (17, 22)
    assert any("not a multiple of 4" in w for w in res.warnings)
    whole = downsample_bicubic(torch.from_numpy(data)[None], 4)[0].numpy()
    np.testing.assert_allclose(read_raster(res.path), whole, atol=2e-6)


@pytest.mark.parametrize("gt,epsg", [((500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5), 32611),
                                     ((-110.5, 1e-5, 2e-6, 44.9, 3e-6, -1e-5), 4326)])
def test_geotransform_scaled_up_and_type_kept(tmp_path, gt, epsg):
    src = write_raster(tmp_path / "hr.tif", textured(32, 48, lo=0, hi=4000).round().astype(np.uint16),
                       data_type=gdal.GDT_UInt16, gt=gt, epsg=epsg)
    res = degrade(src, tmp_path / "lr.tif", 2)
    out = gdal.Open(res.path)
    assert out.GetGeoTransform() == pytest.approx((gt[0], gt[1] * 2, gt[2] * 2, gt[3], gt[4] * 2, gt[5] * 2))
    assert out.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert out.GetProjection() == gdal.Open(src).GetProjection()
    assert (out.RasterXSize, out.RasterYSize) == (24, 16)


def test_nodata_kept_where_the_source_block_is_mostly_nodata(tmp_path):
    data = (100 + 50 * textured(16, 16, bands=1, lo=0, hi=1)).round().astype(np.uint8)
    data[0, :, :6] = 0                  # LR columns 0 (all nodata) and 1 (half: 2 of 4 HR columns)
    data[0, 8, 8] = 0                   # one HR pixel of an LR block: still valid
    src = write_raster(tmp_path / "hr.tif", data, nodata=0)
    out = read_raster(degrade(src, tmp_path / "lr.tif", 4).path)[0]
    assert gdal.Open(str(tmp_path / "lr.tif")).GetRasterBand(1).GetNoDataValue() == 0
    assert (out[:, 0] == 0).all()
    assert (out[:, 1] > 80).all() and out[2, 2] > 80  # mostly valid: a real value, not pulled to 0


def test_cancel_and_cli(tmp_path):
    from lcmsr.cli import main

    src = write_raster(tmp_path / "hr.tif", textured(64, 64).round().astype(np.uint8))

    class Stop(Progress):
        def cancelled(self):
            return True

    with pytest.raises(Cancelled):
        degrade(src, tmp_path / "lr.tif", 2, Stop())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.tif"]
    assert main(["degrade", src, str(tmp_path / "lr.tif"), "--scale", "4", "--quiet"]) == 0
    assert read_raster(tmp_path / "lr.tif").shape == (3, 16, 16)
