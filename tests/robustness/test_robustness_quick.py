"""The quick subset of the robustness suite (scripts/robustness.py --quick): every case family, a few
cases each, through the CLI, QGIS, the weights loader, training and SR — nothing crashes, hangs or is lost."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness_cases as rc  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("osgeo.gdal")


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("robustness")
    suite = rc.Suite(work, quick=True, seed=int(os.environ.get("LCMSR_ROBUSTNESS_SEED", "0")), log=lambda m: None)
    suite.run()
    rc.write_report(suite, work / "RELIABILITY.md", "pytest tests/robustness", 0.0)
    return suite


@pytest.mark.parametrize("family", ["raster-cli", "raster-qgis", "weights", "train-kill", "sr-faults", "cancel",
                                    "paths-loss", "paths-leftovers", "paths-messages", "modelfile",
                                    "corruption", "trainfolder", "outputs-companions", "outputs-nodata",
                                    "eval-grid", "eval-outputs", "outputs-gpkg", "outputs-messages"])
def test_quick_family_has_no_crash_hang_loss_or_wrong_outcome(quick_suite, family):
    fam = quick_suite.families[family]
    assert fam.results, f"{family}: no case ran"
    bad = [f"{r.case}: {r.outcome} — {r.detail}" for r in fam.results if r.outcome in rc.BAD]
    assert not bad, "\n".join(bad)


def test_quick_suite_tries_both_outcomes_and_reports_every_case(quick_suite):
    outcomes = {r.outcome for f in quick_suite.families.values() for r in f.results}
    assert {rc.CORRECT, rc.CLEAR} <= outcomes
    text = (quick_suite.work / "RELIABILITY.md").read_text()
    for fam in quick_suite.families.values():
        assert f"| {fam.title} |" in text
        assert all(r.case in text for r in fam.results)


def test_a_damaged_output_is_not_counted_as_correct(tmp_path):
    """The checker the suite relies on must fail wrong outputs, or every 'correct output' is hollow."""
    src = rc.write_raster(tmp_path / "in.tif", 9, 7)
    wrong_size = rc.write_raster(tmp_path / "half.tif", 9, 7)
    assert "expected" in rc.check_sr_output(src, wrong_size, 2, False)
    from osgeo import gdal

    gdal.Translate(str(tmp_path / "x2.tif"), str(src), width=18, height=14)
    assert rc.check_sr_output(src, tmp_path / "x2.tif", 2, False) == ""    # a resampling is "correct" in form
    ds = gdal.Open(str(tmp_path / "x2.tif"), gdal.GA_Update)
    ds.SetGeoTransform(gdal.Open(str(src)).GetGeoTransform())   # ...but not with the input's pixel size
    ds = None
    assert "geotransform" in rc.check_sr_output(src, tmp_path / "x2.tif", 2, False)
