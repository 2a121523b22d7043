"""The settings dialog, headless: models are validated and persisted, errors are shown, the default is used."""
import os
import sys

import pytest
from qgis.core import QgsApplication, QgsProcessingFeedback, QgsSettings

from conftest import write_tiny_model
from lcmsr_qgis.settings import PREFIX, Settings


class Recorder:
    """Stands in for QMessageBox: records instead of blocking on a modal window."""

    def __init__(self):
        self.shown = []

    def __call__(self, title, text):
        self.shown.append((title, text))


class InfoFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos = []

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)


@pytest.fixture(autouse=True)
def clean_settings():
    def clear():
        s = QgsSettings()
        for key in s.allKeys():
            if key.startswith(PREFIX):
                s.remove(key)
    clear()
    yield
    clear()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch").set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny_x2.safetensors", scale=2)


@pytest.fixture()
def dialog(qgis_app, qgis_parent):
    from lcmsr_qgis.ui.settings_dialog import SettingsDialog

    boxes = Recorder()
    dlg = SettingsDialog(qgis_parent, message_box=boxes)
    dlg.boxes = boxes
    yield dlg
    dlg.deleteLater()
    QgsApplication.processEvents()


def test_precision_defaults_to_auto_and_a_stored_fp32_still_loads(qgis_app, qgis_parent):
    from lcmsr_qgis.ui.settings_dialog import SettingsDialog

    assert Settings().precision == "auto"
    dlg = SettingsDialog(qgis_parent, message_box=Recorder())
    assert dlg.precision_combo.currentText() == "auto"
    dlg.deleteLater()
    QgsSettings().setValue(PREFIX + "precision", "fp32")   # what older versions saved (their default)
    dlg = SettingsDialog(qgis_parent, message_box=Recorder())
    assert dlg.precision_combo.currentText() == "fp32"
    dlg.accept()
    assert Settings().precision == "fp32"
    dlg.deleteLater()
    QgsApplication.processEvents()


def test_adding_a_valid_model_shows_what_it_is_and_persists_on_ok(dialog, tiny_model):
    assert dialog.add_model(tiny_model)
    assert dialog.boxes.shown == []
    summary = dialog.model_details.toPlainText()
    for expected in ("Scale: x2", "Bands: 3", "Config: tiny", "Normalisation", "0 … 255", "Training:"):
        assert expected in summary, summary
    item = dialog.model_list.currentItem()
    assert "tiny_x2.safetensors — x2, domain unknown (registered)" == item.text()
    assert "Made for: domain unknown" in summary
    dialog.set_default_model(tiny_model)
    dialog.tile_spin.setValue(128)
    dialog.memory_spin.setValue(2.5)
    dialog.device_combo.setCurrentText("cpu")
    dialog.precision_combo.setCurrentText("bf16")
    dialog.accept()
    s = Settings()
    assert s.models == [tiny_model] and s.default_model == tiny_model
    assert (s.tile, s.memory_budget, s.device, s.precision) == (128, 2.5, "cpu", "bf16")
    assert s.model_for_run() == tiny_model


def test_cancel_keeps_the_stored_settings(dialog, tiny_model):
    dialog.add_model(tiny_model)
    dialog.tile_spin.setValue(64)
    dialog.reject()
    assert Settings().models == [] and Settings().tile == 0   # 0: chosen to fit the memory budget


def test_a_broken_file_is_refused_with_the_loaders_message(dialog, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"PK\x03\x04 this is a zip/pickle checkpoint")
    listed = dialog.model_list.count()   # the bundled models
    assert not dialog.add_model(str(broken))
    assert dialog.model_list.count() == listed
    (title, text), = dialog.boxes.shown
    assert "broken.safetensors" in text and "pickle" in text
    assert not dialog.add_model(str(tmp_path / "absent.safetensors"))
    assert "absent.safetensors" in dialog.boxes.shown[-1][1] and "not found" in dialog.boxes.shown[-1][1]
    dialog.accept()
    assert Settings().models == []


