"""The backend is a plain Python package: no QGIS or Qt anywhere, GDAL only in lcmsr.raster."""
import ast
import subprocess
import sys
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[2] / "backend" / "lcmsr"
FORBIDDEN = ("qgis", "PyQt5", "PyQt6", "PySide2", "PySide6", "sip")


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_no_qt_or_qgis_import_in_backend_source():
    offenders = [f"{p.relative_to(BACKEND)} imports {m}" for p in BACKEND.rglob("*.py")
                 for m in _imported_modules(p) if m in FORBIDDEN]
    assert not offenders, offenders


def test_gdal_imported_only_by_raster_io_layer():
    allowed = {"raster"}
    offenders = []
    for path in BACKEND.rglob("*.py"):
        rel = path.relative_to(BACKEND)
        if rel.parts[0] in allowed:
            continue
        for module in _imported_modules(path):
            if module == "osgeo":
                # Lazy imports inside functions are allowed for file readers (training data, metrics);
                # a module-level import is not.
                tree = ast.parse(path.read_text(encoding="utf-8"))
                top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                       and "osgeo" in ast.unparse(n)]
                if top:
                    offenders.append(str(rel))
    assert not offenders, f"module-level GDAL import outside lcmsr.raster: {offenders}"


def test_importing_the_backend_loads_no_qgis_module():
    code = (
        "import sys, pkgutil, importlib, lcmsr\n"
        "for m in pkgutil.walk_packages(lcmsr.__path__, 'lcmsr.'):\n"
        "    if m.name.startswith('lcmsr.raster') or m.name == 'lcmsr.__main__':\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in %r)\n"
        "assert not bad, bad\n"
        "assert 'osgeo' not in sys.modules, 'GDAL imported outside lcmsr.raster'\n"
        "print('ok')\n" % (FORBIDDEN,)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "lcmsr", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: lcmsr" in proc.stdout


def test_backend_trains_and_super_resolves_without_gdal(tmp_path):
    """The GPU machine has torch but no GDAL: training on arrays, the model file and SR must work there."""
    code = f"""
import sys
sys.modules["osgeo"] = None          # `import osgeo` now fails, as on a machine without GDAL
import numpy as np, torch
torch.set_num_threads(1)
from lcmsr.train import TrainOptions, train_autoencoder, train_consistency
from lcmsr.weights import load_model
rng = np.random.default_rng(0)
src = [rng.integers(0, 256, (3, 64, 64)).astype(np.uint8)]
common = dict(sources=src, scale=4, patch=32, iterations=2, batch=2, config="tiny", lpips=False, log_every=1)
train_autoencoder(TrainOptions(checkpoint_dir={str(tmp_path / 'ae')!r}, **common))
common.pop("lpips")
r = train_consistency(TrainOptions(checkpoint_dir={str(tmp_path / 'lcm')!r}, stage1={str(tmp_path / 'ae')!r},
                                   out={str(tmp_path / 'm.safetensors')!r}, **common))
model = load_model(r.model_path)
out = model.sr(torch.zeros(1, 3, 8, 8))
assert out.shape == (1, 3, 32, 32)
assert "osgeo" not in [k for k, v in sys.modules.items() if v is not None]
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
