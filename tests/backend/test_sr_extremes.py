"""Issue 16: values at the ends of their types, RPCs, and inputs that would hang: every SR either
writes finite pixels inside the input's value range or refuses in one line and leaves nothing."""
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from test_raster_standin import StandInModel, read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.paths import NotARegularFile, check_regular  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

OPTS = dict(tile=32, overlap=8)


def test_int64_near_2_to_62_keeps_its_values(tmp_path):
    # float32 has 2**39 between neighbours at 2**62: read that way the whole raster was one constant.
    base = textured(40, 36, lo=0, hi=200000).round().astype(np.int64) + 100  # min 2**62 + 100: no float64
    offset = 2**62
    for t, dtype in ((gdal.GDT_Int64, np.int64), (gdal.GDT_UInt64, np.uint64)):
        src = write_raster(tmp_path / f"big{t}.tif", (base + offset).astype(dtype), data_type=t)
        model = StandInModel(scale=2, lo=offset, hi=offset + 200000, data_type="Int64", noise_weight=0.0)
        res = superresolve(src, tmp_path / f"big{t}_sr.tif", model, SROptions(**OPTS, ignore_domain=True))
        assert gdal.Open(res.path).GetRasterBand(1).DataType == t
        out = read_raster(res.path)
        ref_src = write_raster(tmp_path / "small.tif", base.astype(np.int32), data_type=gdal.GDT_Int32)
        ref = read_raster(superresolve(ref_src, tmp_path / "small_sr.tif", StandInModel(
            scale=2, lo=0, hi=200000, data_type="Int32", noise_weight=0.0), SROptions(**OPTS)).path)
        # float64 steps 1024 apart at 2**62: the SR is the offset-free one up to that rounding (sharpened).
        assert np.abs((out - dtype(offset)).astype(np.int64) - ref).max() <= 4096
        assert out.min() >= (base + offset).astype(dtype).min() and out.max() <= (base + offset).astype(dtype).max()
        os.remove(ref_src)


def test_64_bit_type_ends_do_not_wrap():
    for t in (gdal.GDT_Int64, gdal.GDT_UInt64):
        info = np.iinfo(io.numpy_dtype(t))
        out = io.to_data_type(np.array([1e30, -1e30, float(2**63), 5.0]), t)
        assert out[0] > 2**62 and out[1] == info.min and out[2] > 2**62 and out[3] == 5


@pytest.mark.parametrize("t,value", [(gdal.GDT_Float32, 3e38), (gdal.GDT_Float64, 1e300),
                                     (gdal.GDT_Float64, -1.7e308)])
def test_one_extreme_valid_pixel_neither_poisons_nor_overflows(tmp_path, t, value):
    data = textured(40, 40, lo=0.0, hi=1.0)
    spiked = data.copy()
    spiked[:, 5, 5] = value
    model = StandInModel(scale=2, lo=0.0, hi=1.0, data_type=gdal.GetDataTypeName(t), noise_weight=0.0)
    out = read_raster(superresolve(write_raster(tmp_path / "s.tif", spiked, data_type=t), tmp_path / "s_sr.tif",
                                   model, SROptions(**OPTS)).path).astype(np.float64)
    clean = read_raster(superresolve(write_raster(tmp_path / "c.tif", data, data_type=t), tmp_path / "c_sr.tif",
                                     model, SROptions(**OPTS)).path).astype(np.float64)
    assert np.isfinite(out).all()
    lo, hi = spiked.reshape(3, -1).min(1)[:, None, None], spiked.reshape(3, -1).max(1)[:, None, None]
    assert (out >= lo).all() and (out <= hi).all()
    # Far from the spike (other tiles included) the model's values are the clean raster's: clamped to the
    # clean raster's narrower range they are its output.
    lo_c, hi_c = data.reshape(3, -1).min(1)[:, None, None], data.reshape(3, -1).max(1)[:, None, None]
    far, ref = out[:, 40:, 40:], clean[:, 40:, 40:]
    assert ((ref > lo_c) & (ref < hi_c)).mean() > 0.9
    np.testing.assert_allclose(np.clip(far, lo_c, hi_c), ref, rtol=1e-5, atol=1e-6)


class _NaNModel(StandInModel):
    @torch.no_grad()
    def sr(self, lr, **kw):
        y = super().sr(lr, **kw)
        y[..., 3, 3] = float("nan")
        return y