def test_bundled_models_are_listed_with_their_domain_and_never_saved_as_registered(dialog):
    from lcmsr_qgis.settings import bundled_model_paths

    bundled = bundled_model_paths()
    assert bundled and dialog.models(bundled=True)[:len(bundled)] == bundled and dialog.models() == []
    texts = [dialog.model_list.item(i).text() for i in range(len(bundled))]
    assert any("aerial, red/green/blue, 0.2-0.8 m (bundled)" in t for t in texts), texts
    dialog.model_list.setCurrentRow(0)
    assert "Made for: aerial" in dialog.model_details.toPlainText()
    dialog.remove_model(bundled[0])                      # bundled models cannot be removed
    assert dialog.models(bundled=True)[:len(bundled)] == bundled
    assert "chooses the bundled or registered model whose domain" in dialog.default_label.text()
    dialog.accept()
    assert Settings().models == []


def test_remove_model_and_an_invalid_device_is_not_saved(dialog, tiny_model):
    dialog.add_model(tiny_model)
    dialog.set_default_model(tiny_model)
    dialog.remove_model(tiny_model)
    assert dialog.models() == [] and dialog.default_model == ""
    dialog.device_combo.setCurrentText("gpu0")
    dialog.accept()
    assert "gpu0" in dialog.last_error and dialog.result() == 0
    assert Settings().device == "auto"


def test_diagnostics_copy_puts_the_report_on_the_clipboard(dialog):
    from qgis.PyQt.QtWidgets import QApplication

    text = dialog.copy_diagnostics()
    assert "torch:" in text and "Device for 'auto'" in text and "QGIS:" in text
    # Which torch runs, and from where: the venv's or Debian's (no install step), or the plugin-owned folder
    # (the chroot's QGIS 3.40, whose torch the plugin's installer put there).
    import torch

    from lcmsr_qgis import torch_install

    where = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    owned = os.path.realpath(torch.__file__).startswith(os.path.realpath(torch_install.torch_dir()) + os.sep)
    assert (f"torch: {torch.__version__} (CUDA build: {torch.version.cuda}) from {where} "
            + ("(the plugin-owned folder)" if owned else "(no install needed)")) in text
    assert QApplication.clipboard().text() == text == dialog.diagnostics_view.toPlainText()


def test_the_default_model_is_used_by_the_algorithm(dialog, tiny_model, tmp_path, qgis_processing):
    import processing
    from lcmsr_qgis.provider import LcmsrProvider

    dialog.add_model(tiny_model)
    dialog.set_default_model(tiny_model)
    dialog.accept()
    registry = QgsApplication.processingRegistry()
    added = None
    if registry.providerById("lcmsr") is None:
        added = LcmsrProvider()
        registry.addProvider(added)
    try:
        feedback = InfoFeedback()
        result = processing.run("lcmsr:superresolve", {"INPUT": _small_raster(tmp_path / "lr.tif"), "TILE": 32, "OVERLAP": 4, "DEVICE": 2,
                                                       "OUTPUT": str(tmp_path / "sr.tif")}, feedback=feedback)
    finally:
        if added is not None:
            registry.removeProvider(added)
    assert f"Model: {tiny_model}" in feedback.infos
    from osgeo import gdal

    ds = gdal.Open(result["OUTPUT"])
    assert (ds.RasterXSize, ds.RasterYSize) == (2 * 24, 2 * 20)  # the x2 default model, not the bundled x4


