"""The model's domain: pixel size in metres, band roles, the guard, the automatic choice, 16-bit data.

Real pixels throughout: the committed NEON sample (0.4 m), and a Sentinel-2 / Landsat layout made
from those pixels where the behaviour depends only on the metadata (band names, CRS, file name).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, osr

from lcmsr import domain as dom
from lcmsr.config import tiny_config
from lcmsr.model import build_model
from lcmsr.raster.facts import band_ranges, input_facts, pixel_size_m
from lcmsr.raster.pipeline import SROptions, superresolve
from lcmsr.weights import ModelFileError, content_digest, load_model, read_info, save_model

from conftest import REPO
from test_raster_standin import read_raster, write_raster

# On the held-out Sentinel-2 crop the shipped satellite model measured +0.54 dB (faithful) and +0.42 dB
# (one step) over bicubic; an untrained model (exactly bicubic) or a wrong stretch scores <= 0.
MIN_FAITHFUL_GAIN_DB, MIN_ONE_STEP_GAIN_DB = 0.25, 0.2
SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"
AERIAL = REPO / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors"
SATELLITE = REPO / "resources" / "models" / "lcmsr_x4_satellite_bandwise.safetensors"
FAST = SROptions(tile=32, overlap=8, batch=4)


def sample_pixels() -> np.ndarray:
    return read_raster(SAMPLE_LR)  # [3, 128, 128] uint8, red green blue


def srs_of(epsg: int):
    s = osr.SpatialReference()
    s.ImportFromEPSG(epsg)
    return s


def tiny_model_file(path, preset: str | None, seed: int = 0, bands: int | None = None) -> str:
    domain = dom.PRESETS[preset] if preset else dom.Domain()
    b = bands or (1 if domain.bandwise else 3)
    torch.manual_seed(seed)
    model = build_model(tiny_config(scale=4, bands=b))
    info = copy.deepcopy(model.info)
    info.domain = copy.deepcopy(domain)
    if domain.bandwise:
        info.data_type = "Float32"
        info.normalization = type(info.normalization)([0.0], [1.0])
    return str(save_model(path, model, info))


# ---------------------------------------------------------------- pixel size in metres

def test_pixel_size_of_a_projected_raster_is_its_pixel_in_metres():
    f = input_facts(str(SAMPLE_LR))
    assert f.gsd_m == pytest.approx(0.4, rel=1e-9) and "projected" in f.gsd_how


def test_pixel_size_of_a_projected_crs_in_feet_is_converted():
    gt = (2000000.0, 100.0, 0.0, 500000.0, 0.0, -100.0)   # 100 US survey feet
    g, how = pixel_size_m(gt, srs_of(2227), 10, 10)        # NAD83 / California zone 3 (ftUS)
    assert g == pytest.approx(30.48, rel=1e-4) and "foot" in how.lower()


@pytest.mark.parametrize("lat, expect_m", [(0.0, 10.0), (60.0, 10.0)])
def test_pixel_size_of_a_geographic_raster_is_measured_at_its_latitude(tmp_path, lat, expect_m):
    # 10 m squares expressed in degrees at that latitude: ~9e-5 deg north-south, more east-west up north.
    ew, ns = 111412.84 * np.cos(np.radians(lat)) - 93.5 * np.cos(3 * np.radians(lat)), 111132.954 - 559.822 * np.cos(
        2 * np.radians(lat)) + 1.175 * np.cos(4 * np.radians(lat))
    dx, dy = expect_m / ew, expect_m / ns
    h = 128
    src = write_raster(tmp_path / "geo.tif", sample_pixels(), epsg=4326,
                       gt=(10.0, dx, 0.0, lat + h * dy / 2, 0.0, -dy))
    f = input_facts(src)
    assert f.gsd_m == pytest.approx(expect_m, rel=1e-3) and "geographic" in f.gsd_how


def test_web_mercator_pixels_are_measured_on_the_ground(tmp_path):
    # At 60 deg N a Web Mercator map unit is half a metre on the ground: 20-unit pixels are 10 m.
    y60 = 6378137.0 * np.log(np.tan(np.pi / 4 + np.radians(60.0) / 2))
    src = write_raster(tmp_path / "merc.tif", sample_pixels(), epsg=3857, gt=(1000000.0, 20.0, 0.0, y60 + 64 * 20.0, 0.0, -20.0))
    f = input_facts(src)
    assert f.gsd_m == pytest.approx(10.0, rel=0.01) and "on the ground" in f.gsd_how


def test_pixel_size_without_a_crs_is_unknown(tmp_path):
    src = write_raster(tmp_path / "plain.tif", sample_pixels(), epsg=None, gt=None)
    f = input_facts(src)
    assert f.gsd_m is None and "no coordinate reference system" in f.gsd_how


# ---------------------------------------------------------------- band roles

def _with_names(tmp_path, name: str, order: list[int], descriptions: list[str]) -> str:
    """The sample's pixels laid out as a sensor product: bands in ``order`` (0 red, 1 green, 2 blue;
    -1 a copy of red standing in for another band), descriptions as the product names them."""
    px = sample_pixels().astype(np.uint16) * 40
    data = np.stack([px[i] if i >= 0 else px[0] // 2 for i in order])
    path = write_raster(tmp_path / name, data, data_type=gdal.GDT_UInt16, epsg=32633,
                        gt=(330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0), options=("PHOTOMETRIC=MINISBLACK",))
    ds = gdal.Open(path, gdal.GA_Update)
    for i, d in enumerate(descriptions):
        ds.GetRasterBand(i + 1).SetDescription(d)
    ds = None
    return path


def test_sentinel2_band_names_give_roles(tmp_path):
    src = _with_names(tmp_path, "S2B_MSIL1C_T33UUU_stack.tif", [2, 1, 0, -1], ["B02", "B03", "B04", "B08"])
    f = input_facts(src)
    assert f.sensor == "sentinel-2" and f.roles == ["blue", "green", "red", "nir"]


def test_landsat8_and_landsat7_band_numbers_mean_different_things(tmp_path):
    l8 = input_facts(_with_names(tmp_path, "LC08_L2SP_224078_stack.tif", [-1, 2, 1, 0, -1, -1, -1],
                                 [f"SR_B{i}" for i in range(1, 8)]))
    assert l8.sensor == "landsat-8/9"
    assert l8.roles == ["coastal", "blue", "green", "red", "nir", "swir1", "swir2"]
    l7 = input_facts(_with_names(tmp_path, "LE07_L2SP_225078_stack.tif", [2, 1, 0, -1, -1, -1],
                                 ["B1", "B2", "B3", "B4", "B5", "B7"]))
    assert l7.sensor == "landsat-4/5/7"
    assert l7.roles == ["blue", "green", "red", "nir", "swir1", "swir2"]
    # Unnamed bands in a Landsat 7 file: the usual 6-band stack (1-5, 7).
    bare = input_facts(_with_names(tmp_path, "LE07_stack.tif", [2, 1, 0, -1, -1, -1], [""] * 6))
    assert bare.roles == ["blue", "green", "red", "nir", "swir1", "swir2"] and "stack" in bare.roles_how


def test_b4_without_a_sensor_is_not_guessed():
    roles, _ = dom.band_roles(["B2", "B3", "B4"], ["Gray", "Undefined", "Undefined"], None)
    assert roles == [None, None, None]


@pytest.mark.parametrize("name, order, descriptions, expect", [
    ("S2B_T33UUU_stack.tif", [2, 1, 0, -1], ["B02", "B03", "B04", "B08"], [3, 2, 1]),
    ("LC08_L1TP_224078_stack.tif", [-1, 2, 1, 0, -1, -1, -1], [f"B{i}" for i in range(1, 8)], [4, 3, 2]),
    ("LE07_L1TP_225078_stack.tif", [2, 1, 0, -1, -1, -1], [""] * 6, [3, 2, 1]),
])
def test_rgb_model_takes_red_green_blue_by_role(tmp_path, name, order, descriptions, expect):
    src = _with_names(tmp_path, name, order, descriptions)
    bands, why, _ = dom.plan_bands(dom.PRESETS["aerial-rgb"], 3, input_facts(src), None)
    assert bands == expect and "matched by role" in why


def test_missing_role_is_named_in_the_error(tmp_path):
    src = _with_names(tmp_path, "S2B_T33UUU_nored.tif", [2, 1, -1], ["B02", "B03", "B08"])
    with pytest.raises(dom.DomainError, match=r"no red band.*1 blue, 2 green, 3 nir.*--bands"):
        dom.plan_bands(dom.PRESETS["aerial-rgb"], 3, input_facts(src), None)


def test_bandwise_model_leaves_out_thermal_unless_asked():
    facts = dom.InputFacts("LE07.tif", 8, 8, 7, "Byte", 30.0, "projected", "landsat-4/5/7",
                           ["blue", "green", "red", "nir", "swir1", "thermal", "swir2"], "names")
    bands, why, _ = dom.plan_bands(dom.PRESETS["satellite-bandwise"], 1, facts, None)
    assert bands == [1, 2, 3, 4, 5, 7] and "6 (thermal) left out" in why
    bands, _, warnings = dom.plan_bands(dom.PRESETS["satellite-bandwise"], 1, facts, [6])
    assert bands == [6] and "thermal" in warnings[0]


# ---------------------------------------------------------------- the guard

def _coarse_copy(tmp_path, gsd: float) -> str:
    """The sample's pixels georeferenced as if each were ``gsd`` metres."""
    return write_raster(tmp_path / f"as_{gsd:g}m.tif", sample_pixels(), epsg=32612,
                        gt=(528000.0, gsd, 0.0, 4978000.0, 0.0, -gsd), options=("PHOTOMETRIC=RGB",))


