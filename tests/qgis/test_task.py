"""'Super-resolve active layer' runs the toolbox's lcmsr:superresolve as a background task with the
plugin settings as its parameters: the layer appears once the task has finished; cancel leaves nothing."""
import os
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings, QgsTask, QgsVectorLayer

from lcmsr_qgis.settings import PREFIX, Settings

SAMPLE_LR = Path(__file__).resolve().parents[2] / "resources" / "sample" / "neon_lr.tif"
pytestmark = pytest.mark.usefixtures("provider")   # the task runs lcmsr:superresolve from the registry


@pytest.fixture()
def active_layer(qgis_iface, qgis_new_project):
    layer = QgsRasterLayer(str(SAMPLE_LR), "neon_lr")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()
    for key in QgsSettings().allKeys():
        if key.startswith(PREFIX):
            QgsSettings().remove(key)


def wait_for(run, timeout=120.0):
    """executed() is delivered through the event loop: spin it until the task is done and executed() ran."""
    deadline = time.monotonic() + timeout
    while not run.done and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert run.done, "executed() was not called in time"


def layer_names():
    return [layer.name() for layer in QgsProject.instance().mapLayers().values()]


def test_the_layer_appears_in_the_project_after_finished(qgis_iface, active_layer, tiny_model, tmp_path,
                                                         monkeypatch):
    import threading

    from lcmsr_qgis import tasks
    from lcmsr_qgis.algorithms.superresolve import SuperResolveAlgorithm

    Settings().set("tile", 64)
    Settings().set("overlap", 8)
    Settings().set("batch", 3)
    Settings().set("memory_budget", 1.5)
    Settings().set("device", "cpu")
    Settings().set("precision", "bf16")
    seen = {}
    run_algorithm = SuperResolveAlgorithm.processAlgorithm

    def spy(self, parameters, context, feedback):  # the toolbox's algorithm runs, off the main thread
        seen.update(parameters=dict(parameters), main=threading.current_thread() is threading.main_thread())
        return run_algorithm(self, parameters, context, feedback)

    monkeypatch.setattr(SuperResolveAlgorithm, "processAlgorithm", spy)
    logged = []
    log = QgsApplication.messageLog()
    def keep(message, tag, level):
        logged.append((tag, message))

    log.messageReceived.connect(keep)
    out = tmp_path / "sr.tif"
    run = tasks.start_superresolve_active_layer(qgis_iface, output_path=str(out), model_path=tiny_model)
    assert run is not None and isinstance(run.task, QgsTask)
    assert "neon_lr x4 LCMSR" not in layer_names()  # nothing touches the project before the task has finished
    wait_for(run)
    log.messageReceived.disconnect(keep)
    assert run.error == "" and out.exists() and run.results["OUTPUT"] == str(out)
    assert seen["main"] is False
    assert {k: seen["parameters"][k] for k in ("TILE", "OVERLAP", "BATCH", "MEMORY_BUDGET", "DEVICE", "PRECISION",
                                               "MODEL")} == \
        {"TILE": 64, "OVERLAP": 8, "BATCH": 3, "MEMORY_BUDGET": 1.5, "DEVICE": 2, "PRECISION": 1, "MODEL": tiny_model}
    (added,) = QgsProject.instance().mapLayersByName("neon_lr x4 LCMSR")
    assert added is run.layer and added.isValid() and added.extent() == active_layer.extent()
    assert (added.width(), added.height()) == (512, 512)
    assert any("device cpu" in text for _, text in run.messages)
    assert run not in tasks._RUNNING
    # The output is loaded as the raster it is: no GDAL/OGR complaint in the log (QGIS used to try OGR first).
    assert [entry for entry in logged if entry[0] not in ("LCMSR", "Processing")] == []


