"""Shared test helpers: paths, and a runner for the qgis_process command line."""
import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "build" / "qgis-profile"
DEV_PLUGINS = REPO / "build" / "dev-plugins"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper is broken in 3.22


def plugin_sources(root: Path = REPO / "lcmsr_qgis") -> list:
    """The plugin's own Python files, sorted; not the backend an installed zip bundles under ext/."""
    return sorted(p for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "ext")


def needs_environment(ok: bool, why: str) -> None:
    """Skip a test whose environment is missing, except under ``make test`` (LCMSR_TEST_STRICT=1),
    which installs that environment itself: there the gap is a failure, not a silent skip."""
    import pytest

    if ok:
        return
    if os.environ.get("LCMSR_TEST_STRICT") == "1":
        pytest.fail(f"{why} (LCMSR_TEST_STRICT=1: `make setup` should have provided it)")
    pytest.skip(why)


def write_tiny_model(path, scale: int = 4, bands: int = 3, seed: int = 0) -> str:
    """A tiny-config model file with seeded random weights (plumbing tests: its output means nothing)."""
    import torch

    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(seed)
    return str(save_model(path, build_model(tiny_config(scale=scale, bands=bands))))


@pytest.fixture(autouse=True, scope="session")
def iface_layer_tree_view():
    """pytest-qgis 2.1's stand-in iface has no layerTreeView, which Processing's result loading calls from
    QGIS 3.40 on: give it a real view of the project's layer tree (a no-op where it has one)."""
    import sys

    utils = sys.modules.get("qgis.utils")   # set up by pytest-qgis; never imported here for backend tests
    iface = getattr(utils, "iface", None)
    if iface is not None and not hasattr(iface, "layerTreeView"):
        from qgis.core import QgsLayerTreeModel, QgsProject
        from qgis.gui import QgsLayerTreeView

        view = QgsLayerTreeView()
        view.lcmsr_model = QgsLayerTreeModel(QgsProject.instance().layerTreeRoot())   # kept alive with the view
        view.setModel(view.lcmsr_model)
        type(iface).layerTreeView = lambda self: view
    yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny x4 RGB model file, one per test module.  One torch thread: the machine's cores are shared."""
    pytest.importorskip("torch").set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny_x4.safetensors")


@pytest.fixture
def runner_setting():
    """``runner_setting(name, python="")`` sets where jobs run (lcmsr_qgis.worker) for one test; the settings
    are restored after it."""
    from qgis.core import QgsSettings

    from lcmsr_qgis.settings import PREFIX

    keys = [PREFIX + "runner", PREFIX + "worker_python"]
    saved = {k: QgsSettings().value(k) for k in keys}

    def choose(name: str, python: str = "") -> None:
        QgsSettings().setValue(keys[0], name)
        QgsSettings().setValue(keys[1], python)

    yield choose
    for key, value in saved.items():
        if value is None:
            QgsSettings().remove(key)
        else:
            QgsSettings().setValue(key, value)


@pytest.fixture(scope="module")
def provider(qgis_processing):
    """The plugin's Processing provider, registered for the module (and removed after it if added here)."""
    from qgis.core import QgsApplication

    from lcmsr_qgis.provider import LcmsrProvider

    registry = QgsApplication.processingRegistry()
    added = None
    if registry.providerById("lcmsr") is None:
        added = LcmsrProvider()
        registry.addProvider(added)
    yield registry.providerById("lcmsr")
    if added is not None:
        registry.removeProvider(added)


def venv_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def qgis_process_env(plugin_path: Path = DEV_PLUGINS, profile: Path = PROFILE) -> dict:
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        QGIS_PLUGINPATH=str(plugin_path),
        # qgis_process runs the system Python: give it the venv's torch and the editable backend.
        PYTHONPATH=os.pathsep.join([venv_site_packages(), str(REPO / "backend")]),
    )
    return env


def run_qgis_process(args, plugin_path: Path = DEV_PLUGINS, profile: Path = PROFILE, timeout=600, check=True):
    profile.mkdir(parents=True, exist_ok=True)
    env = qgis_process_env(plugin_path, profile)
    # Plugins are loaded by qgis_process only when enabled in the profile (idempotent).
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "lcmsr_qgis"], env=env, capture_output=True, text=True,
                   timeout=timeout)
    proc = subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"qgis_process {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def qgis_process_json(args, **kwargs) -> dict:
    proc = run_qgis_process([*args[:1], "--json", *args[1:]], **kwargs)
    text = proc.stdout
    return json.loads(text[text.index("{"):])