def test_aerial_model_stops_on_a_40m_raster_naming_both_sides(tmp_path):
    src = _coarse_copy(tmp_path, 40.0)
    with pytest.raises(dom.DomainError, match=r"input pixel 40 m, model made for 0\.2-0\.8 m"):
        superresolve(src, tmp_path / "out.tif", str(AERIAL), FAST)
    assert not (tmp_path / "out.tif").exists()


def test_override_runs_and_still_warns(tmp_path):
    src = _coarse_copy(tmp_path, 40.0)
    res = superresolve(src, tmp_path / "out.tif", str(AERIAL), SROptions(tile=64, overlap=8, ignore_domain=True))
    assert (tmp_path / "out.tif").exists()
    assert any("input pixel 40 m, model made for 0.2-0.8 m" in w and "overridden" in w for w in res.warnings)


def test_aerial_model_refuses_16bit_data(tmp_path):
    src = write_raster(tmp_path / "u16.tif", sample_pixels().astype(np.uint16) * 100, data_type=gdal.GDT_UInt16,
                       epsg=32612, gt=(528000.0, 0.4, 0.0, 4978000.0, 0.0, -0.4), options=("PHOTOMETRIC=RGB",))
    with pytest.raises(dom.DomainError, match="input data type UInt16, model made for Byte"):
        superresolve(src, tmp_path / "out.tif", str(AERIAL), FAST)


