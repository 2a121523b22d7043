"""Known answers for the trust metrics (lcmsr.metrics.trust), on the real pixels of the bundled sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lcmsr.metrics import trust
from lcmsr.metrics.evaluate import read_image

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"


@pytest.fixture(scope="module")
def hr():
    return read_image(SAMPLE / "neon_hr.tif").astype(np.float64)   # [3, H, W] 8-bit NEON aerial


def test_an_exact_reduction_is_consistent_and_a_shifted_one_is_not(hr):
    lr = trust.degrade(hr, 4)
    same = trust.lr_consistency(hr, lr, 4)
    assert same["mae"] < 1e-9 and same["max"] < 1e-9
    shifted = np.roll(hr, 8, axis=2)          # two LR pixels to the right
    off = trust.lr_consistency(shifted, lr, 4)
    assert off["mae"] > 5.0                   # grey levels: a real image does not survive a shift
    # Counting only a valid region changes what is averaged, not the rule.
    mask = np.zeros(lr.shape[1:], bool)
    mask[:, : lr.shape[2] // 2] = True
    half = trust.lr_consistency(shifted, lr, 4, valid=mask)
    assert half["mae"] != pytest.approx(off["mae"])


def test_spectral_angle_sees_colour_not_brightness(hr):
    assert trust.spectral_angle(hr, hr) == pytest.approx(0.0, abs=1e-6)
    # Brightness per pixel changes no band ratio: no angle.
    gain = 0.5 + np.random.default_rng(0).random(hr.shape[1:])
    assert trust.spectral_angle(hr, hr * gain) == pytest.approx(0.0, abs=1e-5)
    # A rotation of every two-band vector by 10 degrees is an angle of exactly 10 degrees.
    rg = hr[:2]
    t = np.radians(10.0)
    rotated = np.stack([np.cos(t) * rg[0] - np.sin(t) * rg[1], np.sin(t) * rg[0] + np.cos(t) * rg[1]])
    assert trust.spectral_angle(rg, rotated) == pytest.approx(10.0, abs=1e-6)
    # Swapping red and blue on real pixels is a colour change.
    assert trust.spectral_angle(hr, hr[::-1]) > 1.0
    assert trust.spectral_angle(hr[:1], hr[:1]) is None


def test_spearman_against_known_answers():
    x = np.arange(50, dtype=float)
    assert trust.spearman(x, x ** 3) == pytest.approx(1.0)
    assert trust.spearman(x, -x) == pytest.approx(-1.0)
    # Ties get average ranks: [1, 2, 2, 3] vs [1, 2, 3, 4] -> 0.9486832980505138 (textbook value).
    assert trust.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert trust.spearman(np.ones(10), x[:10]) is None


def test_block_correlation_of_an_error_map_with_itself(hr):
    err = np.abs(hr[0] - trust.degrade(hr, 4)[0].repeat(4, 0).repeat(4, 1))
    assert trust.uncertainty_error_correlation(err, err, block=16) == pytest.approx(1.0)
    noise = np.random.default_rng(1).random(err.shape)
    assert abs(trust.uncertainty_error_correlation(noise, err, block=16)) < 0.3