def test_cancel_leaves_no_file_and_no_layer(qgis_iface, active_layer, tiny_model, tmp_path):
    from lcmsr_qgis.tasks import start_superresolve_active_layer

    # Many small tiles: the run lasts long enough to be cancelled in the middle.
    Settings().set("tile", 16)
    Settings().set("overlap", 2)
    Settings().set("batch", 1)
    Settings().set("device", "cpu")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = start_superresolve_active_layer(qgis_iface, output_path=str(out_dir / "sr.tif"), model_path=tiny_model)
    task = run.task
    deadline = time.monotonic() + 60
    while task.progress() <= 0 and task.status() != QgsTask.Complete and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.005)
    assert task.status() == QgsTask.Running and 0 < task.progress() < 100
    task.cancel()
    wait_for(run)
    assert run.was_cancelled and run.layer is None and run.results is None
    assert list(out_dir.iterdir()) == []
    assert layer_names() == ["neon_lr"]
    assert "cancelled" in qgis_iface.messageBar().get_messages(0)[-1]  # Qgis.Info


def test_a_failure_is_reported_and_adds_nothing(qgis_iface, active_layer, tmp_path):
    from lcmsr_qgis.tasks import start_superresolve_active_layer

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    assert start_superresolve_active_layer(qgis_iface, output_path=str(tmp_path / "x.tif"),
                                           model_path=str(broken)) is None
    assert "broken.safetensors" in qgis_iface.messageBar().get_messages(2)[-1]  # Qgis.Critical
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    QgsProject.instance().addMapLayer(points)
    qgis_iface.setActiveLayer(points)
    assert start_superresolve_active_layer(qgis_iface, output_path=str(tmp_path / "x.tif")) is None
    assert "raster layer" in qgis_iface.messageBar().get_messages(1)[-1]  # Qgis.Warning
    del points
    assert sorted(layer_names()) == ["neon_lr", "points"] and not (tmp_path / "x.tif").exists()


def test_an_error_of_the_algorithm_is_reported_by_its_sentence(qgis_iface, active_layer, tiny_model, tmp_path):
    from lcmsr_qgis.tasks import start_superresolve_active_layer

    Settings().set("tile", 64)
    Settings().set("overlap", 40)   # passes the parameter's range, refused by the backend: half a tile at most
    Settings().set("device", "cpu")
    run = start_superresolve_active_layer(qgis_iface, output_path=str(tmp_path / "sr.tif"), model_path=tiny_model)
    wait_for(run)
    assert not run.was_cancelled and run.layer is None and "overlap" in run.error
    assert run.error in qgis_iface.messageBar().get_messages(2)[-1]  # Qgis.Critical
    assert layer_names() == ["neon_lr"] and list(tmp_path.iterdir()) == []


def test_the_action_asks_for_bands_preset_by_role_and_runs_with_the_choice(qgis_iface, active_layer, tmp_path,
                                                                          monkeypatch):
    """The bundled RGB model on the RGB sample: the dialog starts at red, green, blue = bands 1, 2, 3
    (the backend's choice by role); the user's 3, 2, 1 reaches the algorithm and the file."""
    from osgeo import gdal

    from lcmsr_qgis import tasks
    from lcmsr_qgis.settings import bundled_model_paths
    from lcmsr_qgis.ui.bands_dialog import BandsDialog

    aerial = next(p for p in bundled_model_paths() if "rgb" in os.path.basename(p))
    Settings().set("device", "cpu")
    Settings().set("tile", 64)
    Settings().set("overlap", 8)
    seen = {}

    def choose(dialog):  # instead of the modal loop: read the preset, pick blue, green, red
        seen["preset"] = dialog.bands()
        seen["intro"] = dialog.intro.text()
        for combo, band in zip(dialog.rows, (3, 2, 1)):
            combo.setCurrentIndex(band - 1)
        return 1

    monkeypatch.setattr(BandsDialog, "exec", choose)
    out = tmp_path / "bgr.tif"
    monkeypatch.setattr(tasks, "_ask_output_path", lambda iface, layer, scale: str(out))
    run = tasks.start_superresolve_active_layer(qgis_iface, model_path=aerial)
    wait_for(run)
    assert seen["preset"] == [1, 2, 3] and "matched by role" in seen["intro"]
    assert run.error == "" and out.exists()
    ds = gdal.Open(str(out))
    assert ds.GetMetadataItem("LCMSR_INPUT_BANDS") == "3,2,1"
    assert [ds.GetRasterBand(b).GetColorInterpretation() for b in (1, 2, 3)] == \
        [gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand]
    ds = None
    # Cancelling the bands dialog starts nothing.
    monkeypatch.setattr(BandsDialog, "exec", lambda dialog: 0)
    assert tasks.start_superresolve_active_layer(qgis_iface, model_path=aerial) is None