def test_model_of_unknown_domain_runs_with_a_warning(tmp_path):
    model = tiny_model_file(tmp_path / "legacy.safetensors", None)
    res = superresolve(str(SAMPLE_LR), tmp_path / "out.tif", model, FAST)
    assert any("domain is unknown" in w for w in res.warnings)


# ---------------------------------------------------------------- automatic choice

def test_choice_prefers_the_model_whose_pixel_range_holds_the_input(tmp_path):
    aerial = tiny_model_file(tmp_path / "a.safetensors", "aerial-rgb")
    sat = tiny_model_file(tmp_path / "s.safetensors", "satellite-bandwise")
    cands = [(aerial, read_info(aerial)), (sat, read_info(sat))]
    for gsd, want in ((0.4, aerial), (10.0, sat), (40.0, sat)):
        f = input_facts(_coarse_copy(tmp_path, gsd))
        path, _, why = dom.choose_model(cands, f)
        assert path == want, why
    # No CRS: chosen by bands and data type, and it says so.
    f = input_facts(write_raster(tmp_path / "nocrs.tif", sample_pixels(), epsg=None, gt=None,
                                 options=("PHOTOMETRIC=RGB",)))
    path, _, why = dom.choose_model(cands, f)
    assert path == aerial and "pixel size unknown" in why


