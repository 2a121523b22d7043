"""Issue 18: batch and tile chosen from the measured working memory and a budget; the time-left text."""
import numpy as np
import pytest

from lcmsr import memory
from lcmsr.progress import Eta, Progress, duration

GB = memory.GB
PLENTY = 64 * 2**30
RGB = dict(scale=4, model=memory.WORKING_MEMORY[("small", 3, "fp32")], images_per_tile=1, out_bands=3,
           overlap=32)


def test_raising_the_budget_raises_the_batch():
    low = memory.choose(2048, 2048, budget_gb=0.8, available=PLENTY, **RGB)
    high = memory.choose(2048, 2048, budget_gb=4.0, available=PLENTY, **RGB)
    assert high.batch > low.batch >= 1
    assert low.estimate <= low.allowance and high.estimate <= high.allowance
    # every batch up to MAX_BATCH that fits is taken: one more tile would not fit
    assert memory.choose(2048, 2048, budget_gb=100, available=PLENTY, **RGB).batch == memory.MAX_BATCH


def test_a_low_budget_gives_batch_one_and_smaller_tiles():
    default = memory.choose(2048, 2048, budget_gb=0.8, available=PLENTY, **RGB)
    low = memory.choose(2048, 2048, budget_gb=0.3, available=PLENTY, **RGB)
    assert low.batch == 1 and low.tile < default.tile
    assert low.estimate <= low.allowance
    starved = memory.choose(2048, 2048, budget_gb=0.01, available=PLENTY, **RGB)
    assert (starved.batch, starved.tile) == (1, min(memory.TILE_CHOICES))
    assert starved.estimate > starved.allowance          # the caller warns: nothing smaller is offered


def test_a_loaded_machine_gets_smaller_batches():
    free = memory.choose(2048, 2048, budget_gb=4.0, available=PLENTY, **RGB)
    loaded = memory.choose(2048, 2048, budget_gb=4.0, available=int(1.2 * GB), **RGB)
    assert loaded.allowance == int(0.6 * GB)
    assert (loaded.batch, loaded.tile) < (free.batch, free.tile) and loaded.estimate <= loaded.allowance
    assert memory.choose(2048, 2048, budget_gb=4.0, available=None, **RGB).allowance == int(4 * GB)


def test_explicit_values_are_honoured_even_over_the_budget():
    plan = memory.choose(2048, 2048, budget_gb=0.8, available=PLENTY, tile=512, batch=16, **RGB)
    assert (plan.tile, plan.batch) == (512, 16) and plan.estimate > plan.allowance
    only_tile = memory.choose(2048, 2048, budget_gb=4.0, available=PLENTY, tile=128, **RGB)
    assert only_tile.tile == 128 and only_tile.batch == memory.MAX_BATCH
    only_batch = memory.choose(2048, 2048, budget_gb=0.8, available=PLENTY, batch=3, **RGB)
    assert only_batch.batch == 3


def test_the_estimate_scales_with_images_per_call_and_tile_area():
    w = memory.working_bytes((10**7, 700), 1, 128, 128, 4) - 10**7
    assert memory.working_bytes((10**7, 700), 3, 128, 128, 4) == 10**7 + 3 * w
    assert memory.working_bytes((10**7, 700), 1, 256, 256, 4) == 10**7 + 4 * w
    # the batch counts images: at a budget where 3 images of 256 fit, the batch is 3 images
    per_image = memory.working_bytes(RGB["model"], 1, 256, 256, 4) - RGB["model"][0]
    blend = memory.BLEND_BYTES * 3 * 2048 * 256 * 4
    budget = (RGB["model"][0] + 3.5 * per_image + blend + memory.MARGIN) / GB
    assert memory.choose(2048, 2048, budget_gb=budget, available=PLENTY, **RGB).batch == 3


def test_band_wise_bands_are_a_batch_of_images_not_a_reason_for_smaller_tiles():
    """Issue 23: a band-wise model's bands are single-band images of the same tile; the plan picks the tile
    an image fits and counts the bands in the batch (up to max_batch images, and the raster's images)."""
    one = memory.choose(2048, 2048, budget_gb=0.7, available=PLENTY, **RGB)
    four = memory.choose(2048, 2048, budget_gb=0.7, available=PLENTY, max_batch=4 * memory.MAX_BATCH,
                         **{**RGB, "images_per_tile": 4})
    assert four.tile == one.tile and four.batch == one.batch
    small = memory.choose(128, 128, budget_gb=100, available=PLENTY, max_batch=32, **{**RGB, "images_per_tile": 4})
    assert small.batch == 4      # one tile of four bands: four images, not more


def test_a_small_raster_is_not_given_more_tiles_per_call_than_it_has():
    plan = memory.choose(128, 128, budget_gb=100, available=PLENTY, **RGB)
    assert plan.batch == 1


def test_bf16_and_unknown_models_read_their_own_figures():
    assert memory.figures("small", 3, "bf16") == (memory.WORKING_MEMORY[("small", 3, "bf16")], True)
    assert memory.figures("small", 1, "fp32") == (memory.WORKING_MEMORY[("small", 1, "fp32")], True)
    (fixed, per_pixel), measured = memory.figures("paper", 3, "fp32")
    assert not measured and all(fixed >= f and per_pixel >= p for f, p in memory.WORKING_MEMORY.values())


