"""The plugin code is Qt6/QGIS 4-clean: what QGIS 4 refuses is caught here, on QGIS 3.22 as on 3.36+.

QGIS 4 (PyQt6) has only scoped enums (``Qt.ItemDataRole.UserRole``, ``Qgis.MessageLevel.Warning``), no
``exec_()`` and no ``PyQt5`` module.  PyQt5/sip accepts both spellings, so the plugin running here proves
nothing: this test resolves every ``X.Y...`` chain in ``lcmsr_qgis/`` that starts at a class (imported from
``qgis.*`` or defined in the plugin) or at ``self``/``cls`` inside a plugin class, and fails where

* ``Y`` is an enum member reached without its enum class.  On PyQt5/sip and for QGIS's Python enums such a
  member's type is the enum class nested in ``X`` (``type(Qt.UserRole) is Qt.ItemDataRole``); the scoped
  form ``X.E.Y`` reaches ``X.E`` first, which is a class, not a member;
* ``X.Y`` is one of the compatibility aliases QGIS >= 3.36 keeps for enums moved into ``Qgis`` and QGIS 4
  drops: a Python enum class reached under another name (``QgsProcessingAlgorithm.Flag`` *is*
  ``Qgis.ProcessingAlgorithmFlag``), or a member under another name (``Flag.FlagCanCancel`` *is*
  ``Qgis.ProcessingAlgorithmFlag.CanCancel``).  QGIS 3.22 has no aliases, so this part bites on the chroot's
  QGIS (``make test-qgis-ltr``), and ``lcmsr_qgis.qgis_enums`` gives each moved enum its scoped spelling.

QGIS's own Qt6 migration rules run too, through qgis-plugin-analyzer (tests/process/test_plugin_gate.py).
"""
import ast
import enum
import importlib
from pathlib import Path

import pytest
from conftest import plugin_sources
from qgis.core import Qgis

PLUGIN = Path(__file__).resolve().parents[2] / "lcmsr_qgis"
SOURCES = plugin_sources(PLUGIN)
_MISSING = object()
# QGIS >= 3.36: enums moved into Qgis are Python enums, and the old names are aliases of them.
ALIASES = isinstance(getattr(Qgis, "ProcessingAlgorithmFlag", None), enum.EnumMeta)


def _unscoped(owner, attr: str) -> str | None:
    """The enum class's name when ``owner.attr`` is one of its members reached without it."""
    kind = type(getattr(owner, attr, None))
    if isinstance(owner, type) and kind is not owner and getattr(owner, kind.__name__, None) is kind:
        return kind.__name__
    return None


def _scoped_name(kind) -> str:
    """How QGIS 4 spells a Python enum class: Qgis.X for the enums QGIS moved there."""
    if getattr(Qgis, kind.__name__, None) is kind:
        return f"Qgis.{kind.__name__}"
    return kind.__qualname__


def _alias(owner, attr: str, value) -> str | None:
    """The QGIS 4 spelling when ``owner.attr`` is a compatibility alias of a Python enum or of its member."""
    if not isinstance(owner, type):
        return None
    if isinstance(value, enum.EnumMeta) and value.__name__ != attr:
        return _scoped_name(value)
    if isinstance(value, enum.Enum) and value.name and (value.name != attr or type(value) is not owner):
        return f"{_scoped_name(type(value))}.{value.name}"
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


def _spelled(node) -> str:
    return f"{_spelled(node.value)}.{node.attr}" if isinstance(node, ast.Attribute) else getattr(node, "id", "?")


def qt6_findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes = _classes(path, tree)
    findings = []
    roots = {}  # id(Name node) -> the class it names: imported/defined classes, self/cls inside plugin classes
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
                if isinstance(inner, ast.Name) and inner.id in ("self", "cls"):
                    roots[id(inner)] = classes[node.name]
        elif isinstance(node, ast.Name) and node.id in classes and id(node) not in roots:
            roots[id(node)] = classes[node.id]

    resolved = {}

    def resolve(node):
        if id(node) not in resolved:
            if isinstance(node, ast.Name):
                resolved[id(node)] = roots.get(id(node), _MISSING)
            elif isinstance(node, ast.Attribute):
                owner = resolve(node.value)
                resolved[id(node)] = _MISSING if owner is _MISSING else getattr(owner, node.attr, _MISSING)
            else:
                resolved[id(node)] = _MISSING
        return resolved[id(node)]

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where = f"{path.name}:{node.lineno}"
        if node.attr == "exec_":
            findings.append(f"{where}: .exec_() (use .exec())")
        owner = resolve(node.value)
        if owner is _MISSING:
            continue
        spelled = _spelled(node.value)
        enum_name = _unscoped(owner, node.attr)
        scoped = _alias(owner, node.attr, resolve(node))
        if scoped:
            findings.append(f"{where}: {spelled}.{node.attr} is a compatibility alias; write {scoped}")
        elif enum_name and not isinstance(resolve(node), enum.Enum):
            findings.append(f"{where}: {spelled}.{node.attr} is unscoped; write {spelled}.{enum_name}.{node.attr}")
    return findings


def test_sources_found():
    assert len(SOURCES) > 10 and PLUGIN / "plugin.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGIN)))
