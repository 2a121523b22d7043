"""The streaming pipeline: seamless tiles, deterministic noise, data types, nodata, bands, cancel, OOM back-off."""
from pathlib import Path

import numpy as np
import pytest
import torch

from test_raster_standin import StandInModel, read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.progress import Cancelled, Progress  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from lcmsr.sr.tile_model import position_noise  # noqa: E402
from lcmsr.raster.tiling import plan_tiles  # noqa: E402


def sr_array(src, dst, model, **kw) -> np.ndarray:
    superresolve(src, dst, model, SROptions(**kw))
    return read_raster(dst).astype(np.float64)


def test_position_noise_is_one_field_whatever_the_window():
    whole = position_noise(7, 0, 0, 70, 90, 4)
    part = position_noise(7, 13, 40, 30, 50, 4)
    assert torch.equal(part, whole[:, 13:43, 40:90])
    assert not torch.equal(position_noise(8, 0, 0, 70, 90, 4), whole)
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05


def test_small_tiles_agree_with_one_big_tile_and_show_no_grid(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(150, 170).round().astype(np.uint8))
    model = StandInModel(scale=4, noise_weight=0.2)  # noise worth ~25 grey levels: per-tile noise would show
    tiled = sr_array(src, tmp_path / "tiled.tif", model, tile=48, overlap=8, batch=3, output_type="float32")
    single = sr_array(src, tmp_path / "one.tif", model, tile=512, overlap=8, output_type="float32")
    diff = np.abs(tiled - single)
    assert diff.max() < 0.02 * 255 and diff.mean() < 0.05
    # Seams: the horizontal/vertical gradient on tile-boundary columns/rows must not exceed the single tile's.
    plan = plan_tiles(170, 150, 48, 8, model.lr_multiple)
    cols = sorted({c for t in plan.tiles for c in (t.x * 4, (t.x + t.w) * 4 - 1, (t.x + 8) * 4) if 0 < c < 679})
    rows = sorted({r for t in plan.tiles for r in (t.y * 4, (t.y + t.h) * 4 - 1, (t.y + 8) * 4) if 0 < r < 599})
    gx_t, gx_s = np.abs(np.diff(tiled, axis=2)), np.abs(np.diff(single, axis=2))
    gy_t, gy_s = np.abs(np.diff(tiled, axis=1)), np.abs(np.diff(single, axis=1))
    assert gx_t[:, :, cols].mean() < 1.02 * gx_s[:, :, cols].mean()
    assert gy_t[:, rows].mean() < 1.02 * gy_s[:, rows].mean()
    # And the difference is not concentrated in a visible grid either: even on the seam lines it stays tiny.
    assert diff[:, :, cols].mean() < 0.3 and diff[:, rows].mean() < 0.3


def test_same_seed_same_result_other_seed_differs(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(40, 40).round().astype(np.uint8))
    model = StandInModel(scale=2, noise_weight=0.2)
    a = sr_array(src, tmp_path / "a.tif", model, tile=32, overlap=8, seed=3, output_type="float32")
    b = sr_array(src, tmp_path / "b.tif", model, tile=64, overlap=8, seed=3, output_type="float32")
    c = sr_array(src, tmp_path / "c.tif", model, tile=32, overlap=8, seed=4, output_type="float32")
    assert np.abs(a - b).max() < 1.0
    assert np.abs(a - c).mean() > 5


