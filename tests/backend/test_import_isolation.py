"""The backend is a plain Python package: no QGIS or Qt anywhere, GDAL only in lcmsr.raster."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_gdal_imported_only_in_lcmsr_raster():
    """Every `import osgeo` (module level or inside a function) outside lcmsr/raster is an offender:
    training, metrics and commands reach GDAL through lcmsr.raster's functions."""
    offenders = [f"{p.relative_to(BACKEND)} imports osgeo" for p in BACKEND.rglob("*.py")
                 if p.relative_to(BACKEND).parts[0] != "raster" and "osgeo" in _imported_modules(p)]
    assert not offenders, offenders


def test_without_gdal_raster_readers_fail_in_one_line_and_the_rest_works(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 64, 64), np.uint8))
    code = f"""
import sys
sys.modules["osgeo"] = None          # `import osgeo` now fails, as on a machine without GDAL
from lcmsr.commands.info import diagnostics
assert "GDAL            not importable" in diagnostics(), diagnostics()
from lcmsr.metrics.evaluate import evaluate_rasters, read_image
from lcmsr.train.data import SourceSet
assert read_image({str(tmp_path / 'a.npy')!r}).shape == (1, 64, 64)
for call in (lambda: evaluate_rasters("sr.tif", "hr.tif", 4), lambda: SourceSet.open(["train.tif"])):
    try:
        call()
    except RuntimeError as exc:
        assert "needs GDAL" in str(exc) and "\\n" not in str(exc), exc
    else:
        raise AssertionError("read a raster without GDAL")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


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
