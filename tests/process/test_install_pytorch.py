"""'Install PyTorch' for real: the CPU wheel from the package registry into a fresh profile, through the
code path of the settings dialog's task, then lcmsr:superresolve through qgis_process with only that
profile's torch (QGIS's own Python: neither the venv nor any torch on PYTHONPATH).

Here the registry serves torch 2.13.0+cpu (a 0.19 GB wheel, 0.8 GB installed, ~20 s); the PyTorch index
(download.pytorch.org) is not reachable from the project's machines, so the plan's extra index is turned
off and pip uses its own configuration.  pip's download cache lives in build/pip-cache, so a machine that
downloads the wheel over HTTP does it once (here the wheel lies in the local wheel store: nothing to cache).
"""
import os
import shutil
import subprocess
import time

import pytest

from conftest import DEV_PLUGINS, QGIS_PROCESS, REPO, qgis_process_env

pytestmark = [pytest.mark.slow, pytest.mark.qgis_process]

SAMPLE = REPO / "resources" / "sample" / "neon_lr.tif"


def _torchless_env(profile):
    env = qgis_process_env(DEV_PLUGINS, profile)
    env["PYTHONPATH"] = str(REPO / "backend")   # the backend (as the zip bundles it), no venv, no torch
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    from lcmsr_qgis import torch_install

    profile = tmp_path_factory.mktemp("fresh") / "profile"
    target = torch_install.torch_dir(str(profile / "profiles" / "default"))   # qgisSettingsDirPath() there
    with pytest.MonkeyPatch.context() as mp:   # the settings of pip's child process
        mp.setenv("PIP_CACHE_DIR", str(REPO / "build" / "pip-cache"))
        mp.setenv(torch_install.INDEX_ENV, "")
        seen = []
        start = time.monotonic()
        summary = torch_install.install(target, torch_install.torch_plan("cpu"), lambda f, line: seen.append(f))
        seconds = time.monotonic() - start
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(target) for f in files)
    print(f"\n{summary}: {seconds:.0f} s, {size / 2**30:.2f} GiB")
    assert seen[-1] == 100.0
    yield profile, target
    shutil.rmtree(target, ignore_errors=True)   # 0.8 GB: pytest keeps its last three temporary folders


def test_superresolve_in_qgis_process_uses_the_installed_torch(installed, tmp_path):
    from osgeo import gdal

    from lcmsr_qgis.torch_install import TORCH_VERSION

    profile, _ = installed
    env = _torchless_env(profile)
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "lcmsr_qgis"], env=env, capture_output=True, timeout=300)
    out = tmp_path / "sr.tif"
    proc = subprocess.run([QGIS_PROCESS, "run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE}", f"OUTPUT={out}"],
                          env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    # The profile's torch ran (the venv's is another version, and nothing put it on the path).
    assert f"torch build ({TORCH_VERSION}+cpu)" in text, text
    lr, sr = gdal.Open(str(SAMPLE)), gdal.Open(str(out))
    assert (sr.RasterXSize, sr.RasterYSize, sr.RasterCount) == (4 * lr.RasterXSize, 4 * lr.RasterYSize, 3)
    assert sr.GetGeoTransform()[1] == pytest.approx(lr.GetGeoTransform()[1] / 4)
    # The picture is the input's, 4x larger: each band's mean within a few grey levels of the input's,
    # with its detail (not a flat or a shifted image).
    import numpy as np

    for b in range(1, 4):
        low = lr.GetRasterBand(b).ReadAsArray().astype(float)
        high = sr.GetRasterBand(b).ReadAsArray().astype(float)
        assert abs(high.mean() - low.mean()) < 3, b
        pooled = high.reshape(low.shape[0], 4, low.shape[1], 4).mean(axis=(1, 3))
        assert np.corrcoef(pooled.ravel(), low.ravel())[0, 1] > 0.95, b


def test_the_running_session_uses_it_without_a_restart(installed):
    """A QGIS Python whose `import torch` failed finds the new folder at once (no restart)."""
    _, target = installed
    code = (
        "import sys\n"
        "sys.path[:0] = [%r, %r]\n"
        "import qgis.core\n"
        "try:\n    import lcmsr.runtime\nexcept ModuleNotFoundError as exc:\n    print('before:', exc.name)\n"
        "from lcmsr_qgis.torch_install import use_now\n"
        "print('use_now:', use_now(%r))\n"
        "import lcmsr.runtime, torch\n"
        "print('after:', torch.__file__)\n" % (str(REPO), str(REPO / "backend"), target))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "before: torch"
    assert lines[1] == "use_now: (True, '')"
    assert lines[2].startswith("after: " + target)