@pytest.mark.parametrize("gdal_type,np_type,lo,hi", [
    (gdal.GDT_Byte, np.uint8, 0, 255),
    (gdal.GDT_UInt16, np.uint16, 0, 65535),
    (gdal.GDT_Int16, np.int16, -32768, 32767),
    (gdal.GDT_Float32, np.float32, -1.0, 1.0),
])
def test_data_type_round_trip_keeps_type_and_range(tmp_path, gdal_type, np_type, lo, hi):
    data = textured(40, 36, lo=lo, hi=hi)
    if np.dtype(np_type).kind != "f":
        data = data.round()
    src = write_raster(tmp_path / "in.tif", data.astype(np_type), data_type=gdal_type)
    model = StandInModel(scale=2, lo=lo, hi=hi, data_type=gdal.GetDataTypeName(gdal_type))
    res = superresolve(src, tmp_path / "out.tif", model, SROptions(tile=32, overlap=8))
    assert not res.warnings
    out_ds = gdal.Open(res.path)
    assert out_ds.GetRasterBand(1).DataType == gdal_type
    out = read_raster(res.path)
    as_float = sr_array(src, tmp_path / "f.tif", model, tile=32, overlap=8, output_type="float32")
    assert gdal.Open(str(tmp_path / "f.tif")).GetRasterBand(1).DataType == gdal.GDT_Float32
    # The sharpening overshoots the input's range, which is its type's range here: every output, the
    # Float32 one too, is clamped to the input's values, never wrapped around.
    dlo, dhi = float(data.astype(np_type).min()), float(data.astype(np_type).max())
    assert dlo <= as_float.min() and as_float.max() <= dhi
    assert (as_float == dhi).any() or (as_float == dlo).any()
    if np.dtype(np_type).kind != "f":
        np.testing.assert_array_equal(out, np.clip(np.rint(as_float), lo, hi).astype(np_type))
    else:
        np.testing.assert_allclose(out, as_float, rtol=1e-6)
    # Still the same picture, in the same value range.
    lr_mean = data.mean()
    assert abs(out.astype(np.float64).mean() - lr_mean) < 0.05 * (hi - lo)


def test_nodata_round_trip_skips_empty_tiles_and_never_leaks(tmp_path):
    data = (100 + 100 * textured(64, 96, lo=0, hi=1)).round().astype(np.uint8)  # valid values 100..200
    hole = np.zeros(data.shape, bool)
    hole[:, :, :40] = True          # a nodata stripe wider than a tile: skipped tiles
    hole[:, 20:23, 60:64] = True    # a hole inside valid data
    outs = []
    for nodata in (0, 250):  # the same valid pixels around holes of two different nodata values
        src = write_raster(tmp_path / f"in{nodata}.tif", np.where(hole, nodata, data).astype(np.uint8), nodata=nodata)
        res = superresolve(src, tmp_path / f"out{nodata}.tif", StandInModel(scale=2),
                           SROptions(tile=24, overlap=4, batch=4))
        assert res.skipped_tiles > 0 and res.tiles > 0
        assert gdal.Open(res.path).GetRasterBand(1).GetNoDataValue() == nodata
        out = read_raster(res.path)
        invalid_hr = np.repeat(np.repeat(hole, 2, axis=1), 2, axis=2)
        assert (out[invalid_hr] == nodata).all()
        outs.append(out)
    # The nodata value never reaches the network: valid output pixels do not depend on it.
    np.testing.assert_array_equal(outs[0][~invalid_hr], outs[1][~invalid_hr])


def test_nan_holes_in_float_input_stay_nan(tmp_path):
    data = textured(32, 32, lo=0, hi=1).astype(np.float32)
    data[:, 5:9, 10:12] = np.nan
    src = write_raster(tmp_path / "in.tif", data, data_type=gdal.GDT_Float32)
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=2, lo=0, hi=1, data_type="Float32"),
                       SROptions(tile=32, overlap=8))
    out = read_raster(res.path)
    nan_hr = np.repeat(np.repeat(np.isnan(data), 2, axis=1), 2, axis=2)
    assert (np.isnan(out) == nan_hr).all()


def test_alpha_band_becomes_the_output_mask(tmp_path):
    rgba = np.concatenate([textured(32, 32).round(), np.full((1, 32, 32), 255.0)]).astype(np.uint8)
    rgba[3, :, :10] = 0
    src = write_raster(tmp_path / "in.tif", rgba, options=("ALPHA=YES",))
    res = superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), SROptions(tile=32, overlap=8))
    out = gdal.Open(res.path)
    assert out.RasterCount == 3
    assert out.GetRasterBand(1).GetMaskFlags() == gdal.GMF_PER_DATASET
    mask = out.GetRasterBand(1).GetMaskBand().ReadAsArray()
    assert (mask[:, :20] == 0).all() and (mask[:, 20:] == 255).all()


