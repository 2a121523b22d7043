"""'Super-resolve active layer' as a QgsTask: the layer appears after finished(); cancel leaves nothing."""
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings, QgsTask, QgsVectorLayer

from conftest import write_tiny_model
from lcmsr_qgis.settings import PREFIX, Settings

SAMPLE_LR = Path(__file__).resolve().parents[2] / "resources" / "sample" / "neon_lr.tif"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch").set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny_x4.safetensors")


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


def wait_for(task, timeout=120.0):
    """finished() is delivered through the event loop: spin it until the task is done and finished() ran."""
    from lcmsr_qgis import tasks

    deadline = time.monotonic() + timeout
    while (task in tasks._RUNNING or task.status() not in (QgsTask.Complete, QgsTask.Terminated)) \
            and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert task not in tasks._RUNNING, "finished() was not called in time"


def layer_names():
    return [layer.name() for layer in QgsProject.instance().mapLayers().values()]


def test_the_layer_appears_in_the_project_after_finished(qgis_iface, active_layer, tiny_model, tmp_path):
    from lcmsr_qgis.tasks import start_superresolve_active_layer

    Settings().set("tile", 64)
    Settings().set("overlap", 8)
    Settings().set("device", "cpu")
    out = tmp_path / "sr.tif"
    task = start_superresolve_active_layer(qgis_iface, output_path=str(out), model_path=tiny_model)
    assert task is not None
    assert "neon_lr x4 LCMSR" not in layer_names()  # nothing touches the project before finished()
    wait_for(task)
    assert task.error == "" and out.exists()
    (added,) = QgsProject.instance().mapLayersByName("neon_lr x4 LCMSR")
    assert added.isValid() and added.extent() == active_layer.extent()
    assert (added.width(), added.height()) == (512, 512)
    assert task.result.device == "cpu" and any("device cpu" in text for _, text in task.messages)


def test_cancel_leaves_no_file_and_no_layer(qgis_iface, active_layer, tiny_model, tmp_path):
    from lcmsr_qgis.tasks import start_superresolve_active_layer

    # Many small tiles: the run lasts long enough to be cancelled in the middle.
    Settings().set("tile", 16)
    Settings().set("overlap", 2)
    Settings().set("batch", 1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    task = start_superresolve_active_layer(qgis_iface, output_path=str(out_dir / "sr.tif"), model_path=tiny_model)
    deadline = time.monotonic() + 60
    while task.progress() <= 0 and task.status() != QgsTask.Complete and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.005)
    assert task.status() == QgsTask.Running and 0 < task.progress() < 100
    task.cancel()
    wait_for(task)
    assert task.was_cancelled and task.status() == QgsTask.Terminated
    assert list(out_dir.iterdir()) == []
    assert layer_names() == ["neon_lr"]


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
