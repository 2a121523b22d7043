"""Every model file in resources/models/, discovered: a third shipped model is its file, a preset and a card.

Each model must carry one of the domain presets (lcmsr/presets/*.json) exactly, be named by a model card, carry
its measured default sampler and working-memory figures, and beat bicubic on real held-out pixels of its
domain with the sampler it runs by default -- so a wrong file shipped, a preset that does not match its
training, or a normalisation strategy wired wrong fails here without any test naming the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gdal = pytest.importorskip("osgeo.gdal")

from lcmsr import domain as dom  # noqa: E402
from lcmsr.ops import upsample_bicubic  # noqa: E402
from lcmsr.raster.degrade import degrade  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from lcmsr.weights import check_model, read_info  # noqa: E402

from conftest import REPO  # noqa: E402
from test_raster_standin import read_raster  # noqa: E402

MODEL_DIR = REPO / "resources" / "models"
MODELS = sorted(MODEL_DIR.glob("*.safetensors"))
CARDS = {p.name: p.read_text(encoding="utf-8") for p in MODEL_DIR.glob("MODEL_CARD*.md")}
# Held-out real pixels of each family at the resolution its models write (the LR is made by the project's
# degradation): the demo sample's 0.1 m NEON window (cut out of the aerial training tile) and a 10 m
# Sentinel-2 crop (no Sentinel-2 pixel is in any training split).
HELD_OUT = {"aerial": REPO / "resources" / "sample" / "neon_hr.tif",
            "satellite": REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"}
MIN_GAIN_DB = 0.1


def _ids(p: Path) -> str:
    return p.stem


def test_models_are_found():
    assert len(MODELS) >= 2, MODELS


@pytest.mark.parametrize("path", MODELS, ids=_ids)
def test_each_shipped_model_has_a_preset_a_card_and_its_measured_figures(path):
    check_model(path)
    info = read_info(path)
    presets = [name for name, d in dom.PRESETS.items() if d == info.domain]
    assert len(presets) == 1, f"{path.name}: its domain is not exactly one preset of lcmsr/presets/"
    assert [c for c, text in CARDS.items() if path.name in text], f"no MODEL_CARD*.md names {path.name}"
    assert info.default_sampler and info.default_sampler["why"], f"{path.name}: no measured default sampler"
    assert info.working_memory and {"fp32", "bf16"} <= set(info.working_memory), \
        f"{path.name}: no measured working-memory figures"
    assert info.training.get("storage") in ("fp16", "int8")


def _stretched_psnr(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    from lcmsr.metrics.psnr_ssim import psnr

    lo = np.percentile(hr, 1, axis=(1, 2))[:, None, None]
    hi = np.percentile(hr, 99, axis=(1, 2))[:, None, None]
    return psnr(torch.from_numpy((sr - lo) / (hi - lo))[None], torch.from_numpy((hr - lo) / (hi - lo))[None], 1.0,
                border=border)


@pytest.mark.parametrize("path", MODELS, ids=_ids)
def test_each_shipped_model_beats_bicubic_on_held_out_pixels_of_its_domain(path, tmp_path):
    torch.set_num_threads(2)
    info = read_info(path)
    hr_path = HELD_OUT[info.domain.family]
    lr = tmp_path / "lr.tif"
    degrade(str(hr_path), str(lr), int(info.scale))
    res = superresolve(str(lr), tmp_path / "sr.tif", str(path), SROptions(tile=64, overlap=8))
    hr = read_raster(hr_path).astype(np.float64)[[b - 1 for b in res.bands]]
    lr_px = read_raster(lr).astype(np.float64)[[b - 1 for b in res.bands]]
    bic = upsample_bicubic(torch.from_numpy(lr_px)[None], int(info.scale))[0].numpy()
    sr = read_raster(res.path).astype(np.float64)
    gain = _stretched_psnr(sr, hr) - _stretched_psnr(bic, hr)
    assert gain >= MIN_GAIN_DB, f"{path.name} on {hr_path.name}: {gain:+.2f} dB over bicubic"