def test_no_fitting_model_lists_every_model_and_its_domain(tmp_path):
    aerial = tiny_model_file(tmp_path / "a.safetensors", "aerial-rgb")
    f = input_facts(_coarse_copy(tmp_path, 300.0))
    with pytest.raises(dom.DomainError) as err:
        dom.choose_model([(aerial, read_info(aerial))], f)
    assert "a.safetensors" in str(err.value) and "input pixel 300 m, model made for 0.2-0.8 m" in str(err.value)


@pytest.mark.skipif(not SATELLITE.exists(), reason="the satellite model is not shipped yet")
@pytest.mark.parametrize("gsd", [10.0, 40.0])
def test_bundled_models_give_satellite_rasters_the_satellite_model(tmp_path, gsd):
    from lcmsr.raster.pipeline import choose_model_for
    from lcmsr.progress import Progress

    src = _with_names(tmp_path, f"S2B_T33UUU_{gsd:g}m.tif", [2, 1, 0, -1], ["B02", "B03", "B04", "B08"])
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetGeoTransform((330000.0, gsd, 0.0, 5822040.0, 0.0, -gsd))
    ds = None
    assert read_info(choose_model_for(src, SROptions(), Progress())).domain.family == "satellite"


# ---------------------------------------------------------------- 16-bit data

def test_uint16_round_trip_keeps_type_range_and_nodata(tmp_path):
    """A band-wise model (untrained: exactly bicubic) on UInt16 reflectance: the stretch maps it in and
    back out, so the output is bicubic in the input's own values; ringing below 1 never becomes nodata 0."""
    model = tiny_model_file(tmp_path / "bw.safetensors", "satellite-bandwise")
    px = sample_pixels().astype(np.float64)
    data = np.stack([px[2], px[1], px[0], px[1]]) * 40 + 300           # 300 .. 10500, like S2 L1C
    data[:, 40:60, 40:60] = 1                                          # a dark patch next to nodata
    data[:, :16, :16] = 0                                              # nodata corner
    src = write_raster(tmp_path / "S2B_T33UUU_u16.tif", data.astype(np.uint16), data_type=gdal.GDT_UInt16,
                       epsg=32633, gt=(330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0), nodata=0)
    ds = gdal.Open(src, gdal.GA_Update)
    for i, d in enumerate(["B02", "B03", "B04", "B08"]):
        ds.GetRasterBand(i + 1).SetDescription(d)
    ds = None
    res = superresolve(src, tmp_path / "out.tif", model, FAST)
    out = gdal.Open(res.path)
    assert out.GetRasterBand(1).DataType == gdal.GDT_UInt16 and out.RasterCount == 4
    assert [out.GetRasterBand(i + 1).GetDescription() for i in range(4)] == ["B02", "B03", "B04", "B08"]
    y = read_raster(res.path).astype(np.float64)
    valid_in = np.kron(data[0] != 0, np.ones((4, 4))).astype(bool)
    assert (y[:, valid_in] >= 1).all()                 # valid stays valid (ringing clamped, not nodata)
    assert (y[:, ~valid_in] == 0).all()                # nodata stays nodata
    # Bicubic in the input's own value range: the means agree within 1 %.
    for b in range(4):
        assert y[b][valid_in].mean() == pytest.approx(data[b][data[b] != 0].mean(), rel=0.01)


