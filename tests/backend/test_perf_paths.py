"""Speed paths change nothing but speed: optimised inference vs plain fp32 eager, and the bounded-memory blend."""
import os

import numpy as np
import pytest
import torch

from conftest import needs_environment
from lcmsr.inference import Inference, InferenceOptions
from lcmsr.progress import Progress
from lcmsr.raster.tiling import BlockBlender, plan_tiles, stripe_order


class Recorder(Progress):
    def __init__(self):
        self.warnings, self.infos = [], []

    def warn(self, message):
        self.warnings.append(message)

    def info(self, message):
        self.infos.append(message)


def _tiny(scale=2, seed=0):
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(scale=scale, bands=3), with_encoder=False).eval()
    # Fresh models zero-initialise their last layers (the output is then bicubic(LR) exactly, whatever
    # the precision): give every weight a value so that every layer shapes the result.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(model, b=2, h=16, w=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    noise = torch.randn((b,) + model.latent_shape(h, w), generator=g)
    return lr, noise


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_channels_last_equals_plain_fp32_eager():
    model = _tiny()
    lr, noise = _inputs(model)
    plain = model.sr(lr, noise=noise)
    assert (plain - model.sr(lr, noise=torch.zeros_like(noise))).abs().max() > 1e-3  # the networks matter
    fast = Inference(_tiny(), "cpu", InferenceOptions(channels_last=True)).sr(lr, noise=noise)
    assert fast.shape == plain.shape and fast.dtype == torch.float32
    assert fast.is_contiguous(memory_format=torch.channels_last)
    # Only the order of float additions inside convolutions changes.
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)


def test_bf16_differs_only_by_bf16_rounding():
    model = _tiny()
    lr, noise = _inputs(model)
    plain = model.sr(lr, noise=noise)
    fast = Inference(_tiny(), "cpu", InferenceOptions(precision="bf16", channels_last=True)).sr(lr, noise=noise)
    assert fast.dtype == torch.float32
    diff = (fast - plain).abs()
    # bf16 keeps 8 mantissa bits (relative 2^-9 per rounding); through a few dozen layers that stays
    # a few hundredths in model space ([-1, 1]) at worst and far less on average.
    assert 0 < float(diff.max()) < 0.1 and float(diff.mean()) < 0.01


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch):
    import lcmsr.inference as inference

    class Broken(torch.nn.Module):
        def __init__(self, part):
            super().__init__()
            self.part = part

        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler found")

    monkeypatch.setattr(inference.torch, "compile", lambda module, **kw: Broken(module))
    model = _tiny()
    lr, noise = _inputs(model)
    plain = model.sr(lr, noise=noise)
    progress = Recorder()
    runner = Inference(model, "cpu", InferenceOptions(compile=True, channels_last=False), progress)
    out = runner.sr(lr, noise=noise)
    assert torch.equal(out, plain)
    assert any("torch.compile failed" in w and "C++ compiler" in w for w in progress.warnings)
    # The failure is remembered for this model: the next job does not try again.
    again = Recorder()
    Inference(model, "cpu", InferenceOptions(compile=True, channels_last=False), again).sr(lr, noise=noise)
    assert any("failed for this model earlier" in w for w in again.warnings)
    # And the caller's model was never modified.
    assert type(model.condnet).__name__ != "Broken"


@pytest.mark.slow
def test_torch_compile_matches_eager_on_the_cpu():
    from lcmsr.inference import compile_available

    ok, why = compile_available()
    needs_environment(ok, why)
    model = _tiny()
    lr, noise = _inputs(model, b=1, h=16, w=16)
    plain = model.sr(lr, noise=noise)
    progress = Recorder()
    out = Inference(model, "cpu", InferenceOptions(compile=True), progress).sr(lr, noise=noise)
    assert not progress.warnings, progress.warnings  # compiled for real, not the fallback
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-4)


def test_cuda_graphs_are_refused_plainly_on_the_cpu():
    progress = Recorder()
    runner = Inference(_tiny(), "cpu", InferenceOptions(cuda_graphs=True), progress)
    assert not runner.graphs_enabled and any("CUDA graphs" in m for m in progress.infos)


# ---------------------------------------------------------------- bounded-memory blend

def _feed(plan, bands, scale, truth, **kw):
    blender = BlockBlender(plan, bands, scale, **kw)
    out = np.full_like(truth, np.nan)
    seen = np.zeros(truth.shape[1:], int)
    for t in blender.order:
        hr = np.zeros((bands, t.h * scale, t.w * scale), np.float32)
        rh = min(t.h * scale, truth.shape[1] - t.y * scale)
        rw = min(t.w * scale, truth.shape[2] - t.x * scale)
        hr[:, :rh, :rw] = truth[:, t.y * scale:t.y * scale + rh, t.x * scale:t.x * scale + rw]
        for b in blender.add(t, hr, np.ones((bands, t.read_h, t.read_w), bool)):
            h, w = b.value.shape[1:]
            out[:, b.y:b.y + h, b.x:b.x + w] = b.value
            seen[b.y:b.y + h, b.x:b.x + w] += 1
            assert b.valid.all()
    return blender, out, seen


