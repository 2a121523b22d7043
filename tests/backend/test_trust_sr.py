"""Issue 15 in the pipeline: the uncertainty raster (spread of K samples) and LR-consistency (back-projection),
on real pixels (resources/sample/neon_lr.tif)."""
from pathlib import Path

import numpy as np
import pytest
import torch

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.cli import main as cli_main  # noqa: E402
from lcmsr.metrics.trust import lr_consistency  # noqa: E402
from lcmsr.progress import Cancelled, Progress  # noqa: E402
from lcmsr.raster import io  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from test_raster_standin import StandInModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "neon_lr.tif"
SHIPPED = ROOT / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors"


@pytest.fixture(scope="module")
def noisy_model(tmp_path_factory):
    """A tiny x4 RGB model whose output depends on the diffusion noise: the seeded random init leaves the
    decoder's last layer (and other zero-initialised weights) at zero, so its samples would not spread."""
    torch.set_num_threads(1)
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(0)
    model = build_model(tiny_config(scale=4, bands=3))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return str(save_model(tmp_path_factory.mktemp("models") / "noisy.safetensors", model))


def crop(dst, size=48, x=20, y=30, nodata_block=False) -> str:
    """A real-pixel crop of the NEON sample (georeferencing kept); optionally a nodata corner."""
    gdal.Translate(str(dst), str(SAMPLE), srcWin=[x, y, size, size])
    if nodata_block:
        ds = gdal.Open(str(dst), gdal.GA_Update)
        for b in range(1, ds.RasterCount + 1):
            band = ds.GetRasterBand(b)
            a = band.ReadAsArray()
            a[:10, :12] = 0
            if b == 1:
                a[-6:, -6:] = 0   # nodata in the first band only
            band.WriteArray(a)
            band.SetNoDataValue(0)
        ds = None
    return str(dst)


def read(path) -> np.ndarray:
    a = gdal.Open(str(path)).ReadAsArray().astype(np.float64)
    return a if a.ndim == 3 else a[None]


def run(src, dst, model, **kw):
    kw.setdefault("tile", 32)
    kw.setdefault("overlap", 8)
    kw.setdefault("device", "cpu")
    return superresolve(src, dst, model, SROptions(ignore_domain=True, **kw))


def test_uncertainty_raster_is_float32_on_the_outputs_grid_with_nodata(tmp_path, noisy_model):
    src = crop(tmp_path / "in.tif", nodata_block=True)
    res = run(src, tmp_path / "sr.tif", noisy_model, uncertainty=str(tmp_path / "u.tif"), samples=3)
    assert res.uncertainty == str(tmp_path / "u.tif")
    out, unc = gdal.Open(res.path), gdal.Open(res.uncertainty)
    assert (unc.RasterXSize, unc.RasterYSize, unc.RasterCount) == (out.RasterXSize, out.RasterYSize, 1)
    assert unc.GetGeoTransform() == out.GetGeoTransform() and unc.GetProjection() == out.GetProjection()
    assert unc.GetProjection()   # the sample is georeferenced: the check above is not vacuous
    band = unc.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and np.isnan(band.GetNoDataValue())
    assert "samples" in band.GetDescription() and unc.GetMetadataItem("LCMSR_UNCERTAINTY")
    u = band.ReadAsArray()
    assert np.isnan(u[:40, :48]).all()                  # the input's nodata corner (10x12 LR pixels x4)
    assert np.isnan(u[-24:, -24:]).all()                # nodata in one band: no spread over all bands there
    rest = u.copy()
    rest[:40, :48] = rest[-24:, -24:] = 0
    assert np.isfinite(rest).all() and (rest >= 0).all()
    assert u[60:150, 60:150].mean() > 0.1                # the samples differ where the input is valid


def test_first_sample_is_the_plain_output_and_k_changes_only_the_spread(tmp_path, noisy_model):
    src = crop(tmp_path / "in.tif")
    plain = read(run(src, tmp_path / "plain.tif", noisy_model, output_type="float32").path)
    main2 = run(src, tmp_path / "k2.tif", noisy_model, output_type="float32", uncertainty=str(tmp_path / "u2.tif"),
                samples=2)
    main4 = run(src, tmp_path / "k4.tif", noisy_model, output_type="float32", uncertainty=str(tmp_path / "u4.tif"),
                samples=4)
    assert np.array_equal(read(main2.path), plain) and np.array_equal(read(main4.path), plain)   # bit for bit
    u2, u4 = read(main2.uncertainty)[0], read(main4.uncertainty)[0]
    # Distinct noise per sample: the spread is clearly positive, and more samples estimate it differently.
    assert u2.mean() > 0.5 and u4.mean() > 0.5
    assert np.abs(u2 - u4).mean() > 0.05 * u4.mean()
    # The spread is the standard deviation of the samples: with K = 4 it is the same field's estimate, so
    # the two agree on average within the estimator's noise (K = 2 vs 4), not an order of magnitude apart.
    assert 0.5 < u2.mean() / u4.mean() < 1.5


