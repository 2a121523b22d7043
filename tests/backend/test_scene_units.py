"""Issue 23: a scene as units (plan once, regions anywhere, assemble) gives the single-process run's
output; the band-wise model's bands are a batch of images, not a reason for smaller tiles."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_model
from test_raster_standin import read_raster, textured, write_raster

gdal = pytest.importorskip("osgeo.gdal")
from lcmsr.progress import Progress, Timers  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402
from lcmsr.raster.scene import PlanError, parts_folder  # noqa: E402
from lcmsr.sr.units import assemble, plan_scene, run_unit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
S2 = REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"
MODELS = REPO / "resources" / "models"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def _scene(tmp_path, src, dst, model, unit_size, **kw):
    scene = plan_scene(src, dst, model, SROptions(**kw), unit_size=unit_size)
    json.dumps(scene)    # what an engine ships: plain JSON
    results = [run_unit(json.loads(json.dumps(u))) for u in scene["units"]]
    for u, r in zip(scene["units"], results):
        assert os.path.isfile(u["part"]) and r["sha256"]
    out = assemble(scene)
    assert not os.path.exists(parts_folder(dst))     # parts removed once assembled
    return scene, results, out


def test_units_of_a_scene_assemble_to_the_single_process_output(tmp_path, tiny):
    """Four regions (2 x 2) of a 300 x 290 raster, tiles of 64 with 16 of overlap crossing the region seams."""
    src = write_raster(tmp_path / "in.tif", textured(290, 300).round().astype(np.uint8))
    opts = dict(tile=64, overlap=16, batch=2, precision="fp32", device="cpu")
    superresolve(src, tmp_path / "whole.tif", tiny, SROptions(**opts))
    scene, results, out = _scene(tmp_path, src, tmp_path / "units.tif", tiny, 256, **opts)
    assert len(scene["units"]) == 4 and [u["region"] for u in scene["units"]][-1] == [256, 256, 44, 34]
    whole = read_raster(tmp_path / "whole.tif").astype(int)
    units = read_raster(out["path"]).astype(int)
    assert units.shape == whole.shape == (3, 1160, 1200)
    diff = np.abs(units - whole)
    # The same tiles, the same weights: only the float rounding of another batch composition may move a
    # value, by at most one grey level, and almost nowhere.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    ds, ref = gdal.Open(out["path"]), gdal.Open(str(tmp_path / "whole.tif"))
    assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetProjection() == ref.GetProjection()
    assert ds.GetMetadataItem("LCMSR_MODEL_SHA256") == ref.GetMetadataItem("LCMSR_MODEL_SHA256")
    # Region seams: the units' output has no more edge there than the whole run's.
    assert np.abs(np.diff(units, axis=2))[:, :, 1023].mean() <= np.abs(np.diff(whole, axis=2))[:, :, 1023].mean() + 0.01


def test_a_unit_is_a_pure_function_of_its_spec(tmp_path, tiny):
    src = write_raster(tmp_path / "in.tif", textured(270, 260).round().astype(np.uint8))
    scene = plan_scene(src, tmp_path / "o.tif", tiny, SROptions(tile=64, overlap=16, precision="fp32",
                                                              device="cpu"), unit_size=256)
    unit = scene["units"][1]
    first = run_unit(unit)["sha256"]
    os.remove(unit["part"])
    assert run_unit(unit)["sha256"] == first
    # The part holds only its region, georeferenced where it lies.
    gt = gdal.Open(unit["part"]).GetGeoTransform()
    src_gt = gdal.Open(str(src)).GetGeoTransform()
    assert gt[0] == pytest.approx(src_gt[0] + 256 * src_gt[1]) and gt[1] == pytest.approx(src_gt[1] / 4)


def test_a_changed_model_file_or_input_stops_the_unit_in_one_line(tmp_path, tiny):
    src = write_raster(tmp_path / "in.tif", textured(64, 64).round().astype(np.uint8))
    model = tmp_path / "m.safetensors"
    model.write_bytes(Path(tiny).read_bytes())
    scene = plan_scene(src, tmp_path / "o.tif", str(model), SROptions(device="cpu"))
    write_tiny_model(model, seed=5)
    with pytest.raises(PlanError, match="changed since the plan") as exc:
        run_unit(scene["units"][0])
    assert "\n" not in str(exc.value) and not os.path.exists(scene["units"][0]["part"])
    with pytest.raises(PlanError, match="part 0 of .* is missing"):
        assemble(scene)


def test_uncertainty_is_refused_for_units_before_any_work(tmp_path, tiny):
    src = write_raster(tmp_path / "in.tif", textured(64, 64).round().astype(np.uint8))
    with pytest.raises(PlanError, match="no uncertainty raster"):
        plan_scene(src, tmp_path / "o.tif", tiny, SROptions(uncertainty=str(tmp_path / "u.tif")))


class _Log(Progress):
    def __init__(self):
        self.infos = []

    def info(self, message):
        self.infos.append(message)


def test_band_wise_model_gets_the_tile_an_image_gets_and_times_every_part(tmp_path):
    """The band-wise satellite model on real Sentinel-2 pixels (4 bands) is planned the tile the RGB model
    gets on a 3-band raster of the same size (not smaller tiles because it has bands), with the bands
    counted as images in its batch; the engine's timers see every part."""
    rgb = write_raster(tmp_path / "rgb.tif", textured(256, 256).round().astype(np.uint8))
    plans = {}
    for name, src, model in (("rgb", rgb, MODELS / "lcmsr_x4_rgb_small.safetensors"),
                             ("bandwise", S2, MODELS / "lcmsr_x4_satellite_bandwise.safetensors")):
        log = _Log()
        # (the textured stand-in raster has no pixel size: the domain guard is overridden for it)
        scene = plan_scene(src, tmp_path / f"{name}_sr.tif", str(model),
                           SROptions(device="cpu", memory_budget=0.7, ignore_domain=name == "rgb"), log)
        plans[name] = scene["plan"]
        assert any(m.startswith("memory: ") for m in log.infos)
    assert plans["bandwise"]["bandwise"] and not plans["rgb"]["bandwise"]
    assert plans["bandwise"]["tile"] == plans["rgb"]["tile"]
    assert plans["bandwise"]["batch"] >= plans["rgb"]["batch"]
    timers = Timers()
    superresolve(S2, tmp_path / "s2.tif", str(MODELS / "lcmsr_x4_satellite_bandwise.safetensors"),
                 SROptions(device="cpu", tile=64, overlap=8), timers=timers)
    assert {"read", "normalise", "noise", "model", "back-projection", "blend", "write"} <= set(timers.busy())
