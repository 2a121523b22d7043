"""The real QGIS desktop under Xvfb with the plugin installed from the release zip (scripts/screenshot.sh).

One QGIS start (~20-40 s): the plugin must load from the zip's folder in a fresh profile, import torch through
its "Extra Python path" setting, open the Super-resolve raster dialog, run it from that dialog on the sample
raster and load a 4x larger result layer, and open its settings dialog.
"""
import json
import shutil
import subprocess

import pytest

from conftest import REPO, needs_environment, write_tiny_model

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "screenshot.sh"


@pytest.fixture(scope="module")
def desktop_run(tmp_path_factory):
    missing = [tool for tool in ("xvfb-run", "xauth", "qgis", "convert") if shutil.which(tool) is None]
    needs_environment(not missing, f"needs {', '.join(missing)} (apt-get install xvfb xauth imagemagick qgis)")
    pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("desktop")
    model = write_tiny_model(base / "tiny_x4.safetensors")
    proc = subprocess.run(["bash", str(SCRIPT), "--model", str(model), "--out", str(base / "img"),
                           "--work", str(base / "work"), "--timeout", "300"],
                          capture_output=True, text=True, timeout=480)
    status_file = base / "work" / "desktop-shot" / "status.json"
    log = (base / "work" / "desktop-shot" / "qgis.log")
    log_text = log.read_text(errors="replace") if log.exists() else "(no qgis.log)"
    assert status_file.exists(), f"QGIS ended before the script finished:\n{proc.stdout}\n{proc.stderr}\n{log_text}"
    return proc, json.loads(status_file.read_text()), base, log_text


def test_every_step_worked(desktop_run):
    proc, status, _, log_text = desktop_run
    assert proc.returncode == 0 and status["ok"], f"{status['steps']}\n{status['errors']}\n{log_text}"
    assert status["steps"]["run"] == "ok" and status["steps"]["shoot_result"] == "ok"


def test_plugin_and_backend_come_from_the_zip_and_the_extra_python_path(desktop_run):
    _, status, base, _ = desktop_run
    plugins = base / "work" / "desktop-profile" / "profiles" / "default" / "python" / "plugins"
    assert status["backend_ok"] is True
    assert status["lcmsr_file"].startswith(str(plugins / "lcmsr_qgis" / "ext")), status["lcmsr_file"]
    import sysconfig

    assert status["torch_file"].startswith(sysconfig.get_paths()["purelib"]), status["torch_file"]
    assert "lcmsr:superresolve" in status["algorithms"]


def test_result_layer_is_the_sample_times_four(desktop_run):
    _, status, _, _ = desktop_run
    assert status["result_size"] == [512, 512]   # neon_lr.tif is 128 x 128, the model is x4


def test_no_lcmsr_warning_or_error_in_the_qgis_log(desktop_run):
    _, status, _, log_text = desktop_run
    bad = [m for m in status["messages"]
           if m["level"] >= 1 and ("lcmsr" in m["tag"].lower() or "lcmsr" in m["message"].lower())]
    assert not bad, bad
    assert "Traceback" not in log_text, log_text


def test_screenshots_show_something(desktop_run):
    Image = pytest.importorskip("PIL.Image")
    _, status, base, _ = desktop_run
    for name in ("superresolve_dialog.png", "settings_dialog.png", "qgis_result.png"):
        path = base / "img" / name
        assert path.exists(), name
        assert path.stat().st_size < 300_000, f"{name} is {path.stat().st_size} bytes"
        with Image.open(path) as image:
            assert image.width >= 600 and image.height >= 400, (name, image.size)
            # A blank or black grab (nothing painted yet) has one or two colours; a dialog has many.
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 30, (name, len(colours or []))
