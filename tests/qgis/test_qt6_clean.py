"""The plugin code is Qt6/QGIS 4-clean: what QGIS 4 refuses is caught here, on the QGIS 3.22 installed.

QGIS 4 (PyQt6) has only scoped enums (``Qt.ItemDataRole.UserRole``, ``Qgis.MessageLevel.Warning``), no
``exec_()`` and no ``PyQt5`` module.  PyQt5/sip accepts both spellings, so the plugin running here proves
nothing: this test resolves every ``X.Y`` in ``lcmsr_qgis/`` where ``X`` was imported from ``qgis.*`` and
fails when ``Y`` is an enum member reached without its enum class.  On PyQt5/sip (and for QGIS's Python
enums) such a member's type is the enum class nested in ``X`` (``type(Qt.UserRole) is Qt.ItemDataRole``);
the scoped form ``X.E.Y`` reaches ``X.E`` first, which is a class, not a member.
"""
import ast
import importlib
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "lcmsr_qgis"
SOURCES = sorted(PLUGIN.rglob("*.py"))


def qt6_findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported = {}  # local name -> the object it names in QGIS's Python
    findings = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("PyQt5", "PyQt6"):
            findings.append(f"{where}: import from {node.module} (use qgis.PyQt)")
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("PyQt5", "PyQt6") for a in node.names):
            findings.append(f"{where}: import of PyQt directly (use qgis.PyQt)")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qgis"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                imported[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
            findings.append(f"{where}: def exec_ (Qt6 has exec)")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where = f"{path.name}:{node.lineno}"
        if node.attr == "exec_":
            findings.append(f"{where}: .exec_() (use .exec())")
        if not (isinstance(node.value, ast.Name) and node.value.id in imported):
            continue
        owner = imported[node.value.id]
        value = getattr(owner, node.attr, None)
        kind = type(value)
        if kind is not owner and getattr(owner, kind.__name__, None) is kind:
            findings.append(f"{where}: {node.value.id}.{node.attr} is unscoped; "
                            f"write {node.value.id}.{kind.__name__}.{node.attr}")
    return findings


def test_sources_found():
    assert len(SOURCES) > 10 and PLUGIN / "plugin.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGIN)))
def test_no_unscoped_enum_exec_or_pyqt_import(path):
    assert qt6_findings(path) == []


@pytest.mark.parametrize("line, expected", [
    ("from qgis.PyQt.QtCore import Qt\nROLE = Qt.UserRole\n", "write Qt.ItemDataRole.UserRole"),
    ("from qgis.core import Qgis\nLEVEL = Qgis.Warning\n", "write Qgis.MessageLevel.Warning"),
    ("from qgis.core import QgsProcessingParameterNumber as N\nT = N.Integer\n", "write N.Type.Integer"),
    ("from qgis.PyQt.QtWidgets import QDialogButtonBox\nB = QDialogButtonBox.Ok\n", "StandardButton.Ok"),
    ("def run(dialog):\n    return dialog.exec_()\n", ".exec_()"),
    ("from PyQt5.QtCore import Qt\n", "use qgis.PyQt"),
])
def test_checker_catches_what_qgis4_refuses(tmp_path, line, expected):
    """The rule itself: each spelling QGIS 4 refuses is reported, and its scoped form is not."""
    bad = tmp_path / "probe.py"
    bad.write_text(line, encoding="utf-8")
    (finding,) = qt6_findings(bad)
    assert expected in finding
    if "write " in expected:
        scoped = expected.split("write ", 1)[1]
        bad.write_text(line.split("\n")[0] + f"\nX = {scoped}\n", encoding="utf-8")
        assert qt6_findings(bad) == []


def test_metadata_declares_qt6():
    meta = dict(line.split("=", 1) for line in (PLUGIN / "metadata.txt").read_text(encoding="utf-8").splitlines()
                if "=" in line)
    assert meta.get("supportsQt6", "").strip() == "True"
    assert meta.get("qgisMaximumVersion", "").strip() == "4.99"