def test_explicit_band_choice_is_used_in_order(tmp_path):
    data = np.stack([textured(32, 32, bands=1, seed=s)[0] for s in range(4)]).round().astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", data, options=("PHOTOMETRIC=MINISBLACK",))
    model = StandInModel(scale=2)
    rev = sr_array(src, tmp_path / "rev.tif", model, bands=[3, 2, 1], tile=32, overlap=8)
    fwd = sr_array(src, tmp_path / "fwd.tif", model, bands=[1, 2, 3], tile=32, overlap=8)
    np.testing.assert_array_equal(rev, fwd[::-1])
    nir = sr_array(src, tmp_path / "nir.tif", model, bands=[4, 4, 4], tile=32, overlap=8)
    assert not np.array_equal(nir[0], fwd[0])


class CancelAfter(Progress):
    def __init__(self, n):
        self.n, self.reports = n, 0

    def report(self, fraction, message=""):
        self.reports += 1

    def cancelled(self):
        return self.reports >= self.n


def test_cancel_midway_leaves_no_output(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(128, 128).round().astype(np.uint8))
    progress = CancelAfter(3)
    with pytest.raises(Cancelled):
        superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), SROptions(tile=32, overlap=8, batch=1),
                     progress)
    assert progress.reports == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


class OOMStandIn(StandInModel):
    """Pretends the GPU holds at most ``budget`` LR pixels per call."""

    def __init__(self, budget, **kw):
        super().__init__(**kw)
        self.budget = budget

    def sr(self, lr, *args, **kw):
        if lr.shape[0] * lr.shape[2] * lr.shape[3] > self.budget:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().sr(lr, *args, **kw)


def test_out_of_memory_halves_batch_then_tile_and_says_so(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(100, 100).round().astype(np.uint8))
    reference = sr_array(src, tmp_path / "ref.tif", StandInModel(scale=2), tile=64, overlap=8, batch=4,
                         output_type="float32")
    model = OOMStandIn(budget=2 * 32 * 32, scale=2)  # neither 4 tiles of 64 nor 1 tile of 64 fit
    res = superresolve(src, tmp_path / "out.tif", model, SROptions(tile=64, overlap=8, batch=4,
                                                                    output_type="float32"))
    assert any("batch reduced to" in w for w in res.warnings)
    assert any("restarting with tiles of 32" in w for w in res.warnings)
    assert max(b[0] * b[2] * b[3] for b in model.batches[-3:]) <= model.budget
    assert np.abs(read_raster(res.path) - reference).max() < 0.02 * 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif", "ref.tif"]


def test_bf16_runs_on_a_cpu_with_native_bf16_and_falls_back_to_fp32_elsewhere(tmp_path, monkeypatch):
    """As training chooses: bf16 where the CPU computes it natively; emulated it would be slower than fp32."""
    from lcmsr import runtime as device

    src = write_raster(tmp_path / "in.tif", textured(16, 16).round().astype(np.uint8))
    options = SROptions(tile=32, overlap=8, device="cpu", precision="bf16")
    monkeypatch.setattr(device, "cpu_native_bf16", lambda: (False, "the CPU has no native bf16"))
    res = superresolve(src, tmp_path / "emulated.tif", StandInModel(scale=2), options)
    assert res.precision == "fp32" and res.device == "cpu"
    assert any("bf16 requested but the CPU has no native bf16" in w for w in res.warnings), res.warnings
    monkeypatch.setattr(device, "cpu_native_bf16", lambda: (True, "the CPU has native bf16 (amx_bf16)"))
    res = superresolve(src, tmp_path / "native.tif", StandInModel(scale=2), options)
    assert res.precision == "bf16" and not any("bf16" in w for w in res.warnings)


SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"