def test_available_bytes_reads_meminfo():
    got = memory.available_bytes()
    assert got is None or got > 0


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_eta_from_the_first_computed_tile_and_skipped_tiles_cost_nothing():
    clock = FakeClock()
    eta = Eta(10, clock=clock)
    eta.update(1, 0, 0)                  # a skipped (all-nodata) tile: no estimate yet
    assert eta.seconds_left() is None and eta.text() == "tile 1/10"
    clock.t += 4
    eta.update(3, 2, 2_000_000)          # 2 computed tiles in 4 s; 7 tiles to come
    assert eta.seconds_left() == pytest.approx(14.0)
    assert eta.text() == "tile 3/10, 0.50 MP/s, about 14 s left"
    clock.t += 1
    eta.update(7, 2, 2_000_000)          # 4 more tiles skipped in 1 s: the estimate falls with them
    assert eta.seconds_left() == pytest.approx(7.5)


def test_duration_reads_as_people_say_it():
    assert [duration(s) for s in (0.4, 45, 185, 7620)] == ["0 s", "45 s", "3 min 05 s", "2 h 07 min"]


class Recorder(Progress):
    def __init__(self):
        self.reports, self.infos, self.warnings = [], [], []

    def report(self, fraction, message=""):
        self.reports.append(message)

    def info(self, message):
        self.infos.append(message)

    def warn(self, message):
        self.warnings.append(message)


def _standin_run(tmp_path, monkeypatch, **options):
    pytest.importorskip("osgeo.gdal")
    from test_raster_standin import StandInModel, textured, write_raster

    from lcmsr.raster import pipeline
    from lcmsr.raster.pipeline import SROptions, superresolve

    monkeypatch.setattr(memory, "available_bytes", lambda: PLENTY)
    src = write_raster(tmp_path / "in.tif", textured(200, 200).round().astype(np.uint8))
    progress = Recorder()
    superresolve(src, tmp_path / "out.tif", StandInModel(scale=2), SROptions(overlap=8, device="cpu", **options),
                 progress)
    return progress, pipeline


def test_the_pipeline_runs_the_chosen_batch_and_says_the_time_left(tmp_path, monkeypatch):
    progress, _ = _standin_run(tmp_path, monkeypatch, memory_budget=0.2)
    plan = memory.choose(200, 200, scale=2, model=memory.figures("", 3, "fp32")[0], images_per_tile=1,
                         out_bands=3, overlap=8, budget_gb=0.2, available=PLENTY)
    assert any(m.startswith("memory: ") for m in progress.infos)
    assert any(f"batch {plan.batch} tile(s), stripes" in m and f"tile(s) of {min(plan.tile, 200)}x" in m
               for m in progress.infos)
    eta_reports = [m for m in progress.reports if "left" in m]
    assert eta_reports and "MP/s" in eta_reports[0] and progress.reports[0] == eta_reports[0]
    assert any(m.startswith("progress: tile ") for m in progress.infos)
    assert not progress.warnings


def test_user_values_over_the_budget_are_run_with_a_warning(tmp_path, monkeypatch):
    progress, _ = _standin_run(tmp_path, monkeypatch, tile=96, batch=8, memory_budget=0.01)
    assert any("batch 8 tile(s), stripes" in m for m in progress.infos)
    assert any("--tile 96 and --batch 8 may need more memory" in w and "--memory-budget" in w
               for w in progress.warnings)


def test_the_cli_takes_a_budget_and_zero_for_a_chosen_tile_or_batch(capsys):
    from lcmsr.cli import build_parser

    args = build_parser().parse_args(["sr", "in.tif", "out.tif", "--memory-budget", "2.5", "--tile", "0"])
    assert (args.memory_budget, args.tile, args.batch) == (2.5, 0, 0)
    for bad in (["--memory-budget", "0"], ["--memory-budget", "lots"], ["--batch", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["sr", "in.tif", "out.tif", *bad])
    assert "not a positive number of GB" in capsys.readouterr().err


def test_a_model_files_own_figures_come_before_the_table(tmp_path):
    """ModelInfo.working_memory (scripts/measure_working_memory.py --write) decides the plan for that model, and
    crafted figures are refused when the file is read."""
    torch = pytest.importorskip("torch")
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import ModelFileError, read_info, save_model, update_info

    stored = {"fp32": [5_000_000, 3000], "bf16": [1_000_000, 2000], "how": "a test"}
    assert memory.figures("small", 3, "fp32", stored) == ((5_000_000, 3000), True)
    assert memory.figures("small", 3, "bf16", stored) == ((1_000_000, 2000), True)
    assert memory.figures("small", 3, "fp32", None) == (memory.WORKING_MEMORY[("small", 3, "fp32")], True)
    heavy = memory.choose(2048, 2048, budget_gb=0.7, available=PLENTY, **{**RGB, "model": (5_000_000, 3000)})
    light = memory.choose(2048, 2048, budget_gb=0.7, available=PLENTY, **RGB)
    assert (heavy.tile, heavy.batch) < (light.tile, light.batch)

    torch.manual_seed(0)
    path = save_model(tmp_path / "m.safetensors", build_model(tiny_config(scale=4, bands=3)))
    assert read_info(path).working_memory is None
    update_info(path, working_memory=stored)
    assert read_info(path).working_memory == stored
    for bad in ({"fp32": [1, 0]}, {"fp32": [-1, 100]}, {"fp32": [1e12, 100]}, {"fp16": [1, 100]}, {"how": "x"},
                {"fp32": [1, float("nan")]}, {"fp32": "big"}, [1, 2]):
        with pytest.raises((ValueError, ModelFileError), match="working_memory"):
            update_info(path, working_memory=bad)
    assert read_info(path).working_memory == stored     # a refused change leaves the file as it was