def test_a_nan_from_the_model_is_refused_before_anything_is_written(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(40, 40).round().astype(np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(io.OutputNotFinite, match=r"^in\.tif: the model gave \d+ NaN or infinite value"):
        superresolve(src, out_dir / "sr.tif", _NaNModel(scale=2), SROptions(**OPTS, output_type="float32"))
    assert os.listdir(out_dir) == []


def test_an_output_type_that_cannot_tell_the_values_apart_is_refused(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(20, 20, lo=0, hi=1000).round().astype(np.int64) + 2**62,
                       data_type=gdal.GDT_Int64)
    model = StandInModel(scale=2, lo=2**62, hi=2**62 + 1000, data_type="Int64")
    with pytest.raises(io.RasterError, match="which a Float32 output cannot tell apart"):
        superresolve(src, tmp_path / "o.tif", model, SROptions(**OPTS, output_type="float32", ignore_domain=True))
    assert not (tmp_path / "o.tif").exists()


def _rpc() -> dict:
    zeros = ["0"] * 16
    return {"LINE_OFF": "15.5", "SAMP_OFF": "20.25", "LAT_OFF": "41.9", "LONG_OFF": "12.5", "HEIGHT_OFF": "0",
            "LINE_SCALE": "16", "SAMP_SCALE": "20", "LAT_SCALE": "0.01", "LONG_SCALE": "0.01", "HEIGHT_SCALE": "100",
            "LINE_NUM_COEFF": " ".join(["0", "0", "-1.05", "0.01"] + zeros), "LINE_DEN_COEFF": " ".join(["1"] + ["0"] * 19),
            "SAMP_NUM_COEFF": " ".join(["0", "1.02", "0.03", "0"] + zeros), "SAMP_DEN_COEFF": " ".join(["1"] + ["0"] * 19)}


@pytest.mark.parametrize("scale", [2, 4])
def test_rpc_georeferencing_is_kept_on_the_output_grid(tmp_path, scale):
    src = write_raster(tmp_path / "rpc.tif", textured(32, 40).round().astype(np.uint8), gt=None, epsg=None)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetMetadata(_rpc(), "RPC")
    ds = None
    res = superresolve(src, tmp_path / "sr.tif", StandInModel(scale=scale), SROptions(**OPTS))
    a, b = gdal.Open(src), gdal.Open(res.path)
    assert b.GetMetadata("RPC")
    ta, tb = gdal.Transformer(a, None, ["METHOD=RPC"]), gdal.Transformer(b, None, ["METHOD=RPC"])
    for lon, lat in [(12.5, 41.9), (12.503, 41.905), (12.497, 41.898)]:
        pa, pb = ta.TransformPoint(1, lon, lat, 0)[1], tb.TransformPoint(1, lon, lat, 0)[1]
        # The same ground point, in GDAL's pixel coordinates: ``scale`` times further, within 1/20 pixel
        # (a half-pixel slip in the offsets would be (scale - 1) / 2 pixels off).
        assert abs(pb[0] - scale * pa[0]) < 0.05 and abs(pb[1] - scale * pa[1]) < 0.05


def _returns_within(fn, seconds=20):
    """Run ``fn`` in a thread: (finished, exception).  A hang shows as finished=False, not as a stuck test."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    return not th.is_alive(), box.get("exc")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_fifo_as_input_or_model_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile, match=r"pipe\.tif is a named pipe \(FIFO\), not a regular file"):
        check_regular(fifo, "input raster")
    check_regular(tmp_path, "input raster", folders=True)   # GDAL opens some datasets as folders
    src = write_raster(tmp_path / "in.tif", textured(20, 20).round().astype(np.uint8))
    for args in ((fifo, tmp_path / "o.tif", StandInModel(scale=2)), (src, tmp_path / "o.tif", fifo)):
        finished, exc = _returns_within(lambda: superresolve(*args, SROptions(**OPTS)))
        assert finished, f"superresolve{args[:2]} blocked on the FIFO"
        assert isinstance(exc, NotARegularFile), exc
    assert not (tmp_path / "o.tif").exists()


def test_eval_of_a_raster_too_large_to_read_is_refused_at_once(tmp_path):
    from lcmsr.metrics.evaluate import evaluate_rasters

    small = write_raster(tmp_path / "small.tif", textured(8, 8).round().astype(np.uint8))
    vrt = tmp_path / "huge.vrt"
    gdal.Translate(str(vrt), small, format="VRT", width=1_000_000, height=1_000_000)
    finished, exc = _returns_within(lambda: evaluate_rasters(vrt, vrt, 2, lpips=False), 30)
    assert finished, "evaluation started reading 10^12 pixels"
    assert isinstance(exc, ValueError) and "1000000x1000000 pixels" in str(exc)


def test_float32_output_bounds_round_inwards():
    # A Float64 input's minimum that float32 cannot hold: clamping to its nearest float32 would step
    # outside the input's range.
    spec = io.OutputSpec(width=1, height=1, data_type=gdal.GDT_Float32, fill=[None],
                         value_ranges=[(-0.1197345391683628, 1e300)])
    (lo, hi), = io.output_bounds(spec)
    assert -0.1197345391683628 <= lo == float(np.float32(lo)) and hi == float(np.finfo(np.float32).max)
    out, _ = io.finish_block(np.array([[[-1.0, 5e38]]]), np.ones((1, 1, 2), bool), spec)
    assert out.dtype == np.float32 and -0.1197345391683628 <= out.min() and np.isfinite(out).all()


def test_a_normalisation_span_beyond_float32_still_maps_the_values(tmp_path):
    # A stretch over +-3e38 spans 6e38, inf in float32: normalised there every pixel became one value.
    # The stand-in is linear, so the SR of 2e38 * x is 2e38 * the SR of x (both clamped alike).
    unit = textured(40, 40, lo=-1.0, hi=1.0)
    outs = []
    for k, (lo, hi) in ((1.0, (-1.5, 1.5)), (2e38, (-3e38, 3e38))):
        src = write_raster(tmp_path / f"k{k:g}.tif", (unit * k).astype(np.float32), data_type=gdal.GDT_Float32)
        model = StandInModel(scale=2, lo=lo, hi=hi, data_type="Float32", noise_weight=0.0)
        outs.append(read_raster(superresolve(src, tmp_path / f"k{k:g}_sr.tif", model, SROptions(**OPTS)).path)
                    .astype(np.float64) / k)
    assert np.isfinite(outs[1]).all() and outs[1].std() > 0.1
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)
