"""A standalone PyQGIS script (its own QgsApplication, then processing.run) finds the PyTorch that
'Install PyTorch' put into the profile the plugin is installed in, although such a script's
QgsApplication.qgisSettingsDirPath() is not that profile (~/.local/share/profiles/default)."""
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import sys
sys.path.insert(0, {plugins!r})
import lcmsr_qgis                      # as a script does to register the provider, before or after QgsApplication
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
from lcmsr_qgis import environment, torch_install
environment.backend_status()
import lcmsr_torch_probe
print("settings:", QgsApplication.qgisSettingsDirPath())
print("torch dir:", torch_install.torch_dir())
print("probe:", lcmsr_torch_probe.__file__)
app.exitQgis()
"""


def test_a_standalone_script_finds_the_plugin_owned_torch_folder(tmp_path):
    profile = tmp_path / "QGIS3" / "profiles" / "default"
    (profile / "python" / "plugins").mkdir(parents=True)
    (profile / "python" / "plugins" / "lcmsr_qgis").symlink_to(REPO / "lcmsr_qgis")
    torch_folder = profile / "python" / "lcmsr_torch"
    torch_folder.mkdir()
    (torch_folder / "lcmsr_torch_probe.py").write_text("")   # stands for the torch the installer put there
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_PLUGINPATH")}
    env.update(HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO / "backend"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(plugins=str(profile / "python" / "plugins"))],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert not lines["settings"].startswith(str(profile))    # the script's QGIS looks elsewhere ...
    assert lines["torch dir"] == str(torch_folder)            # ... the plugin still finds its own folder
    assert lines["probe"] == str(torch_folder / "lcmsr_torch_probe.py")