def test_band_ranges_ignore_nodata(tmp_path):
    data = np.full((1, 64, 64), 5000, np.uint16)
    data[0, :, :32] = 0
    data[0, 0, 40:] = 6000
    src = write_raster(tmp_path / "r.tif", data, data_type=gdal.GDT_UInt16, nodata=0)
    (lo, hi, mn, mx), = band_ranges(src, [1])
    assert mn == 5000 and mx == 6000 and lo == 5000


# ---------------------------------------------------------------- the file

def test_shipped_models_carry_the_domain_of_their_recipe():
    info = read_info(AERIAL)
    assert info.format_version == 2 and info.domain == dom.PRESETS["aerial-rgb"]
    if SATELLITE.exists():
        assert read_info(SATELLITE).domain == dom.PRESETS["satellite-bandwise"]


def test_format1_file_still_loads_and_says_its_domain_is_unknown(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tiny_model_file(tmp_path / "v2.safetensors", "aerial-rgb")
    tensors = load_file(path)
    meta = read_info(path).to_dict()
    meta.pop("domain")
    meta["format_version"] = 1
    js = json.dumps(meta)
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"lcmsr": js,
                                                                  "lcmsr_sha256": content_digest(js, tensors)})
    model = load_model(tmp_path / "v1.safetensors")
    assert model.info.format_version == 1 and not model.info.domain.known


@pytest.mark.parametrize("field, value", [
    ("family", "\x1b[31mpwn"), ("lr_gsd_m", [1e999, 2.0]), ("lr_gsd_m", [5.0, 1.0]), ("band_roles", ["red"] * 5),
    ("data_types", ["Complex"]), ("bandwise", "yes"), ("band_roles", "red"),
])
def test_crafted_domain_metadata_is_refused_in_one_line(tmp_path, field, value):
    from safetensors.torch import load_file, save_file

    path = tiny_model_file(tmp_path / "ok.safetensors", "aerial-rgb")
    tensors = load_file(path)
    meta = read_info(path).to_dict()
    meta["domain"][field] = value
    js = json.dumps(meta)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"lcmsr": js, "lcmsr_sha256": content_digest(js, tensors)})
    with pytest.raises(ModelFileError) as err:
        read_info(bad)
    assert "\x1b" not in str(err.value) and "\n" not in str(err.value) and "domain" in str(err.value)


def test_fp16_storage_halves_the_file_and_keeps_the_output(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(scale=4, bands=3))
    with torch.no_grad():   # a non-trivial decoder tail, so the output depends on every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    a = save_model(tmp_path / "a.safetensors", model)
    b = save_model(tmp_path / "b.safetensors", model, storage="fp16")
    assert os.path.getsize(b) < 0.6 * os.path.getsize(a)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    ya = load_model(a).sr(x, sampler="faithful")
    yb = load_model(b).sr(x, sampler="faithful")
    assert (ya - yb).abs().max() < 2e-2 and (ya - yb).abs().mean() < 2e-3


# ---------------------------------------------------------------- the command line