def test_no_unscoped_enum_exec_or_pyqt_import(path):
    assert qt6_findings(path) == []


FLAGS = "from qgis.core import QgsProcessingAlgorithm\nclass A(QgsProcessingAlgorithm):\n    def flags(self):\n"
# The scoped spelling of an algorithm flag: QGIS >= 3.36 has Qgis.ProcessingAlgorithmFlag (and the old
# spelling is an alias there); QGIS 3.22 has only QgsProcessingAlgorithm.Flag.
if ALIASES:
    CAN_CANCEL = [(FLAGS + "        return self.FlagCanCancel\n", "write Qgis.ProcessingAlgorithmFlag.CanCancel",
                   FLAGS + "        return Qgis.ProcessingAlgorithmFlag.CanCancel\n"),
                  (FLAGS + "        return A.Flag.FlagNoThreading\n", "A.Flag is a compatibility alias",
                   FLAGS + "        return Qgis.ProcessingAlgorithmFlag.NoThreading\n")]
else:
    CAN_CANCEL = [(FLAGS + "        return self.FlagCanCancel\n", "write self.Flag.FlagCanCancel",
                   FLAGS + "        return self.Flag.FlagCanCancel\n"),
                  (FLAGS + "        return A.FlagNoThreading\n", "write A.Flag.FlagNoThreading",
                   FLAGS + "        return A.Flag.FlagNoThreading\n")]


@pytest.mark.parametrize("bad, expected, good", [
    ("from qgis.PyQt.QtCore import Qt\nROLE = Qt.UserRole\n", "write Qt.ItemDataRole.UserRole",
     "from qgis.PyQt.QtCore import Qt\nROLE = Qt.ItemDataRole.UserRole\n"),
    ("from qgis.core import Qgis\nLEVEL = Qgis.Warning\n", "write Qgis.MessageLevel.Warning",
     "from qgis.core import Qgis\nLEVEL = Qgis.MessageLevel.Warning\n"),
    ("from qgis.core import QgsProcessingParameterNumber as N\nT = N.Integer\n", ".Integer",
     "from qgis.core import QgsProcessingParameterNumber as N\nT = " +
     ("Qgis.ProcessingNumberParameterType.Integer\n" if ALIASES else "N.Type.Integer\n")),
    ("from qgis.PyQt.QtWidgets import QDialogButtonBox\nB = QDialogButtonBox.Ok\n", "StandardButton.Ok",
     "from qgis.PyQt.QtWidgets import QDialogButtonBox\nB = QDialogButtonBox.StandardButton.Ok\n"),
    *CAN_CANCEL,
    ("def run(dialog):\n    return dialog.exec_()\n", ".exec_()", "def run(dialog):\n    return dialog.exec()\n"),
    ("from PyQt5.QtCore import Qt\n", "use qgis.PyQt", "from qgis.PyQt.QtCore import Qt\n"),
])
def test_checker_catches_what_qgis4_refuses(tmp_path, bad, expected, good):
    """The rule itself: each spelling QGIS 4 refuses is reported, and its Qt6 form is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from qgis.core import Qgis\n" + bad, encoding="utf-8")
    findings = qt6_findings(probe)
    assert findings and any(expected in finding for finding in findings), findings
    probe.write_text("from qgis.core import Qgis\n" + good, encoding="utf-8")
    assert qt6_findings(probe) == []


def test_the_aliases_of_enums_moved_into_qgis_are_caught_where_they_exist(tmp_path):
    """QGIS >= 3.36: the old spellings of the enums moved into Qgis (which QGIS 4 drops) are findings, also
    written in full; on QGIS 3.22 they are the only spelling, and no finding."""
    probe = tmp_path / "probe.py"
    probe.write_text("from qgis.core import QgsProcessingParameterDefinition as D\nF = D.Flag.FlagAdvanced\n",
                     encoding="utf-8")
    findings = qt6_findings(probe)
    if ALIASES:
        assert findings and "write Qgis.ProcessingParameterFlag" in findings[0]
    else:
        assert findings == []


def test_moved_enums_resolve_to_the_scoped_spelling_where_it_exists():
    """lcmsr_qgis.qgis_enums: the Qgis.* member on QGIS >= 3.36, the old one (the same flag) before."""
    import qgis.core

    from lcmsr_qgis import qgis_enums

    def at(path):
        value = qgis.core
        for part in path.split("."):
            value = getattr(value, part, _MISSING)
        return value

    for name, (new, old) in qgis_enums.PAIRS.items():
        value = getattr(qgis_enums, name)
        assert (at(new) is not _MISSING) == ALIASES, new
        assert value == (at(new) if ALIASES else at(old))
        assert int(value) == int(at(old))     # the same flag bit either way
    with pytest.raises(AttributeError, match="neither"):
        qgis_enums.scoped("Qgis.NoSuchEnum.X", "QgsProcessingAlgorithm.NoSuch.X")


def test_metadata_declares_qt6():
    meta = dict(line.split("=", 1) for line in (PLUGIN / "metadata.txt").read_text(encoding="utf-8").splitlines()
                if "=" in line)
    assert meta.get("supportsQt6", "").strip() == "True"
    assert meta.get("qgisMaximumVersion", "").strip() == "4.99"