def _small_raster(path):
    import numpy as np
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(str(path), 24, 20, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((1000.0, 1.0, 0.0, 2000.0, 0.0, -1.0))
    for b in range(1, 4):
        ds.GetRasterBand(b).WriteArray(np.random.default_rng(b).integers(0, 256, (20, 24), dtype=np.uint8))
    ds = None
    return str(path)


# --- "Install PyTorch" ----------------------------------------------------------------------------
def test_with_torch_the_dialog_offers_no_install(dialog):
    assert dialog.torch_box.isHidden()


@pytest.fixture()
def torchless_dialog(monkeypatch, qgis_app, qgis_parent, tmp_path, runner_setting):
    """The dialog in a QGIS whose `import torch` fails, running jobs inside QGIS (a worker's Python is
    checked in tests/qgis/test_worker.py); its install goes into a temporary profile."""
    from lcmsr_qgis.ui.settings_dialog import SettingsDialog

    runner_setting("inprocess")
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(sys, "path", list(sys.path))        # an install activates its folder: undone after
    for name in [n for n in sys.modules if n == "tqdm" or n.startswith("tqdm.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])   # the test's install may import its own
    dlg = SettingsDialog(qgis_parent, message_box=Recorder())
    dlg.torch_target = str(tmp_path / "profile" / "python" / "lcmsr_torch")
    yield dlg
    if dlg.install_task is not None:
        dlg.cancel_install()
        _wait_for_install(dlg)
    dlg.deleteLater()
    QgsApplication.processEvents()
    for name in [n for n in sys.modules if (n == "tqdm" or n.startswith("tqdm."))
                 and (getattr(sys.modules[n], "__file__", "") or "").startswith(str(tmp_path))]:
        del sys.modules[name]


def _wait_for_install(dlg, timeout=240):
    import time

    from lcmsr_qgis import torch_install

    start = time.monotonic()
    while torch_install.current_task() is not None and time.monotonic() - start < timeout:
        QgsApplication.processEvents()   # QgsTask.finished is delivered by the event loop
        time.sleep(0.05)
    assert torch_install.current_task() is None, "the install task did not finish"


def test_without_torch_the_dialog_offers_install_pytorch(torchless_dialog):
    dlg = torchless_dialog
    assert not dlg.torch_box.isHidden()
    assert dlg.install_button.text() == "Install PyTorch" and dlg.install_button.isEnabled()
    assert "torch (not installed)" in dlg.torch_label.text() and "no path to set" in dlg.torch_label.text()
    assert dlg.torch_variant.findData("cpu") >= 0        # CPU is always offered (no GPU here: the only one)
    assert dlg.cancel_install_button.isHidden() and dlg.install_progress.isHidden()


@pytest.mark.parametrize("imported_before", [False, True])
def test_install_button_installs_in_a_background_task_into_the_profile(torchless_dialog, monkeypatch,
                                                                      imported_before):
    from lcmsr_qgis import torch_install

    # The task's code path with a small package instead of torch (the real one: the slow test).
    small = torch_install.InstallPlan(["tqdm"], "", ("tqdm",), "tqdm")
    monkeypatch.setattr(torch_install, "torch_plan", lambda variant, platform=None: small)
    if imported_before:
        import tqdm  # noqa: F401  (this session already runs another copy)
    else:
        for name in [n for n in sys.modules if n == "tqdm" or n.startswith("tqdm.")]:
            monkeypatch.delitem(sys.modules, name)
    dlg = torchless_dialog
    values = []
    dlg.install_button.click()
    assert dlg.install_task is not None and not dlg.install_button.isEnabled()
    assert not dlg.cancel_install_button.isHidden()
    dlg.install_task.progressChanged.connect(values.append)
    _wait_for_install(dlg)
    assert os.path.isfile(os.path.join(dlg.torch_target, "tqdm", "__init__.py"))
    text = dlg.torch_label.text()
    assert text.startswith(f"Tqdm installed in {dlg.torch_target}")
    if imported_before:   # the dialog says plainly that a restart is needed, and why
        assert "; restart QGIS to use it (this session already runs the tqdm in" in text
    else:                 # a package this session never imported is used at once
        assert text.endswith(": ready, no restart needed")
        assert sys.modules["tqdm"].__file__.startswith(dlg.torch_target)
    assert values and values[-1] == 100 and dlg.install_progress.value() == 100
    assert dlg.cancel_install_button.isHidden() and not dlg.install_button.isEnabled()


def test_cancel_button_stops_the_install_and_leaves_nothing(torchless_dialog, monkeypatch):
    from lcmsr_qgis import torch_install

    monkeypatch.setenv(torch_install.INDEX_ENV, "")   # the registry as configured here (no download.pytorch.org)
    dlg = torchless_dialog
    dlg.install_torch("cpu")
    import time

    start = time.monotonic()
    while dlg.install_progress.value() == 0 and time.monotonic() - start < 60:   # pip has started
        QgsApplication.processEvents()
        time.sleep(0.05)
    dlg.cancel_install_button.click()
    _wait_for_install(dlg)
    parent = os.path.dirname(dlg.torch_target)
    assert not os.path.exists(dlg.torch_target)
    assert [p for p in os.listdir(parent) if p.startswith("lcmsr_torch")] == []
    assert "cancelled" in dlg.torch_label.text() and dlg.install_button.isEnabled()


def test_an_unreachable_index_puts_the_reachable_build_one_choice_away(torchless_dialog, monkeypatch, tmp_path):
    """The dialog shows pip's cause and the registry's measured build, and offers that build in the list;
    choosing it and 'Install PyTorch' again installs it."""
    from test_torch_install import _index, _wheel

    from lcmsr_qgis import torch_install

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", _index(tmp_path / "registry", [_wheel(wheels, "torch", "2.13.0")]))
    registry = torch_install.InstallPlan(["torch==2.13.0"], "", ("torch",), "PyTorch from the package registry")
    unreachable = torch_install.InstallPlan(["torch==2.13.0+cpu"], "http://127.0.0.1:9/simple", ("torch",),
                                            "PyTorch (CPU)", fallback=registry)
    monkeypatch.setattr(torch_install, "torch_plan",
                        lambda variant, platform=None: registry if variant == torch_install.REGISTRY else unreachable)
    dlg = torchless_dialog
    dlg.install_torch("cpu")
    _wait_for_install(dlg)
    text = dlg.torch_label.text()
    assert "http://127.0.0.1:9/simple could not be reached: Connection refused" in text
    assert "Reachable instead: PyTorch from the package registry, torch 2.13.0, 1 packages" in text
    assert dlg.torch_variant.currentData() == torch_install.REGISTRY and dlg.install_button.isEnabled()
    assert "GB to download (measured from the index)" in dlg.torch_variant.currentText()
    assert not os.path.exists(dlg.torch_target)
    dlg.install_button.click()
    _wait_for_install(dlg)
    assert os.path.isfile(os.path.join(dlg.torch_target, "torch", "__init__.py"))
    assert dlg.torch_label.text().startswith(f"PyTorch from the package registry installed in {dlg.torch_target}")


def test_the_runner_and_the_worker_python_are_chosen_checked_and_saved(dialog, tmp_path):
    from lcmsr_qgis import worker

    assert dialog.runner_combo.currentData() == worker.WORKER and dialog.worker_python_edit.text() == ""
    assert dialog.check_worker_python().startswith("OK: worker Python ")   # the automatic one runs jobs here
    dialog.worker_python_edit.setText(str(tmp_path / "missing" / "python3"))
    dialog.accept()
    assert "does not exist or cannot be run" in dialog.last_error and dialog.result() == 0
    assert Settings().worker_python == ""   # nothing saved
    assert dialog.check_worker_python().startswith("Not usable: ")
    dialog.worker_python_edit.setText(sys.executable)
    dialog.runner_combo.setCurrentIndex(worker.RUNNERS.index(worker.IN_PROCESS))
    assert not dialog.worker_python_edit.isEnabled()
    dialog.accept()
    assert (Settings().runner, Settings().worker_python) == (worker.IN_PROCESS, sys.executable)
    assert isinstance(worker.runner(), worker.InProcessRunner)
