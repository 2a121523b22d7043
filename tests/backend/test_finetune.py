"""Fine-tuning a finished model on the user's imagery (lcmsr.train.finetune, `lcmsr finetune`).

Plumbing on tiny-config models; real pixels (the NEON sample, the Sentinel-2 fixture) where the claim
is about the data: what the model learns from, which bands, which pixel sizes.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gdal = pytest.importorskip("osgeo.gdal")

from lcmsr.progress import Cancelled, Progress  # noqa: E402
from lcmsr.train_options import TrainOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NEON_HR = REPO / "resources" / "sample" / "neon_hr.tif"          # real 0.1 m NEON RGB, 512 x 512 Byte
S2 = REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"          # real Sentinel-2 B02 B03 B04 B08, 10 m UInt16


def tiny_with_domain(path, preset: str, seed: int = 0) -> str:
    """A tiny-config model file with seeded weights (no zero layers) and a shipped model's domain."""
    from lcmsr.config import tiny_config
    from lcmsr.domain import PRESETS
    from lcmsr.model import ModelInfo
    from lcmsr.normalization import Normalization
    from lcmsr.weights import save_model

    from _models_helpers import seeded_model

    domain = copy.deepcopy(PRESETS[preset])
    bands = 1 if domain.bandwise else 3
    model = seeded_model(tiny_config(scale=4, bands=bands), seed=seed, with_encoder=False)
    if domain.bandwise:
        norm, data_type, names = Normalization([0.0], [1.0]), "Float32", ["any"]
    else:
        norm, data_type, names = Normalization.for_dtype("Byte", 3), "Byte", ["red", "green", "blue"]
    info = ModelInfo(scale=4, bands=bands, band_names=names, normalization=norm, config=model.config,
                     data_type=data_type, domain=domain, training={"steps": 1})
    model.info = info
    return str(save_model(path, model, info))


def opts(model, out, sources, **kw) -> TrainOptions:
    base = dict(sources=[str(s) for s in sources], base_model=str(model), out=str(out), patch=64, batch=2,
                iterations=2, lpips=False, log_every=1, device="cpu", checkpoint_every=1)
    base.update(kw)
    return TrainOptions(**base)


def one_step(path, lr_raw: torch.Tensor) -> torch.Tensor:
    from lcmsr.weights import load_model

    model = load_model(path)
    norm = model.info.normalization
    gen = torch.Generator().manual_seed(0)
    return norm.inverse(model.sr(norm.forward(lr_raw), steps=1, generator=gen))


def neon_lr(size=128):
    from lcmsr.train.data import make_lr

    hr = gdal.Open(str(NEON_HR)).ReadAsArray(0, 0, size, size).astype(np.float32)
    return make_lr(torch.from_numpy(hr)[None], 4, "Byte")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_zero_learning_rate_reproduces_the_base_model_and_steps_move_it(tmp_path):
    """Fine-tuning starts from the base weights, all three networks: at learning rate 0 the new file's
    output is the base's bit for bit; a few steps move it, the decoder in the first phase and CondNet
    and the denoiser in the second."""
    from lcmsr.train.finetune import finetune
    from lcmsr.weights import load_model

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    finetune(opts(base, tmp_path / "same.safetensors", [NEON_HR], lr=0.0))
    lr = neon_lr()
    assert torch.equal(one_step(base, lr), one_step(tmp_path / "same.safetensors", lr))

    finetune(opts(base, tmp_path / "moved.safetensors", [NEON_HR], lr=1e-3, iterations=4, decoder_share=0.5))
    assert not torch.equal(one_step(base, lr), one_step(tmp_path / "moved.safetensors", lr))
    a, b = load_model(base).state_dict(), load_model(tmp_path / "moved.safetensors").state_dict()
    for part in ("decoder.", "condnet.", "denoiser."):
        assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(part)), part
    assert torch.equal(a["latent_scale"], b["latent_scale"])   # the latent space is the base's


def test_only_the_decoder_moves_in_the_first_phase(tmp_path):
    from lcmsr.train.finetune import finetune
    from lcmsr.weights import load_model

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    finetune(opts(base, tmp_path / "dec.safetensors", [NEON_HR], lr=1e-3, iterations=2, decoder_share=1.0))
    a, b = load_model(base).state_dict(), load_model(tmp_path / "dec.safetensors").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("condnet.", "denoiser.")))