def test_uncertainty_and_back_projection_are_seamless_across_tile_sizes(tmp_path):
    # The stand-in model is local (3x3 sharpening + the latent noise): what tiles disagree on is the
    # pipeline's doing (noise cut per tile, back-projection at tile edges, the second blend), not the networks'.
    src = crop(tmp_path / "in.tif", size=100, x=10, y=10)
    model = StandInModel(scale=4, noise_weight=0.2)
    kw = dict(output_type="float32", lr_consistency=3, samples=3, overlap=16)
    a = run(src, tmp_path / "a.tif", model, tile=48, batch=3, uncertainty=str(tmp_path / "ua.tif"), **kw)
    b = run(src, tmp_path / "b.tif", model, tile=128, uncertainty=str(tmp_path / "ub.tif"), **kw)
    sa, sb = read(a.path), read(b.path)
    ua, ub = read(a.uncertainty)[0], read(b.uncertainty)[0]
    assert ua.mean() > 5   # noise worth ~25 grey levels: per-tile noise or per-tile spreads would show
    assert np.abs(sa - sb).max() < 0.5 and np.abs(sa - sb).mean() < 0.02
    assert np.abs(ua - ub).max() < 0.5 and np.abs(ua - ub).mean() < 0.02


def test_back_projection_adds_no_tile_disagreement_with_a_real_network(tmp_path, noisy_model):
    # A real (tiny) network's tiles disagree a little near their edges (its receptive field, normalisation);
    # back-projection must not add to that.
    src = crop(tmp_path / "in.tif", size=96, x=16, y=16)
    diffs = {}
    for n in (0, 3):
        kw = dict(output_type="float32", lr_consistency=n, overlap=16)
        a = read(run(src, tmp_path / f"a{n}.tif", noisy_model, tile=64, **kw).path)
        b = read(run(src, tmp_path / f"b{n}.tif", noisy_model, tile=96, **kw).path)
        diffs[n] = np.abs(a - b).mean()
    assert diffs[3] <= 1.05 * diffs[0] and diffs[0] < 0.02 * a.std()


def test_back_projection_makes_the_output_lr_consistent_on_real_pixels(tmp_path):
    src = crop(tmp_path / "in.tif", size=64)
    lr = read(src)
    off = read(run(src, tmp_path / "off.tif", str(SHIPPED), lr_consistency=0).path)
    on = read(run(src, tmp_path / "on.tif", str(SHIPPED), lr_consistency=3).path)
    before, after = lr_consistency(off, lr, 4)["mae"], lr_consistency(on, lr, 4)["mae"]
    assert before > 1.0            # the model alone drifts by more than a grey level on this crop
    assert after <= 0.5 * before and after <= 1.0   # the bound: within 1 grey level (8-bit)
    # It corrects the low frequencies only: the output stays the model's detail, not the bicubic image.
    assert 0 < np.abs(on - off).mean() < 3.0


def test_refusals_are_one_line(tmp_path, noisy_model):
    src = crop(tmp_path / "in.tif")
    with pytest.raises(ValueError, match="faithful sampler draws no noise"):
        run(src, tmp_path / "x.tif", noisy_model, uncertainty=str(tmp_path / "u.tif"), sampler="faithful")
    with pytest.raises(ValueError, match="2 to"):
        run(src, tmp_path / "x.tif", noisy_model, uncertainty=str(tmp_path / "u.tif"), samples=1)
    with pytest.raises(ValueError, match="LR-consistency iterations"):
        run(src, tmp_path / "x.tif", noisy_model, lr_consistency=-1)
    with pytest.raises(Exception, match="one would overwrite the other"):
        run(src, tmp_path / "x.tif", noisy_model, uncertainty=str(tmp_path / "x.tif"))
    assert not list(tmp_path.glob("x.tif*")) and not list(tmp_path.glob("u.tif*"))