def test_cli_without_model_chooses_and_with_override_runs(tmp_path, capsys):
    from lcmsr.cli import main

    assert main(["sr", str(SAMPLE_LR), str(tmp_path / "auto.tif"), "--quiet", "--tile", "64", "--overlap", "8"]) == 0
    err = capsys.readouterr().err
    assert f"chose {AERIAL.name} (aerial)" in err, err
    coarse = _coarse_copy(tmp_path, 300.0)
    assert main(["sr", coarse, str(tmp_path / "no.tif"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no model fits" in err and AERIAL.name in err and "input pixel 300 m" in err
    assert not (tmp_path / "no.tif").exists()
    assert main(["sr", coarse, str(tmp_path / "yes.tif"), "--model", str(AERIAL), "--ignore-domain",
                 "--sampler", "faithful", "--quiet", "--tile", "64", "--overlap", "8"]) == 0
    assert "overridden" in capsys.readouterr().err and (tmp_path / "yes.tif").exists()


def test_info_shows_the_domain(capsys):
    from lcmsr.cli import main

    assert main(["info", str(AERIAL)]) == 0
    out = capsys.readouterr().out
    assert "domain          aerial" in out and "band roles      red, green, blue" in out
    assert "input (LR) 0.2-0.8 m, output (HR) 0.05-0.2 m" in out


S2_FIXTURE = REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"


def test_a_real_sentinel2_crop_is_read_as_10m_blue_green_red_nir():
    f = input_facts(str(S2_FIXTURE))
    assert f.gsd_m == pytest.approx(10.0) and f.sensor == "sentinel-2" and f.data_type == "UInt16"
    assert f.roles == ["blue", "green", "red", "nir"]
    bands, _, _ = dom.plan_bands(dom.PRESETS["aerial-rgb"], 3, f, None)
    assert bands == [3, 2, 1]
    bands, _, _ = dom.plan_bands(dom.PRESETS["satellite-bandwise"], 1, f, None)
    assert bands == [1, 2, 3, 4]


def _stretched_psnr(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """PSNR with each band stretched by the reference's 1-99 % range (the model card's measure)."""
    from lcmsr.metrics.psnr_ssim import psnr

    lo = np.percentile(hr, 1, axis=(1, 2))[:, None, None]
    hi = np.percentile(hr, 99, axis=(1, 2))[:, None, None]
    a, b = (sr - lo) / (hi - lo), (hr - lo) / (hi - lo)
    return psnr(torch.from_numpy(a)[None], torch.from_numpy(b)[None], 1.0, border=border)


@pytest.mark.skipif(not SATELLITE.exists(), reason="the satellite model is not shipped yet")
def test_shipped_satellite_model_beats_bicubic_on_held_out_sentinel2_pixels(tmp_path):
    """The held-out 10 m Sentinel-2 crop degraded to 40 m, no model named: the satellite model is
    chosen, and on real pixels its faithful and one-step outputs are closer to the 10 m truth than
    bicubic, in the input's UInt16 values (a wrong file shipped, or the stretch or the band-wise
    folding wired wrong, fails this)."""
    from lcmsr.ops import upsample_bicubic
    from lcmsr.raster.degrade import degrade

    lr = tmp_path / "s2_40m.tif"
    degrade(str(S2_FIXTURE), str(lr), 4)
    hr = read_raster(S2_FIXTURE).astype(np.float64)
    bic = upsample_bicubic(torch.from_numpy(read_raster(lr).astype(np.float64))[None], 4)[0].numpy()
    base = _stretched_psnr(bic, hr)
    gains = {}
    for sampler in ("faithful", "consistency"):
        res = superresolve(str(lr), tmp_path / f"{sampler}.tif", None, SROptions(sampler=sampler, tile=64,
                                                                                 overlap=8))
        # The band-wise model or the joint R,G,B,NIR one (the fixture's bands are named): every band is used.
        assert read_info(res.model).domain.family == "satellite" and sorted(res.bands) == [1, 2, 3, 4]
        out = gdal.Open(res.path)
        assert out.GetRasterBand(1).DataType == gdal.GDT_UInt16
        assert out.GetGeoTransform()[1] == pytest.approx(10.0)
        gains[sampler] = _stretched_psnr(read_raster(res.path).astype(np.float64), hr) - base
    assert gains["faithful"] >= MIN_FAITHFUL_GAIN_DB and gains["consistency"] >= MIN_ONE_STEP_GAIN_DB, gains


# ---------------------------------------------------------------- the joint R,G,B,NIR model and band roles

def _s2_stack(tmp_path, name: str, descriptions: list[str]) -> str:
    """A 4-band UInt16 10 m stack with real pixels laid out red, green, blue, nir (the sample's red stands in
    for nir), band descriptions as given (empty: none)."""
    return _with_names(tmp_path, name, [0, 1, 2, -1], descriptions)


def _joint_and_bandwise(tmp_path):
    joint = tiny_model_file(tmp_path / "joint.safetensors", "satellite-rgbn", bands=4)
    sat = tiny_model_file(tmp_path / "bandwise.safetensors", "satellite-bandwise")
    return joint, sat, [(joint, read_info(joint)), (sat, read_info(sat))]


def test_joint_model_takes_named_bands_by_role(tmp_path):
    joint, _, cands = _joint_and_bandwise(tmp_path)
    f = input_facts(_s2_stack(tmp_path, "S2B_named.tif", ["B04", "B03", "B02", "B08"]))
    path, _, why = dom.choose_model(cands, f)
    assert path == joint, why
    bands, _, warnings = dom.plan_bands(dom.PRESETS["satellite-rgbn"], 4, f, None)
    assert bands == [1, 2, 3, 4] and not warnings


def test_guessed_stack_order_goes_to_the_bandwise_model_and_says_why(tmp_path):
    """A 4-band Sentinel-2 stack without band names is only guessed to be blue, green, red, nir (the usual stack);
    here it is really red, green, blue, nir.  The joint model would swap red and blue; the band-wise one cannot."""
    _, sat, cands = _joint_and_bandwise(tmp_path)
    f = input_facts(_s2_stack(tmp_path, "S2B_T33UUU_stack.tif", ["", "", "", ""]))
    assert f.roles_guessed and f.roles == ["blue", "green", "red", "nir"]
    path, _, why = dom.choose_model(cands, f)
    assert path == sat
    assert "joint.safetensors" in why and "guessed" in why and "--band-roles" in why
    # Choosing the joint model by hand still works, and warns that the roles are a guess.
    _, _, warnings = dom.plan_bands(dom.PRESETS["satellite-rgbn"], 4, f, None)
    assert any("guessed" in w and "--band-roles" in w for w in warnings)


def test_stated_band_roles_choose_the_joint_model_in_the_stated_order(tmp_path):
    from lcmsr.progress import Progress
    from lcmsr.raster.pipeline import choose_model_for

    joint, _, _ = _joint_and_bandwise(tmp_path)
    src = _s2_stack(tmp_path, "S2B_T33UUU_stack.tif", ["", "", "", ""])
    opts = SROptions(models=[str(tmp_path)], band_roles="red, green blue,nir")
    opts.validate()
    assert opts.band_roles == ["red", "green", "blue", "nir"]
    assert choose_model_for(src, opts, Progress()) == joint
    f = dom.state_roles(input_facts(src), opts.band_roles)
    assert f.roles_how == dom.ROLES_STATED and not f.roles_guessed
    assert dom.plan_bands(dom.PRESETS["satellite-rgbn"], 4, f, None)[0] == [1, 2, 3, 4]
    # The run keeps the input's type, range and size x4.
    out = tmp_path / "sr.tif"
    res = superresolve(src, str(out), joint, SROptions(tile=32, overlap=8, batch=2, band_roles=opts.band_roles))
    ds = gdal.Open(res.path)
    assert ds.RasterCount == 4 and ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert ds.RasterXSize == 4 * 128


def test_band_roles_are_checked_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="'infrared' is not one of"):
        SROptions(band_roles="red,green,blue,infrared").validate()
    src = _s2_stack(tmp_path, "S2B_T33UUU_stack.tif", ["", "", "", ""])
    with pytest.raises(dom.DomainError, match=r"--band-roles names 3 role\(s\) but S2B_T33UUU_stack.tif has 4"):
        dom.state_roles(input_facts(src), dom.parse_band_roles("red,green,blue"))
    assert dom.parse_band_roles("red ? blue alpha") == ["red", None, "blue", "alpha"]
    assert dom.parse_band_roles("") is None and dom.parse_band_roles(None) is None