def test_real_neon_sample_degrade_and_sr_are_registered(tmp_path):
    from lcmsr.raster.degrade import degrade

    hr_path, lr_path = SAMPLE / "neon_hr.tif", SAMPLE / "neon_lr.tif"
    assert hr_path.exists() and lr_path.exists(), "the committed NEON sample is missing from resources/sample"
    # Our streamed degrade reproduces the sample's LR (made by ops.downsample_bicubic, rounded).
    degrade(hr_path, tmp_path / "lr.tif", 4)
    assert np.abs(read_raster(tmp_path / "lr.tif").astype(int) - read_raster(lr_path).astype(int)).max() <= 1
    # SR of the LR lands exactly on the HR grid.
    model = StandInModel(scale=4, noise_weight=0.0)
    # fp32 (the default "auto" may run bf16: test_precision_auto.py) and LR-consistency off: the whole-image
    # reference below is the bare model in fp32.
    res = superresolve(lr_path, tmp_path / "sr.tif", model, SROptions(tile=48, overlap=8, batch=4, precision="fp32",
                                                                      lr_consistency=0))
    out, hr = gdal.Open(res.path), gdal.Open(str(hr_path))
    assert (out.RasterXSize, out.RasterYSize) == (hr.RasterXSize, hr.RasterYSize)
    assert out.GetGeoTransform() == pytest.approx(hr.GetGeoTransform(), rel=1e-12)
    assert out.GetProjection() == hr.GetProjection()
    # Tiled result == the model on the whole image at once (up to rounding), on real imagery.
    lr = torch.from_numpy(read_raster(lr_path).astype(np.float32))[None]
    norm = model.info.normalization
    whole = norm.inverse(model.sr(norm.forward(lr), sampler="condnet"))[0].numpy()
    # Clamped to the input's value range per band, as every SR output is.
    lo_in = lr[0].amin(dim=(1, 2)).numpy()[:, None, None]
    hi_in = lr[0].amax(dim=(1, 2)).numpy()[:, None, None]
    whole = np.clip(np.rint(whole), lo_in, hi_in)
    sr = read_raster(res.path).astype(np.float64)
    assert np.abs(sr - whole).max() <= 2 and np.abs(sr - whole).mean() < 0.05
    # Registered: shifting the result by one HR pixel makes it worse against the HR reference.
    ref = read_raster(hr_path).astype(np.float64)
    mse = np.mean((sr[:, 8:-8, 8:-8] - ref[:, 8:-8, 8:-8]) ** 2)
    shifted = np.mean((sr[:, 8:-8, 9:-7] - ref[:, 8:-8, 8:-8]) ** 2)
    assert mse < shifted


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match="precision"):
        SROptions(precision="fp16").validate()
    with pytest.raises(ValueError, match="overlap"):
        SROptions(tile=64, overlap=40).validate()
    with pytest.raises(ValueError, match="output type"):
        SROptions(output_type="uint8").validate()


# ---------------------------------------------------------------- the real (tiny) model

def _tiny_model(scale=2):
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config(scale=scale, bands=3), with_encoder=False).eval()


def test_real_tiny_model_runs_tiled_and_deterministic(tmp_path):
    torch.set_num_threads(1)
    model = _tiny_model(scale=2)
    src = write_raster(tmp_path / "in.tif", textured(40, 56).round().astype(np.uint8), nodata=255)
    opts = SROptions(tile=32, overlap=8, batch=2, seed=1)
    res = superresolve(src, tmp_path / "a.tif", model, opts)
    assert (res.width, res.height) == (112, 80) and res.tiles >= 2
    a = read_raster(res.path)
    assert a.dtype == np.uint8
    superresolve(src, tmp_path / "b.tif", model, opts)
    np.testing.assert_array_equal(a, read_raster(tmp_path / "b.tif"))


def test_real_model_file_and_cli(tmp_path):
    from lcmsr.cli import main
    from lcmsr.weights import save_model

    torch.set_num_threads(1)
    path = save_model(tmp_path / "tiny.safetensors", _tiny_model(scale=2))
    src = write_raster(tmp_path / "in.tif", textured(24, 20).round().astype(np.uint8))
    rc = main(["sr", src, str(tmp_path / "out.tif"), "--model", str(path), "--tile", "32", "--overlap", "8",
               "--bands", "3,2,1", "--device", "cpu", "--quiet"])
    assert rc == 0
    assert read_raster(tmp_path / "out.tif").shape == (3, 48, 40)
    rc = main(["sr", src, str(tmp_path / "bad.tif"), "--model", str(path), "--bands", "1,2"])
    assert rc == 2 and not (tmp_path / "bad.tif").exists()
