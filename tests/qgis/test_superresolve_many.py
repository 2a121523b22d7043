"""`lcmsr:superresolve_many` ("Super-resolve many rasters"): layers, files and a folder in; outputs, a job
log and the mosaic loaded as one layer out; a bad input reported in one line; cancel leaves a log a rerun
resumes from."""
import json
import shutil
from pathlib import Path

import pytest
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProject, QgsRasterLayer

from test_algorithms import SAMPLE_LR, RecordingFeedback, fast, raster_facts, run

pytest.importorskip("osgeo.gdal")


def _log(folder) -> list[dict]:
    lines = (Path(folder) / "lcmsr-batch.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _inputs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(SAMPLE_LR, folder / name)
    (folder / "broken.tif").write_bytes(b"II*\x00 not really a GeoTIFF")
    loose = tmp_path / "loose.tif"
    shutil.copy(SAMPLE_LR, loose)
    return folder, loose


def test_layers_files_and_a_folder_give_outputs_a_log_and_one_mosaic_layer(provider, tiny_model, tmp_path):
    folder, loose = _inputs(tmp_path)
    layer = QgsRasterLayer(str(SAMPLE_LR), "neon")
    QgsProject.instance().addMapLayer(layer)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = RecordingFeedback()
    out = tmp_path / "out"
    try:
        result = run("superresolve_many", fast({"LAYERS": [layer.id()], "FILES": [str(loose)], "FOLDER": str(folder),
                                                "MODEL": tiny_model, "OUTPUT_FOLDER": str(out)}),
                     feedback=feedback, context=context)
        assert (result["DONE"], result["FAILED"]) == (4, 1)
        assert sorted(p.name for p in out.glob("*_sr.tif")) == ["a_sr.tif", "b_sr.tif", "loose_sr.tif", "neon_lr_sr.tif"]
        facts = raster_facts(out / "a_sr.tif")
        assert facts["size"] == (512, 512) and facts["bands"] == 3 and facts["crs"] == "EPSG:32612"
        # The mosaic is one layer (all four share a CRS), loaded when the algorithm completes.
        assert result["MOSAIC"] == str(out / "mosaic.vrt")
        to_load = context.layersToLoadOnCompletion()
        assert list(to_load) == [str(out / "mosaic.vrt")]
        assert to_load[str(out / "mosaic.vrt")].name == "mosaic (4 rasters, LCMSR)"
        assert raster_facts(out / "mosaic.vrt")["valid"]
        failures = [e for e in _log(out) if e["event"] == "item_failed"]
        assert len(failures) == 1 and "broken.tif" in failures[0]["src"]
        assert any("broken.tif" in w and "not a raster GDAL can read" in w for w in feedback.warnings)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    with pytest.raises(QgsProcessingException, match="no inputs"):
        run("superresolve_many", fast({"MODEL": tiny_model, "OUTPUT_FOLDER": str(tmp_path / "none")}))


def test_cancel_leaves_a_log_a_rerun_resumes_from(provider, tiny_model, tmp_path):
    folder, _ = _inputs(tmp_path)
    (folder / "broken.tif").unlink()
    for n in range(3):
        shutil.copy(SAMPLE_LR, folder / f"more{n}.tif")
    out = tmp_path / "out"
    feedback = RecordingFeedback()
    # Cancel once the first raster is done: the driver stops submitting and cancels what is queued.
    feedback.progressChanged.connect(lambda value: feedback.cancel() if any(
        e["event"] == "item_done" for e in _log(out)) else None)
    params = fast({"FOLDER": str(folder), "MODEL": tiny_model, "OUTPUT_FOLDER": str(out)})
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        run("superresolve_many", params, feedback=feedback)
    first = _log(out)
    done_first = {e["item"] for e in first if e["event"] == "item_done"}
    assert first[-1]["event"] == "cancelled" and 1 <= len(done_first) < 5
    result = run("superresolve_many", params)
    assert (result["DONE"], result["FAILED"]) == (5, 0)
    rerun = _log(out)[len(first):]
    assert not {e["item"] for e in rerun if e["event"] == "unit_done"} & done_first   # done work is not redone
    assert {e["item"] for e in rerun if e["event"] == "item_done"} == {"a", "b", "more0", "more1", "more2"} - done_first
