"""The plugin loads in QGIS, registers the `lcmsr` provider, unloads cleanly, and never raises without torch."""
import sys

import pytest
from qgis.core import QgsApplication


def _provider():
    return QgsApplication.processingRegistry().providerById("lcmsr")


@pytest.fixture()
def plugin(qgis_iface):
    import lcmsr_qgis

    instance = lcmsr_qgis.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


def test_plugin_registers_provider_with_icon(plugin):
    provider = _provider()
    assert provider is not None
    assert provider.name() == "LCMSR super-resolution"
    assert not provider.icon().isNull()


def test_unload_removes_provider_and_reload_works(qgis_iface):
    import lcmsr_qgis

    for _ in range(2):
        instance = lcmsr_qgis.classFactory(qgis_iface)
        instance.initGui()
        assert _provider() is not None
        instance.unload()
        assert _provider() is None


def test_missing_torch_is_reported_not_raised(monkeypatch, qgis_iface, runner_setting):
    """Inside QGIS (the worker's own check: tests/qgis/test_worker.py)."""
    from qgis.core import Qgis

    runner_setting("inprocess")

    from lcmsr_qgis import environment

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail like a missing install
    ok, message = environment.backend_status()
    assert not ok
    # One line: what is missing and where the button that installs it is.
    assert "\n" not in message and "torch (not installed)" in message and "'Install PyTorch'" in message
    assert environment.SETTINGS_PLACE in message
    import lcmsr_qgis

    before = list(qgis_iface.messageBar().get_messages(Qgis.Warning))
    instance = lcmsr_qgis.classFactory(qgis_iface)
    instance.initGui()  # must not raise
    assert _provider() is not None
    # The desktop says it once in the message bar too (there with the button itself).
    assert qgis_iface.messageBar().get_messages(Qgis.Warning)[len(before):] == [f"LCMSR:{message}"]
    instance.unload()


def test_torch_ready_means_no_message_bar_offer(qgis_iface):
    from qgis.core import Qgis

    import lcmsr_qgis

    before = list(qgis_iface.messageBar().get_messages(Qgis.Warning))
    instance = lcmsr_qgis.classFactory(qgis_iface)
    instance.initGui()
    instance.unload()
    assert qgis_iface.messageBar().get_messages(Qgis.Warning) == before


def test_plugin_import_puts_the_plugin_owned_torch_folder_first_on_sys_path(monkeypatch, tmp_path):
    """What 'Install PyTorch' installs is used without a path to set: the plugin's import activates it."""
    import importlib

    import lcmsr_qgis
    from lcmsr_qgis import torch_install

    profile = tmp_path / "profile"
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr("qgis.core.QgsApplication.qgisSettingsDirPath", staticmethod(lambda: str(profile)))
    # A copy outside any profile (QGIS_PLUGINPATH) uses the running QGIS's profile; one installed in a profile
    # uses that one (tests/process/test_standalone_script.py).
    monkeypatch.setattr(torch_install, "plugin_profile", lambda plugin_dir=None: None)
    importlib.reload(lcmsr_qgis)        # no folder yet: sys.path unchanged
    assert not [p for p in sys.path if p.startswith(str(profile))]
    folder = profile / "python" / torch_install.FOLDER
    folder.mkdir(parents=True)
    importlib.reload(lcmsr_qgis)
    assert sys.path[0] == str(folder)


def test_plugin_qt_imports_go_through_qgis_pyqt():
    import ast
    from pathlib import Path

    from conftest import plugin_sources

    root = Path(__file__).resolve().parents[2] / "lcmsr_qgis"
    offenders = []
    for path in plugin_sources(root):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6")]
    assert not offenders, offenders


def test_menu_action_without_torch_gives_the_one_line_hint(monkeypatch, qgis_iface, qgis_new_project, runner_setting):
    from pathlib import Path

    from qgis.core import Qgis, QgsProject, QgsRasterLayer

    import lcmsr_qgis
    from lcmsr_qgis import environment

    runner_setting("inprocess")   # the worker's own check: tests/qgis/test_worker.py
    layer = QgsRasterLayer(str(Path(__file__).resolve().parents[2] / "resources" / "sample" / "neon_lr.tif"), "lr")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    monkeypatch.setitem(sys.modules, "torch", None)
    instance = lcmsr_qgis.classFactory(qgis_iface)
    instance.initGui()
    try:
        before = list(qgis_iface.messageBar().get_messages(Qgis.Critical))
        instance.superresolve_active_layer()   # must not raise, and must start nothing
        shown = qgis_iface.messageBar().get_messages(Qgis.Critical)[len(before):]
        assert shown == [f"LCMSR:{environment.backend_status()[1]}"]
        assert "torch (not installed)" in shown[0] and "\n" not in shown[0]
    finally:
        instance.unload()
        QgsProject.instance().removeAllMapLayers()