class _CancelAfter(Progress):
    def __init__(self, steps):
        self.steps, self.seen = steps, 0

    def report(self, fraction, message=""):
        self.seen += 1

    def cancelled(self):
        return self.seen >= self.steps


def test_resume_after_interruption_finishes_the_same_plan_exactly(tmp_path):
    """Cancelled after 2 of 4 steps, a resume continues the checkpoint's plan (not a new budget) and
    ends with the weights of an uninterrupted run."""
    from lcmsr.train.finetune import finetune
    from lcmsr.weights import load_model

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    whole = finetune(opts(base, tmp_path / "whole.safetensors", [NEON_HR], lr=1e-3, iterations=4,
                          decoder_share=0.5))
    assert whole.steps == 4
    o = opts(base, tmp_path / "cut.safetensors", [NEON_HR], lr=1e-3, iterations=4, decoder_share=0.5)
    with pytest.raises(Cancelled):
        finetune(o, _CancelAfter(2))
    assert not (tmp_path / "cut.safetensors").exists()
    assert list((tmp_path / "cut_checkpoints").glob("step-*.json"))
    # A different budget on the resume: the checkpoint's plan (4 steps, 2 in the decoder phase) wins.
    resumed = finetune(opts(base, tmp_path / "cut.safetensors", [NEON_HR], lr=1e-3, iterations=None,
                            minutes=0.1, decoder_share=0.5, resume=True))
    assert (resumed.steps, resumed.resumed_from) == (4, 2)
    a, b = load_model(tmp_path / "whole.safetensors").state_dict(), load_model(tmp_path / "cut.safetensors").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    record = load_model(tmp_path / "cut.safetensors").info.training["finetunes"][-1]
    assert (record["decoder_steps"], record["consistency_steps"]) == (2, 2)