def test_the_actions_errors_name_the_dialogs_words_not_cli_flags(qgis_iface, qgis_new_project, tiny_model, tmp_path):
    import numpy as np
    from osgeo import gdal

    from lcmsr_qgis.tasks import start_superresolve_active_layer

    path = str(tmp_path / "five.tif")   # five bands of unknown kinds; the model takes three
    ds = gdal.GetDriverByName("GTiff").Create(path, 16, 16, 5, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 1.0, 0.0, 4600000.0, 0.0, -1.0))
    for b in range(1, 6):
        ds.GetRasterBand(b).WriteArray(np.full((16, 16), 20 * b, np.uint8))
    ds = None
    layer = QgsRasterLayer(path, "five")
    QgsProject.instance().addMapLayer(layer)
    Settings().set("device", "cpu")
    try:
        run = start_superresolve_active_layer(qgis_iface, output_path=str(tmp_path / "x.tif"), model_path=tiny_model,
                                              layer=layer)
        wait_for(run)
        assert "choose 3 with 'Bands'" in run.error and "--" not in run.error, run.error
        assert run.error in qgis_iface.messageBar().get_messages(2)[-1]
    finally:
        QgsProject.instance().removeAllMapLayers()
        for key in QgsSettings().allKeys():
            if key.startswith(PREFIX):
                QgsSettings().remove(key)


def test_the_bands_dialog_ticks_bands_for_a_bandwise_model_and_explains_a_failed_plan(qgis_iface, tmp_path):
    import numpy as np
    from osgeo import gdal

    from lcmsr.raster.facts import input_facts
    from lcmsr.weights import read_info
    from lcmsr_qgis.algorithms.superresolve import QGIS_TERMS
    from lcmsr_qgis.settings import bundled_model_paths
    from lcmsr_qgis.ui.bands_dialog import BandsDialog

    models = {("rgb" if "rgb" in os.path.basename(p) else "bandwise"): p for p in bundled_model_paths()}
    s2 = Path(__file__).resolve().parents[1] / "fixtures" / "s2_t33uuu_256.tif"   # B02, B03, B04, B08
    dialog = BandsDialog("s2", input_facts(str(s2)), read_info(models["bandwise"]), QGIS_TERMS)
    assert dialog.bandwise and dialog.bands() == [1, 2, 3, 4] and dialog.problem == ""
    dialog.rows[3].setChecked(False)
    assert dialog.bands() == [1, 2, 3]
    # The RGB model on the same raster: red, green, blue found by role in Sentinel-2's stack order.
    dialog = BandsDialog("s2", input_facts(str(s2)), read_info(models["rgb"]), QGIS_TERMS)
    assert dialog.bands() == [3, 2, 1] and "matched by role" in dialog.intro.text()
    assert [dialog.rows[0].itemText(i) for i in range(4)] == \
        ["band 1 (blue)", "band 2 (green)", "band 3 (red)", "band 4 (nir)"]
    path = str(tmp_path / "five.tif")   # five bands of unknown kinds for the RGB model: no plan by role
    ds = gdal.GetDriverByName("GTiff").Create(path, 8, 8, 5, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(np.zeros((8, 8), np.uint8))
    ds = None
    dialog = BandsDialog("five", input_facts(path), read_info(models["rgb"]), QGIS_TERMS)
    assert not dialog.bandwise and dialog.bands() == [1, 2, 3]   # band order, to be changed by the user
    assert "'Bands'" in dialog.problem and "--bands" not in dialog.problem
