"""The paper's claim at toy size: a tiny model, trained a few hundred steps per stage on real
pixels, super-resolves a crop it never saw better than bicubic — in ONE denoiser step."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmsr.metrics.psnr_ssim import psnr
from lcmsr.ops import upsample_bicubic
from lcmsr.train import TrainOptions, train_autoencoder, train_consistency
from lcmsr.train.data import make_lr
from lcmsr.weights import load_model

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample" / "neon_hr.tif"


def real_pixels() -> np.ndarray:
    """The committed NEON 0.1 m RGB crop (512 x 512, CC0): forest and grass, hard for x4."""
    gdal = pytest.importorskip("osgeo.gdal")
    assert SAMPLE.exists(), f"{SAMPLE} is committed with the repository and must be there"
    return gdal.Open(str(SAMPLE)).ReadAsArray()


@pytest.mark.slow
def test_one_step_sr_beats_bicubic_on_an_unseen_crop(tmp_path):
    torch.set_num_threads(1)
    hr = real_pixels()
    train, held_out = hr[:, :384, :], hr[:, 384:, :]  # the bottom 128 rows are never sampled
    common = dict(sources=[train], scale=4, patch=64, config="tiny", device="cpu", lpips=False, seed=0,
                  checkpoint_every=10**6, val_every=10**6, log_every=100)
    s1 = train_autoencoder(TrainOptions(iterations=600, batch=4, lr=2e-3, checkpoint_dir=str(tmp_path / "ae"),
                                        **common))
    s2 = train_consistency(TrainOptions(iterations=600, batch=8, lr=3e-4, checkpoint_dir=str(tmp_path / "cm"),
                                        stage1=s1.checkpoint, out=str(tmp_path / "m.safetensors"), **common))
    model = load_model(s2.model_path)
    norm = model.info.normalization
    hr_t = torch.from_numpy(held_out.astype(np.float32))[None]
    lr = norm.forward(make_lr(hr_t, 4, "Byte"))
    target = norm.forward(hr_t)
    sr = model.sr(lr, steps=1, generator=torch.Generator().manual_seed(0))
    p_sr = psnr(sr, target, data_range=2.0, border=4)
    p_bicubic = psnr(upsample_bicubic(lr, 4), target, data_range=2.0, border=4)
    # Measured here: bicubic 17.97 dB, one step 18.02 dB, CondNet regression latent 18.10 dB,
    # stage-1 reconstruction with the true latent 18.70 dB (the ceiling).
    assert p_sr > p_bicubic, f"one-step SR {p_sr:.2f} dB does not beat bicubic {p_bicubic:.2f} dB"