def _raster(path, array, pixel, dtype=gdal.GDT_Byte, descriptions=None):
    from osgeo import osr

    bands, h, w = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, bands, dtype)
    ds.SetGeoTransform((500000.0, pixel, 0.0, 4600000.0, 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(bands):
        ds.GetRasterBand(b + 1).WriteArray(array[b])
        if descriptions:
            ds.GetRasterBand(b + 1).SetDescription(descriptions[b])
    ds = None
    return str(path)


def test_domain_is_inherited_and_widened_by_the_data_and_the_record_names_the_base(tmp_path):
    """The NEON pixels relabelled as 1 m imagery: the new model's input pixel range grows to include
    4 m; bands, data type and the rest of the domain are the base's; the record names the base (file and
    SHA-256) and the data; the file passes check_model and `lcmsr sr` uses it."""
    from lcmsr.catalog import file_sha256
    from lcmsr.train.finetune import finetune
    from lcmsr.weights import check_model, read_info

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    hr = gdal.Open(str(NEON_HR)).ReadAsArray(0, 0, 256, 256)
    coarse = _raster(tmp_path / "one_metre.tif", hr, pixel=1.0)
    out = tmp_path / "new.safetensors"
    finetune(opts(base, out, [coarse], iterations=1))
    info, before = check_model(out), read_info(base)
    d = info.domain
    assert d.lr_gsd_m == [0.2, 4.0] and d.hr_gsd_m == [0.05, 1.0]
    assert (d.family, d.band_roles, d.data_types, d.normalization) == ("aerial", ["red", "green", "blue"],
                                                                       ["Byte"], "fixed")
    assert "Fine-tuned from base.safetensors" in d.notes and before.domain.notes in d.notes
    record = info.training["finetunes"][-1]
    assert record["base_model"] == "base.safetensors" and record["base_sha256"] == file_sha256(base)
    assert record["data"] == [coarse] and record["steps"] == 1
    assert info.training["steps"] == 1   # the base's own record is kept
    lr = tmp_path / "lr.tif"
    _raster(lr, hr[:, :64, :64], pixel=4.0)
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO / "backend"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "lcmsr", "sr", str(lr), str(tmp_path / "sr.tif"), "--model",
                           str(out), "--device", "cpu"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert gdal.Open(str(tmp_path / "sr.tif")).RasterXSize == 256


def test_bandwise_model_learns_every_band_of_a_real_sentinel2_stack_stretched_as_inference(tmp_path):
    """A band-wise model is fine-tuned on each band of the 4-band UInt16 Sentinel-2 fixture, each stretched by
    its own 1-99 % range (what inference does): the sources are four single-band Float32 views in 0..1, and
    the new domain keeps UInt16 and every band kind the fixture names."""
    from lcmsr.raster.facts import band_ranges
    from lcmsr.train.finetune import finetune, prepare_data
    from lcmsr.weights import check_model, load_model

    base = tiny_with_domain(tmp_path / "sat.safetensors", "satellite-bandwise")
    o = opts(base, tmp_path / "sat_ft.safetensors", [S2], iterations=1)
    prepared = prepare_data(o, load_model(base).info, Progress())
    assert len(prepared.sources) == 4 and prepared.bands == [1]
    assert prepared.roles == ["blue", "green", "red", "nir"] and prepared.data_types == ["UInt16"]
    lo, hi, _, _ = band_ranges(str(S2), [4])[0]
    data, valid = prepared.sources[3].read(0, 0, 256, 256, [1])
    ds = gdal.Open(str(S2))   # kept: a band outliving its dataset crashes GDAL
    raw = ds.GetRasterBand(4).ReadAsArray().astype(np.float32)
    np.testing.assert_allclose(data[0], (raw - lo) / (hi - lo), rtol=1e-6, atol=1e-6)
    assert 0.0 <= np.percentile(data, 1) < 0.05 and 0.95 < np.percentile(data, 99) <= 1.0
    finetune(o)
    d = check_model(tmp_path / "sat_ft.safetensors").domain
    assert d.bandwise and "UInt16" in d.data_types and {"blue", "green", "red", "nir"} <= set(d.trained_roles)
    assert d.lr_gsd_m == [10.0, 120.0]   # 40 m LR pixels lie inside the base's range


def test_true_lr_hr_pairs_are_read_aligned(tmp_path):
    """With a co-registered LR raster the sampler reads the LR window under the HR window: for an LR that
    is the project's degradation of the HR, the pairs equal what the degradation gives (away from the
    patch borders, where the whole-image and the per-patch resampling differ), flips included."""
    from lcmsr.normalization import Normalization
    from lcmsr.train.data import PairSampler, PairSource, RasterSource, SourceSet, make_lr

    hr = gdal.Open(str(NEON_HR)).ReadAsArray().astype(np.float32)
    lr = make_lr(torch.from_numpy(hr)[None], 4, "Byte")[0].numpy().astype(np.uint8)
    lr_path = _raster(tmp_path / "lr.tif", lr, pixel=0.4)
    pair = PairSource(RasterSource(NEON_HR), RasterSource(lr_path), 4)
    norm = Normalization.for_dtype("Byte", 3)
    sampler = PairSampler(SourceSet([pair], [1, 2, 3], "Byte", ["r", "g", "b"]), 4, 64, norm, seed=3, multiple=32)
    h, l = sampler.sample(6)
    remade = make_lr(norm.inverse(h), 4, "Byte")
    diff = (norm.inverse(l) - remade)[..., 3:-3, 3:-3].abs()
    assert float(diff.mean()) < 0.5 and float(diff.max()) <= 3.0
    shifted = (norm.inverse(l)[..., 3:-3, 4:-2] - remade[..., 3:-3, 3:-3]).abs()
    assert float(shifted.mean()) > 3 * float(diff.mean())   # the test can tell a one-pixel misalignment
    with pytest.raises(ValueError, match="expected LR 128x128"):
        PairSource(RasterSource(NEON_HR), RasterSource(_raster(tmp_path / "bad.tif", lr[:, :100], 0.4)), 4)


def test_cli_finetune_by_bundled_name_budget_and_errors(tmp_path):
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO / "backend"), OMP_NUM_THREADS="1")

    def lcmsr(*args):
        return subprocess.run([sys.executable, "-m", "lcmsr", *args], env=env, capture_output=True, text=True)

    both = lcmsr("finetune", "--from", "x", "--out", str(tmp_path / "n.safetensors"), "--minutes", "1",
                 "--iterations", "2", str(NEON_HR))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    unknown = lcmsr("finetune", "--from", "no_such_model", "--out", str(tmp_path / "n.safetensors"),
                    "--iterations", "1", str(NEON_HR))
    assert unknown.returncode == 2 and "no_such_model" in unknown.stderr and "lcmsr_x4_rgb_small" in unknown.stderr
    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    done = lcmsr("finetune", "--from", base, "--out", str(tmp_path / "n.safetensors"), "--iterations", "1",
                 "--patch", "64", "--batch", "1", "--no-lpips", "--quiet", str(NEON_HR))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["model"] == str(tmp_path / "n.safetensors")
    assert (tmp_path / "n_checkpoints").is_dir()
    same = lcmsr("finetune", "--from", base, "--out", base, "--iterations", "1", str(NEON_HR))
    assert same.returncode == 2 and "base.safetensors" in same.stderr


