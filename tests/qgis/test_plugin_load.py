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


def test_missing_torch_is_reported_not_raised(monkeypatch, qgis_iface):
    from lcmsr_qgis import environment

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail like a missing install
    ok, message = environment.backend_status()
    assert not ok
    assert "torch" in message and "pip install" in message
    import lcmsr_qgis

    instance = lcmsr_qgis.classFactory(qgis_iface)
    instance.initGui()  # must not raise
    assert _provider() is not None
    instance.unload()


def test_plugin_qt_imports_go_through_qgis_pyqt():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "lcmsr_qgis"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6")]
    assert not offenders, offenders
