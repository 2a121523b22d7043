"""One validity rule and one fill rule: training, inference and evaluation see the same holes, filled
the same way, on real Sentinel-2 pixels with nodata in one band and in every band."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_raster_standin import StandInModel, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.metrics.evaluate import evaluate_rasters  # noqa: E402
from lcmsr.metrics.psnr_ssim import ssim_map  # noqa: E402
from lcmsr.normalization import Normalization  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from lcmsr.train.data import ArraySource, PatchSampler, SourceSet  # noqa: E402

S2 = Path(__file__).resolve().parents[1] / "fixtures" / "s2_t33uuu_256.tif"
N = 64


def s2_with_holes(kind: str):
    """A 64x64 crop of the Sentinel-2 fixture (4 bands) as ``kind`` with: a nodata hole in band 2
    only, a nodata hole in every band, and (Float32) NaNs in band 3, which no nodata value declares.
    -> (values as written, nodata value, expected invalid mask [4, 64, 64])."""
    real = gdal.Open(str(S2)).ReadAsArray(96, 96, N, N)
    assert real.min() > 0  # no pixel of the crop is nodata by accident
    invalid = np.zeros(real.shape, bool)
    invalid[1, 10:20, 30:45] = True            # one band
    invalid[:, 40:52, 5:20] = True             # every band
    if kind == "UInt16":
        return np.where(invalid, 0, real).astype(np.uint16), 0, invalid
    data = real.astype(np.float32)
    data[invalid] = -9999.0
    data[2, 25:28, 50:60] = np.nan             # not finite: invalid without any nodata value
    invalid[2, 25:28, 50:60] = True
    return data, -9999.0, invalid


class Recording(StandInModel):
    """The stand-in, keeping every LR batch the pipeline hands to the network."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs = []

    def sr(self, lr, *args, **kwargs):
        self.inputs.append(lr.detach().clone())
        return super().sr(lr, *args, **kwargs)


@pytest.mark.parametrize("kind", ["UInt16", "Float32"])
def test_training_inference_and_evaluation_see_the_same_holes_filled_the_same(tmp_path, kind):
    data, nodata, invalid = s2_with_holes(kind)
    gdal_type = gdal.GDT_UInt16 if kind == "UInt16" else gdal.GDT_Float32
    path = write_raster(tmp_path / "in.tif", data, data_type=gdal_type, nodata=nodata)
    valid_values = np.where(invalid, np.nan, data.astype(np.float64))
    norm = Normalization(list(np.nanmin(valid_values, axis=(1, 2))), list(np.nanmax(valid_values, axis=(1, 2))))

    # The mask: the one reader, a training raster source and a training array (.npy) source agree.
    _, valid = io.WindowReader(path, None).read(0, 0, N, N)
    np.testing.assert_array_equal(valid, ~invalid)
    raster_src = SourceSet.open([path]).sources[0]
    np.testing.assert_array_equal(raster_src.read(0, 0, N, N, [1, 2, 3, 4])[1], ~invalid)
    array_src = ArraySource(data, name="in.npy", nodata=nodata)
    np.testing.assert_array_equal(array_src.read(0, 0, N, N, [1, 2, 3, 4])[1], ~invalid)

    # The filled values: a training patch (from the raster and from the array) is exactly what
    # inference hands the network for the same window.
    def patch(source):
        sampler = PatchSampler(SourceSet.open([source]), 4, N, norm, seed=0, augment=False, max_nodata=0.5,
                               multiple=16)
        return sampler.sample(1)[0][0]
    trained = patch(path)
    torch.testing.assert_close(patch(array_src), trained, rtol=0, atol=0)
    model = Recording(scale=4, bands=4, lo=0.0, hi=1.0, data_type=kind)
    model.info.normalization = norm
    superresolve(path, tmp_path / "sr.tif", model, SROptions(bands=[1, 2, 3, 4], tile=N, overlap=8))
    assert len(model.inputs) == 1 and model.inputs[0].shape[0] == 1
    inferred = model.inputs[0][0, :, :N, :N].float()
    torch.testing.assert_close(inferred, trained, rtol=0, atol=1e-6)
    # ... and the holes hold values of the valid data around them, never the nodata value or NaN.
    raw = norm.inverse(trained.double()).numpy()
    assert np.isfinite(raw).all()
    for c in range(4):
        lo, hi = np.nanmin(valid_values[c]), np.nanmax(valid_values[c])
        assert lo - 1e-3 <= raw[c][invalid[c]].min() and raw[c][invalid[c]].max() <= hi + 1e-3

    # Evaluation excludes the same holes: SR = HR + noise on valid pixels and garbage in the holes
    # (SR declares no nodata): PSNR is the noise's, SSIM the mean over windows without a hole.
    hr_range = float(np.nanmax(valid_values) - np.nanmin(valid_values))
    noise = np.random.default_rng(0).integers(-3, 4, data.shape)
    hr = np.nan_to_num(data, nan=0).astype(np.float64)
    sr = np.where(invalid, 60000, hr + noise)
    write_raster(tmp_path / "noisy.tif", sr.astype(data.dtype), data_type=gdal_type)
    r = evaluate_rasters(tmp_path / "noisy.tif", path, 4, lpips=False, tile=24)
    assert r["data_range"] == pytest.approx(hr_range)
    inner = (slice(None), slice(4, N - 4), slice(4, N - 4))
    mse = float((noise[inner][~invalid[inner]] ** 2).mean())
    assert r["psnr"] == pytest.approx(10 * math.log10(hr_range ** 2 / mse), abs=1e-6)
    windows = ssim_map(torch.from_numpy(sr[inner]), torch.from_numpy(hr[inner]), hr_range)[0]
    holes = torch.from_numpy(invalid[inner].astype(np.float64))[:, None]
    clean = torch.nn.functional.max_pool2d(holes, 11, stride=1)[:, 0] == 0
    assert r["ssim"] == pytest.approx(float(windows[clean].mean()), abs=1e-9)
    same = np.where(invalid, 60000, np.nan_to_num(data, nan=0)).astype(data.dtype)
    write_raster(tmp_path / "same.tif", same, data_type=gdal_type)
    r = evaluate_rasters(tmp_path / "same.tif", path, 4, lpips=True)
    assert r["psnr"] == math.inf
    assert r["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert r["lpips"] == pytest.approx(0.0, abs=1e-7)


def test_a_raster_with_nothing_valid_is_refused_by_evaluation(tmp_path):
    data, nodata, _ = s2_with_holes("UInt16")
    empty = write_raster(tmp_path / "empty.tif", np.zeros_like(data), data_type=gdal.GDT_UInt16, nodata=0)
    ok = write_raster(tmp_path / "ok.tif", data, data_type=gdal.GDT_UInt16)
    with pytest.raises(ValueError, match="no valid pixel"):
        evaluate_rasters(ok, empty, 4, lpips=False)
    with pytest.raises(ValueError, match="no pixel inside the 4-pixel border is valid"):
        evaluate_rasters(empty, ok, 4, lpips=False, data_range=1000.0)