@pytest.mark.slow
def test_minutes_are_planned_from_a_timed_trial(tmp_path):
    from lcmsr.train.finetune import finetune

    infos = []

    class Log(Progress):
        def info(self, message):
            infos.append(message)

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    result = finetune(opts(base, tmp_path / "m.safetensors", [NEON_HR], iterations=None, minutes=0.25,
                           checkpoint_every=1000), Log())
    plan = [m for m in infos if m.startswith("finetune: 0.25 min ->")]
    assert plan and "decoder steps" in plan[0], infos
    assert any("consistency steps fill the" in m for m in infos), infos     # the re-plan at the boundary
    # Tiny steps on a shared CPU time noisily: only a grossly wrong plan fails here (the re-plan's
    # arithmetic is the test above).
    assert result.steps >= 2 and result.seconds < 0.25 * 60 * 2


def test_a_minutes_budget_is_replanned_once_at_the_phase_boundary_from_the_real_pace():
    """The decoder phase ran twice as slow as the trial said: the consistency steps are planned from the
    time left at that pace (not the trial's), once, and never before or after the boundary."""
    import time
    from types import SimpleNamespace

    from lcmsr.train.finetune import FinetuneStage

    stage = FinetuneStage.__new__(FinetuneStage)
    stage.pace, stage.budget_s, stage.decoder_steps = {"decoder": 1.0, "consistency": 2.0}, 100.0, 10
    stage.ctx, stage.started, stage.prior = SimpleNamespace(is_main=False), time.monotonic(), 20.0
    assert stage.planned_steps(9, 50) == 50                      # still in the decoder phase
    assert stage.planned_steps(10, 50) == 10 + int((97.0 - 20.0) / 4.0)   # 2x slower: 4 s per step
    assert stage.planned_steps(10, 29) == 29                     # once only
    stage.pace, stage.decoder_steps = {"decoder": 1.0, "consistency": 2.0}, 0
    assert stage.planned_steps(0, 50) == 50                      # no decoder phase: nothing measured


@pytest.mark.slow
def test_finetuning_on_real_pixels_beats_the_base_model_on_unseen_pixels(tmp_path):
    """A tiny model fine-tuned on the left half of the NEON sample beats its base on the right half."""
    from lcmsr.metrics.psnr_ssim import psnr
    from lcmsr.train.data import make_lr
    from lcmsr.train.finetune import finetune

    base = tiny_with_domain(tmp_path / "base.safetensors", "aerial-rgb")
    hr = gdal.Open(str(NEON_HR)).ReadAsArray().astype(np.float32)
    left = _raster(tmp_path / "left.tif", hr[:, :, :256].astype(np.uint8), pixel=0.1)
    finetune(opts(base, tmp_path / "ft.safetensors", [left], iterations=60, batch=4, lr=1e-3))
    right = torch.from_numpy(hr[:, :256, 256:])[None]
    lr = make_lr(right, 4, "Byte")
    scores = {name: psnr(one_step(path, lr).clamp(0, 255).round(), right, data_range=255.0, border=4)
              for name, path in (("base", base), ("ft", tmp_path / "ft.safetensors"))}
    assert scores["ft"] > scores["base"] + 0.3, scores