def test_block_blender_reassembles_exactly_with_stripes_and_spill(tmp_path):
    rng = np.random.default_rng(0)
    width, height, scale, bands = 150, 110, 2, 2
    truth = rng.random((bands, height * scale, width * scale)).astype(np.float32)
    plan = plan_tiles(width, height, tile=40, overlap=8, align=4)
    blender, out, seen = _feed(plan, bands, scale, truth, block=32, stripe_cols=2, spill_dir=str(tmp_path))
    assert (seen == 1).all()  # every output pixel handed out exactly once
    np.testing.assert_allclose(out, truth, rtol=1e-5, atol=1e-6)
    assert blender.spilled_blocks > 0
    assert not blender._open  # nothing left behind in memory
    blender.close()
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_scratch_of_a_killed_run_is_swept_and_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from lcmsr.atomic import HOST_TAG

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".lcmsr-blend.partial-{HOST_TAG}-{int(dead.stdout)}-abc"
    older = tmp_path / f".lcmsr-blend-{HOST_TAG}-{int(dead.stdout)}-abc"   # the naming before lcmsr.atomic's
    live = tmp_path / f".lcmsr-blend.partial-{HOST_TAG}-{os.getppid()}-def"
    for d in (stale, older, live):
        d.mkdir()
        (d / "0_0.npz").write_bytes(b"x")
    width, height, scale = 150, 110, 2
    truth = np.zeros((1, height * scale, width * scale), np.float32)
    plan = plan_tiles(width, height, tile=40, overlap=8, align=4)
    blender, _, _ = _feed(plan, 1, scale, truth, block=32, stripe_cols=2, spill_dir=str(tmp_path))
    blender.close()
    assert not stale.exists() and not older.exists() and live.exists()


def test_blocks_held_in_memory_do_not_grow_with_the_raster(tmp_path):
    peaks = []
    for width, height in ((120, 120), (480, 120), (120, 480), (480, 480)):
        plan = plan_tiles(width, height, tile=40, overlap=8, align=4)
        truth = np.zeros((1, height * 2, width * 2), np.float32)
        blender, _, _ = _feed(plan, 1, 2, truth, block=32, stripe_cols=2, spill_dir=str(tmp_path))
        blender.close()
        peaks.append(blender.peak_open)
    assert max(peaks) <= peaks[0] * 1.5 + 4, peaks


def test_stripe_order_visits_each_tile_once_stripe_by_stripe():
    plan = plan_tiles(300, 200, tile=40, overlap=8, align=4)
    order = stripe_order(plan, 3)
    assert sorted(t.index for t in order) == list(range(len(plan.tiles)))
    stripes = [t.col // 3 for t in order]
    assert stripes == sorted(stripes)


# ---------------------------------------------------------------- the pipeline in stripes

def test_pipeline_in_stripes_equals_one_stripe_and_leaves_no_scratch(tmp_path, monkeypatch):
    pytest.importorskip("osgeo.gdal")
    from test_raster_standin import StandInModel, read_raster, textured, write_raster

    from lcmsr.raster import pipeline
    from lcmsr.raster.pipeline import SROptions, superresolve

    src = write_raster(tmp_path / "in.tif", textured(90, 200).round().astype(np.uint8), nodata=0)
    opts = dict(tile=48, overlap=8, batch=3, output_type="float32")
    model = StandInModel(scale=2, noise_weight=0.2)
    monkeypatch.setattr(pipeline, "STRIPE_HR", 10_000)
    superresolve(src, tmp_path / "one.tif", model, SROptions(**opts))
    monkeypatch.setattr(pipeline, "STRIPE_HR", 128)  # 400 HR columns -> stripes of one tile column
    res = superresolve(src, tmp_path / "striped.tif", model, SROptions(**opts))
    one, striped = read_raster(tmp_path / "one.tif"), read_raster(res.path)
    np.testing.assert_allclose(striped, one, rtol=0, atol=1e-3)  # only the order of the weighted sums differs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "one.tif", "striped.tif"]
    # And the georeferencing is the same.
    from osgeo import gdal

    assert gdal.Open(res.path).GetGeoTransform() == gdal.Open(str(tmp_path / "one.tif")).GetGeoTransform()
    assert os.path.getsize(res.path) < 1.5 * os.path.getsize(tmp_path / "one.tif")  # each GeoTIFF tile once
