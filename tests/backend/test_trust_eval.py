"""The trust metrics through the raster path (`evaluate_pair`, `lcmsr eval`): known answers on constructed
cases made from the bundled sample's real pixels, nodata left out, and the report's pictures."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmsr.metrics import trust
from lcmsr.metrics.evaluate import evaluate_pair, read_image

gdal = pytest.importorskip("osgeo.gdal")
Image = pytest.importorskip("PIL.Image")

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"


@pytest.fixture(scope="module")
def hr():
    return read_image(SAMPLE / "neon_hr.tif")            # [3, 512, 512] uint8, real NEON aerial pixels


def write(path, a, nodata=None, mask=None):
    """A GeoTIFF of ``a`` [C, H, W] (Byte for uint8, else Float32); ``mask`` [H, W] a per-dataset mask."""
    a = np.asarray(a)
    kind = gdal.GDT_Byte if a.dtype == np.uint8 else gdal.GDT_Float32
    ds = gdal.GetDriverByName("GTiff").Create(str(path), a.shape[2], a.shape[1], a.shape[0], kind)
    for i, band in enumerate(a, 1):
        ds.GetRasterBand(i).WriteArray(band)
        if nodata is not None:
            ds.GetRasterBand(i).SetNoDataValue(nodata)
    if mask is not None:
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().WriteArray(mask.astype(np.uint8) * 255)
    ds = None
    return path


def up(lr, s=4):
    return torch.nn.functional.interpolate(torch.from_numpy(np.asarray(lr, np.float64))[None], scale_factor=s,
                                           mode="bicubic", align_corners=False)[0].numpy()


def rotate(rg, degrees):
    """Every two-band vector turned by ``degrees``: a colour change of exactly that angle, any brightness."""
    t = np.radians(degrees)
    return np.stack([np.cos(t) * rg[0] - np.sin(t) * rg[1], np.sin(t) * rg[0] + np.cos(t) * rg[1]])


def test_an_exact_copy_is_consistent_and_keeps_every_colour(hr, tmp_path):
    lr = trust.degrade(hr, 4).astype(np.float32)
    write(tmp_path / "hr.tif", hr)
    write(tmp_path / "lr.tif", lr)
    r = evaluate_pair(tmp_path / "hr.tif", tmp_path / "hr.tif", None, lr=tmp_path / "lr.tif", lpips=False)
    assert r["scale"] == 4 and r["unit"] == "data units" and r["notes"] == []     # the LR file is Float32
    assert r["lr_mae"] < 1e-4 and r["lr_max"] < 1e-3          # float32 rounding of the LR file only
    assert r["sam_reference"] == 0.0 and r["psnr"] == float("inf")
    # The bundled LR is the same reduction rounded to bytes: half a grey level at most, a quarter on average.
    r = evaluate_pair(tmp_path / "hr.tif", None, None, lr=SAMPLE / "neon_lr.tif", lpips=False)
    assert 0.2 < r["lr_mae"] < 0.3 and r["lr_max"] <= 0.5 + 1e-6 and r["unit"] == "grey levels"


def test_a_shifted_result_is_inconsistent_with_its_input(hr, tmp_path):
    write(tmp_path / "lr.tif", trust.degrade(hr, 4).astype(np.float32))
    write(tmp_path / "shifted.tif", np.roll(hr, 8, axis=2))       # two LR pixels to the right
    r = evaluate_pair(tmp_path / "shifted.tif", None, 4, lr=tmp_path / "lr.tif")
    assert r["lr_mae"] > 5.0 and r["lr_max"] > 50.0
    assert r["lr_rmse"] > r["lr_mae"]
    # Streaming in blocks (here ones of 16 LR pixels cutting the image) is the whole-image definition.
    whole = trust.lr_consistency(np.roll(hr, 8, axis=2), read_image(tmp_path / "lr.tif"), 4)
    for key in ("mae", "rmse", "max"):
        assert r[f"lr_{key}"] == pytest.approx(whole[key], rel=1e-6)
    from lcmsr.metrics.evaluate import evaluate_trust

    small = evaluate_trust(tmp_path / "shifted.tif", 4, lr=tmp_path / "lr.tif", tile=16)
    assert small["lr_mae"] == pytest.approx(r["lr_mae"], rel=1e-9) and small["lr_max"] == r["lr_max"]


def test_colour_rotation_is_measured_against_the_right_image(hr, tmp_path):
    """An SR whose colours are the reference's turned by 10 degrees is 10 degrees from the reference; one whose
    colours are the bicubic-enlarged input's turned by 10 degrees is 10 degrees from the input.  Each is
    measurably off the other image, so an angle taken against the wrong image fails here."""
    rg = hr[:2].astype(np.float64)
    lr = trust.degrade(rg, 4)
    write(tmp_path / "hr.tif", rg.astype(np.float32))
    write(tmp_path / "lr.tif", lr.astype(np.float32))
    write(tmp_path / "rot_hr.tif", rotate(rg, 10).astype(np.float32))
    write(tmp_path / "rot_up.tif", rotate(up(lr.astype(np.float32)), 10).astype(np.float32))
    by_ref = evaluate_pair(tmp_path / "rot_hr.tif", tmp_path / "hr.tif", None, lr=tmp_path / "lr.tif", lpips=False)
    by_input = evaluate_pair(tmp_path / "rot_up.tif", tmp_path / "hr.tif", None, lr=tmp_path / "lr.tif",
                             lpips=False)
    assert by_ref["sam_reference"] == pytest.approx(10.0, abs=1e-3)
    assert by_input["sam_input"] == pytest.approx(10.0, abs=1e-3)
    assert abs(by_ref["sam_input"] - 10.0) > 0.1 and abs(by_input["sam_reference"] - 10.0) > 0.1
    # Brightness is not colour: SR = 1.3 x the enlarged input has no angle to it, and one band has none at all.
    write(tmp_path / "bright.tif", (1.3 * up(lr.astype(np.float32))).astype(np.float32))
    bright = evaluate_pair(tmp_path / "bright.tif", None, None, lr=tmp_path / "lr.tif")
    assert bright["sam_input"] == pytest.approx(0.0, abs=1e-3)
    one = evaluate_pair(tmp_path / "bright.tif", None, None, bands=[1], lr=tmp_path / "lr.tif")
    assert one["sam_input"] is None and any("two bands" in n for n in one["notes"])


def test_nodata_with_wild_values_changes_no_figure(hr, tmp_path):
    """A hole marked nodata (by a nodata value, or by a mask over the true pixels) counts nowhere, nor does
    what it reaches: the figures are the same whatever the hole holds.  Unmarked, the wild values would
    change every figure."""
    sr = np.roll(hr, 8, axis=2).astype(np.float32)               # a result with real, non-zero errors
    lr = trust.degrade(hr, 4).astype(np.float32)
    ref = hr.astype(np.float32)
    unc = np.abs(sr - ref).mean(0, keepdims=True) + np.random.default_rng(0).random((1, 512, 512)).astype(np.float32)
    hole = np.zeros((512, 512), bool)
    hole[100:180, 260:330] = True                                # SR pixels
    lr_hole = np.zeros((128, 128), bool)
    lr_hole[90:110, 10:40] = True                                # LR pixels, elsewhere
    ref_hole = np.zeros((512, 512), bool)
    ref_hole[400:450, 30:90] = True

    def wild(a, where, value=-9999.0):
        a = a.copy()
        a[:, where] = value
        return a

    write(tmp_path / "lr_nd.tif", wild(lr, lr_hole), nodata=-9999)
    write(tmp_path / "lr_mask.tif", lr, mask=~lr_hole)
    write(tmp_path / "lr_wild.tif", wild(lr, lr_hole))
    write(tmp_path / "sr_nd.tif", wild(sr, hole), nodata=-9999)
    write(tmp_path / "sr_mask.tif", sr, mask=~hole)
    write(tmp_path / "sr_wild.tif", wild(sr, hole))
    write(tmp_path / "ref_nd.tif", wild(ref, ref_hole, 1e6), nodata=1e6)
    write(tmp_path / "ref_mask.tif", ref, mask=~ref_hole)
    write(tmp_path / "ref_wild.tif", wild(ref, ref_hole, 1e6))
    write(tmp_path / "unc_nd.tif", wild(unc, hole, 1e6), nodata=1e6)
    write(tmp_path / "unc_mask.tif", unc, mask=~hole)
    write(tmp_path / "unc_wild.tif", wild(unc, hole, 1e6))
    keys = ("lr_mae", "lr_rmse", "lr_max", "sam_input", "sam_reference", "uncertainty_spearman")

    def figures(kind):
        r = evaluate_pair(tmp_path / f"sr_{kind}.tif", tmp_path / f"ref_{kind}.tif", None,
                          lr=tmp_path / f"lr_{kind}.tif", uncertainty=tmp_path / f"unc_{kind}.tif", lpips=False)
        return {k: r[k] for k in keys + ("psnr",)}

    by_value, by_mask, unmarked = figures("nd"), figures("mask"), figures("wild")
    for k in keys + ("psnr",):
        assert by_value[k] == pytest.approx(by_mask[k], rel=1e-9, abs=1e-12), k
        assert unmarked[k] != pytest.approx(by_value[k], rel=1e-3), k
    assert by_value["lr_max"] < 300 and by_value["uncertainty_spearman"] > 0.9
    # What is left out is what the hole reaches, by the definition on the true pixels: an LR pixel whose
    # reduction reads the SR hole (its footprint, LR rows 25-44 and columns 65-82, and the 2 pixels the
    # antialiased bicubic reaches beyond), an SR pixel whose bicubic reads the LR hole (2 LR pixels beyond it).
    lr_ok = ~lr_hole
    lr_ok[23:47, 63:85] = False
    expect = trust.lr_consistency(sr, lr, 4, valid=lr_ok)
    assert by_value["lr_mae"] == pytest.approx(expect["mae"], rel=1e-9)
    assert by_value["lr_max"] == pytest.approx(expect["max"], rel=1e-9)
    sr_ok = ~hole
    sr_ok[88 * 4:112 * 4, 8 * 4:42 * 4] = False
    assert by_value["sam_input"] == pytest.approx(trust.spectral_angle(sr, up(lr), valid=sr_ok), rel=1e-6)
    # The correlation counts only the 16x16 blocks valid throughout in SR, reference and uncertainty.
    err = np.abs(sr.astype(np.float64) - ref).mean(0)
    expect = trust.uncertainty_error_correlation(unc[0], err, 16, valid=~hole & ~ref_hole)
    assert by_value["uncertainty_spearman"] == pytest.approx(expect, abs=1e-9)


def test_uncertainty_correlation_is_the_block_spearman_of_the_definition(hr, tmp_path):
    sr = np.roll(hr, 4, axis=1).astype(np.float32)
    err = np.abs(sr.astype(np.float64) - hr).mean(0)
    noise = np.random.default_rng(3).random(err.shape)
    write(tmp_path / "sr.tif", sr)
    write(tmp_path / "hr.tif", hr.astype(np.float32))
    for name, u, expect in (("err", err * 2 + 1, 1.0), ("noise", noise, None), ("mixed", err + 20 * noise, None)):
        write(tmp_path / f"u_{name}.tif", u[None].astype(np.float32))
        r = evaluate_pair(tmp_path / "sr.tif", tmp_path / "hr.tif", 4, uncertainty=tmp_path / f"u_{name}.tif",
                          lpips=False)
        definition = trust.uncertainty_error_correlation(u.astype(np.float32), err, 16)
        assert r["uncertainty_spearman"] == pytest.approx(definition, abs=1e-9)
        if expect is not None:
            assert r["uncertainty_spearman"] == pytest.approx(expect)
    assert abs(evaluate_pair(tmp_path / "sr.tif", tmp_path / "hr.tif", 4, uncertainty=tmp_path / "u_noise.tif",
                             lpips=False)["uncertainty_spearman"]) < 0.2
    # Without a reference there is no error to correlate with: said, not guessed.
    write(tmp_path / "lr.tif", trust.degrade(hr, 4).astype(np.float32))
    r = evaluate_pair(tmp_path / "sr.tif", None, None, lr=tmp_path / "lr.tif", uncertainty=tmp_path / "u_err.tif")
    assert r["uncertainty_spearman"] is None and any("needs a reference" in n for n in r["notes"])


def _embedded(html: str) -> dict:
    """alt name -> PIL image of every picture embedded in the report."""
    found = re.findall(r'<img alt="([^"]+)" width="(\d+)" height="(\d+)" src="data:image/png;base64,([^"]+)"', html)
    out = {}
    for name, w, h, data in found:
        raw = base64.b64decode(data)
        img = Image.open(io.BytesIO(raw))
        img.load()                                               # a broken PNG raises here
        out[name] = (img, raw, int(w), int(h))
    return out


def test_report_pictures_without_and_with_a_reference(hr, tmp_path, capsys):
    from lcmsr.cli import main

    sr = np.roll(hr, 4, axis=2)
    sr[:, :, :200] = hr[:, :, :200]                                # the left part exact
    write(tmp_path / "sr.tif", sr)
    lr = SAMPLE / "neon_lr.tif"
    unc = np.abs(sr.astype(np.float32) - hr).mean(0, keepdims=True)
    write(tmp_path / "unc.tif", unc)
    # No reference: LR-consistency and the angle to the input, and a plain word about the rest.
    js, page = tmp_path / "noref.json", tmp_path / "noref.html"
    assert main(["eval", "--sr", str(tmp_path / "sr.tif"), "--lr", str(lr), "--json", str(js),
                 "--html", str(page), "--device", "cpu"]) == 0
    out = json.loads(js.read_text())
    row = out["results"]["sr.tif"]
    assert out["scale"] == 4 and row["psnr"] is None and row["ssim"] is None and row["lpips"] is None
    assert row["lr_mae"] > 1.0 and row["sam_input"] > 0 and row["sam_reference"] is None
    stdout = capsys.readouterr().out
    assert "note: PSNR, SSIM, LPIPS" in stdout and "need a reference" in stdout
    text = page.read_text(encoding="utf-8")
    assert "need a reference" in text
    pics = _embedded(text)
    assert set(pics) == {"crop_bicubic", "crop_sr"}
    for name, (img, raw, w, h) in pics.items():
        assert img.format == "PNG" and img.size == (128, 128) and (w, h) == (256, 256)   # shown twice as large
        assert (tmp_path / f"noref_{name}.png").read_bytes() == raw                    # and written beside
    # With the reference and the uncertainty: the reference crop, the error crop and maps, the correlation.
    page = tmp_path / "full.html"
    assert main(["eval", "--sr", str(tmp_path / "sr.tif"), "--hr", str(SAMPLE / "neon_hr.tif"), "--lr", str(lr),
                 "--uncertainty", str(tmp_path / "unc.tif"), "--no-lpips", "--json", str(js), "--html", str(page),
                 "--device", "cpu"]) == 0
    row = json.loads(js.read_text())["results"]["sr.tif"]
    assert row["uncertainty_spearman"] == pytest.approx(1.0) and row["psnr"] > 5
    text = page.read_text(encoding="utf-8")
    pics = _embedded(text)
    assert set(pics) == {"crop_bicubic", "crop_sr", "crop_reference", "crop_error", "error_map", "uncertainty_map"}
    assert pics["error_map"][0].size[0] == 512 and pics["uncertainty_map"][0].size[0] == 512
    assert pics["error_map"][0].size[1] > 512                     # the colour bar and its numbers beneath
    # The crops are the same place of each image: the note gives it, and 8-bit crops are the pixels themselves.
    x, y = map(int, re.search(r"128x128 pixels at x=(\d+) y=(\d+)", text).groups())
    crop = lambda a: np.moveaxis(a[:3, y:y + 128, x:x + 128], 0, -1)       # noqa: E731
    assert np.array_equal(np.asarray(pics["crop_sr"][0]), crop(sr))
    assert np.array_equal(np.asarray(pics["crop_reference"][0]), crop(hr))
    assert np.abs(np.asarray(pics["crop_bicubic"][0]) - np.clip(crop(up(read_image(lr))), 0, 255)).max() <= 0.5
    # The most detailed place: no 128-square on the 16-pixel grid has more luminance variance in the reference.
    lum = hr.astype(np.float64).mean(0)
    best = max(lum[j:j + 128, i:i + 128].var() for j in range(0, 385, 16) for i in range(0, 385, 16))
    assert lum[y:y + 128, x:x + 128].var() == pytest.approx(best)
    # Error heat map: where SR equals the reference it is the ramp's zero colour.
    same = np.all(sr == hr, axis=0)
    emap = np.asarray(pics["error_map"][0])[:512]
    assert same.sum() > 100 and (emap[same] == (0, 0, 4)).all() and not (emap[~same] == (0, 0, 4)).all()


def test_eval_folders_without_a_reference_pair_sr_with_lr_by_name(hr, tmp_path, capsys):
    from lcmsr.cli import main

    for d in ("sr", "lr"):
        (tmp_path / d).mkdir()
    lr = read_image(SAMPLE / "neon_lr.tif")
    write(tmp_path / "lr" / "a.tif", lr)
    write(tmp_path / "lr" / "b.tif", np.ascontiguousarray(lr[:, ::-1]))
    write(tmp_path / "sr" / "a.tif", hr)                                     # consistent within rounding
    write(tmp_path / "sr" / "b.tif", np.ascontiguousarray(np.roll(hr, 8, axis=2)[:, ::-1]))   # shifted
    js, page = tmp_path / "out.json", tmp_path / "folders.html"
    assert main(["eval", "--sr", str(tmp_path / "sr"), "--lr", str(tmp_path / "lr"), "--json", str(js),
                 "--html", str(page), "--device", "cpu"]) == 0
    out = json.loads(js.read_text())
    rows = out["results"]
    assert rows["a"]["lr_mae"] < 0.3 and rows["b"]["lr_mae"] > 5 and out["lr_unit"] == "grey levels"
    assert rows["mean"]["lr_mae"] == pytest.approx((rows["a"]["lr_mae"] + rows["b"]["lr_mae"]) / 2)
    assert rows["mean"]["psnr"] is None and any("need a reference" in n for n in out["notes"])
    text = page.read_text(encoding="utf-8")
    assert "<h2>a</h2>" in text and "<h2>b</h2>" in text and text.count("data:image/png") == 4
    assert (tmp_path / "folders_b_crop_sr.png").is_file()
    (tmp_path / "lr" / "b.tif").unlink()
    assert main(["eval", "--sr", str(tmp_path / "sr"), "--lr", str(tmp_path / "lr"), "--hr", str(tmp_path / "sr"),
                 "--device", "cpu", "--no-lpips"]) == 2
    assert "has no image named b" in capsys.readouterr().err


def test_eval_of_the_shipped_model_makes_an_uncertainty_map_that_points_at_its_errors(tmp_path):
    """`lcmsr eval --model M --hr HR --samples K`: the model's own uncertainty raster is made, drawn and
    scored; on the real sample the shipped aerial model's spread follows its error (the issue's 0.3 bar)."""
    import json

    from lcmsr.cli import main

    model = Path(__file__).resolve().parents[2] / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors"
    js, html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["eval", "--model", str(model), "--hr", str(SAMPLE / "neon_hr.tif"), "--samples", "2",
                 "--no-lpips", "--device", "cpu", "--work-dir", str(tmp_path / "work"),
                 "--json", str(js), "--html", str(html)]) == 0
    row = next(iter(json.loads(js.read_text())["results"].values()))
    assert row["uncertainty_spearman"] > 0.3
    assert (tmp_path / "work" / "neon_hr" / "uncertainty.tif").is_file()
    assert 'alt="uncertainty_map"' in html.read_text(encoding="utf-8")
    assert main(["eval", "--sr", str(SAMPLE / "neon_hr.tif"), "--hr", str(SAMPLE / "neon_hr.tif"),
                 "--samples", "2"]) == 2                        # --samples is for --model