def test_multi_step_sampler_gives_an_uncertainty_too(tmp_path, noisy_model):
    src = crop(tmp_path / "in.tif", size=32)
    res = run(src, tmp_path / "sr.tif", noisy_model, sampler="ddpm", steps=2, samples=2,
              uncertainty=str(tmp_path / "u.tif"))
    assert read(res.uncertainty).mean() > 0.5


class _CancelAfter(Progress):
    def __init__(self, n):
        self.n, self.calls = n, 0

    def cancelled(self):
        self.calls += 1
        return self.calls > self.n


def test_cancel_or_a_failed_commit_writes_neither_output_and_loses_no_older_one(tmp_path, noisy_model, monkeypatch):
    src = crop(tmp_path / "in.tif", size=96)
    sr, unc = tmp_path / "sr.tif", tmp_path / "u.tif"
    with pytest.raises(Cancelled):
        superresolve(src, sr, noisy_model, SROptions(tile=32, overlap=8, batch=1, device="cpu", ignore_domain=True,
                                                     uncertainty=str(unc)), _CancelAfter(5))
    assert not sr.exists() and not unc.exists()
    # Both outputs are finished before either is renamed into place: when the main output fails its last
    # check, the finished uncertainty raster is dropped and older files at both paths are kept as they were.
    sr.write_bytes(b"older output")
    unc.write_bytes(b"older uncertainty")
    verify = io._verify

    def failing(path, spec, what, **kw):
        if spec.bands == 3:
            raise io.RasterWriteError(f"{what}: disk full")
        return verify(path, spec, what, **kw)

    monkeypatch.setattr(io, "_verify", failing)
    with pytest.raises(io.RasterWriteError, match="disk full"):
        run(src, sr, noisy_model, uncertainty=str(unc))
    assert sr.read_bytes() == b"older output" and unc.read_bytes() == b"older uncertainty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "sr.tif", "u.tif"]   # no temporaries either


def test_cli_flags(tmp_path, noisy_model, capsys):
    src = crop(tmp_path / "in.tif", size=32)
    rc = cli_main(["sr", src, str(tmp_path / "sr.tif"), "--model", noisy_model, "--device", "cpu", "--quiet",
                   "--ignore-domain", "--uncertainty", str(tmp_path / "u.tif"), "--samples", "2",
                   "--lr-consistency", "0", "--tile", "32", "--overlap", "8"])
    assert rc == 0 and "uncertainty (spread of 2 samples)" in capsys.readouterr().out
    assert read(tmp_path / "u.tif").shape == (1, 128, 128)
    plain = cli_main(["sr", src, str(tmp_path / "p.tif"), "--model", noisy_model, "--device", "cpu", "--quiet",
                      "--ignore-domain", "--lr-consistency", "0", "--tile", "32", "--overlap", "8"])
    assert plain == 0 and np.array_equal(read(tmp_path / "p.tif"), read(tmp_path / "sr.tif"))
    assert cli_main(["sr", src, str(tmp_path / "f.tif"), "--model", noisy_model, "--sampler", "faithful",
                     "--uncertainty", str(tmp_path / "fu.tif"), "--quiet"]) != 0
    assert "faithful sampler draws no noise" in capsys.readouterr().err


def test_repeated_samples_share_condnet_and_equal_separate_calls(noisy_model):
    from lcmsr.weights import load_model

    model = load_model(noisy_model)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(3, 2, *model.latent_shape(16, 16))
    together = model.sr(x, noise=noise.reshape(6, *noise.shape[2:]), repeats=3)
    apart = torch.cat([model.sr(x, noise=noise[k]) for k in range(3)])
    assert torch.allclose(together, apart, atol=1e-4)
    assert (apart[:2] - apart[2:4]).abs().mean() > 1e-3   # the samples differ: the test can tell them apart


def test_uncertainty_format_comes_from_its_extension_and_a_wrong_one_is_named(tmp_path, noisy_model):
    src = crop(tmp_path / "in.tif", size=32)
    res = run(src, tmp_path / "sr.tif", noisy_model, uncertainty=str(tmp_path / "u.img"), samples=2)
    ds = gdal.Open(res.uncertainty)
    assert ds.GetDriver().ShortName == "HFA" and ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert not [w for w in res.warnings if "does not keep" in w]
    with pytest.raises(io.RasterError, match="the uncertainty raster: the JPEG format"):
        run(src, tmp_path / "x.tif", noisy_model, uncertainty=str(tmp_path / "u.jpg"))
    assert not (tmp_path / "x.tif").exists()
