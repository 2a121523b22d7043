"""The plugin code is Qt6/QGIS 4-clean: what QGIS 4 refuses is caught here, on the QGIS 3.22 installed.

QGIS 4 (PyQt6) has only scoped enums (``Qt.ItemDataRole.UserRole``, ``Qgis.MessageLevel.Warning``), no
``exec_()`` and no ``PyQt5`` module.  PyQt5/sip accepts both spellings, so the plugin running here proves
nothing: this test resolves every ``X.Y`` in ``lcmsr_qgis/`` where ``X`` is a class (imported from
``qgis.*`` or defined in the plugin) or ``self``/``cls`` inside a plugin class, and fails when ``Y`` is an
enum member reached without its enum class.  On PyQt5/sip (and for QGIS's Python enums) such a member's
type is the enum class nested in ``X`` (``type(Qt.UserRole) is Qt.ItemDataRole``); the scoped form
``X.E.Y`` reaches ``X.E`` first, which is a class, not a member.
"""
import ast
import importlib
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "lcmsr_qgis"
SOURCES = sorted(PLUGIN.rglob("*.py"))


def _unscoped(owner, attr: str) -> str | None:
    """The enum class's name when ``owner.attr`` is one of its members reached without it."""
    kind = type(getattr(owner, attr, None))
    if isinstance(owner, type) and kind is not owner and getattr(owner, kind.__name__, None) is kind:
        return kind.__name__
    return None


def _classes(path: Path, tree: ast.Module) -> dict:
    """Names -> classes: what the file imports from qgis.*, and, for a plugin file, its module's classes."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qgis"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    if PLUGIN in path.parents:
        dotted = ".".join(path.relative_to(PLUGIN.parent).with_suffix("").parts).removesuffix(".__init__")
        namespace = vars(importlib.import_module(dotted))
    else:  # a probe of this test
        namespace = {}
        exec(compile(tree, str(path), "exec"), namespace)
    names.update({k: v for k, v in namespace.items() if isinstance(v, type)})
    return names


def qt6_findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes = _classes(path, tree)
    findings = []
    owners = {}  # id(Attribute node) -> (spelled owner, owner class) for self./cls. inside plugin classes
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("PyQt5", "PyQt6"):
            findings.append(f"{where}: import from {node.module} (use qgis.PyQt)")
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("PyQt5", "PyQt6") for a in node.names):
            findings.append(f"{where}: import of PyQt directly (use qgis.PyQt)")
        elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
            findings.append(f"{where}: def exec_ (Qt6 has exec)")
        elif isinstance(node, ast.ClassDef) and node.name in classes:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) \
                        and inner.value.id in ("self", "cls"):
                    owners[id(inner)] = (inner.value.id, classes[node.name])
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where = f"{path.name}:{node.lineno}"
        if node.attr == "exec_":
            findings.append(f"{where}: .exec_() (use .exec())")
        if id(node) in owners:
            spelled, owner = owners[id(node)]
        elif isinstance(node.value, ast.Name) and node.value.id in classes:
            spelled, owner = node.value.id, classes[node.value.id]
        else:
            continue
        enum = _unscoped(owner, node.attr)
        if enum:
            findings.append(f"{where}: {spelled}.{node.attr} is unscoped; write {spelled}.{enum}.{node.attr}")
    return findings


def test_sources_found():
    assert len(SOURCES) > 10 and PLUGIN / "plugin.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGIN)))
def test_no_unscoped_enum_exec_or_pyqt_import(path):
    assert qt6_findings(path) == []


FLAGS = "from qgis.core import QgsProcessingAlgorithm\nclass A(QgsProcessingAlgorithm):\n    def flags(self):\n"


@pytest.mark.parametrize("bad, expected, good", [
    ("from qgis.PyQt.QtCore import Qt\nROLE = Qt.UserRole\n", "write Qt.ItemDataRole.UserRole",
     "from qgis.PyQt.QtCore import Qt\nROLE = Qt.ItemDataRole.UserRole\n"),
    ("from qgis.core import Qgis\nLEVEL = Qgis.Warning\n", "write Qgis.MessageLevel.Warning",
     "from qgis.core import Qgis\nLEVEL = Qgis.MessageLevel.Warning\n"),
    ("from qgis.core import QgsProcessingParameterNumber as N\nT = N.Integer\n", "write N.Type.Integer",
     "from qgis.core import QgsProcessingParameterNumber as N\nT = N.Type.Integer\n"),
    ("from qgis.PyQt.QtWidgets import QDialogButtonBox\nB = QDialogButtonBox.Ok\n", "StandardButton.Ok",
     "from qgis.PyQt.QtWidgets import QDialogButtonBox\nB = QDialogButtonBox.StandardButton.Ok\n"),
    (FLAGS + "        return self.FlagCanCancel\n", "write self.Flag.FlagCanCancel",
     FLAGS + "        return self.Flag.FlagCanCancel\n"),
    (FLAGS + "        return A.FlagNoThreading\n", "write A.Flag.FlagNoThreading",
     FLAGS + "        return A.Flag.FlagNoThreading\n"),
    ("def run(dialog):\n    return dialog.exec_()\n", ".exec_()", "def run(dialog):\n    return dialog.exec()\n"),
    ("from PyQt5.QtCore import Qt\n", "use qgis.PyQt", "from qgis.PyQt.QtCore import Qt\n"),
])
def test_checker_catches_what_qgis4_refuses(tmp_path, bad, expected, good):
    """The rule itself: each spelling QGIS 4 refuses is reported, and its Qt6 form is not."""
    probe = tmp_path / "probe.py"
    probe.write_text(bad, encoding="utf-8")
    (finding,) = qt6_findings(probe)
    assert expected in finding
    probe.write_text(good, encoding="utf-8")
    assert qt6_findings(probe) == []


def test_metadata_declares_qt6():
    meta = dict(line.split("=", 1) for line in (PLUGIN / "metadata.txt").read_text(encoding="utf-8").splitlines()
                if "=" in line)
    assert meta.get("supportsQt6", "").strip() == "True"
    assert meta.get("qgisMaximumVersion", "").strip() == "4.99"
