"""Is the backend usable in this QGIS Python, which device will run, and why.

Used by the provider (to explain why algorithms cannot run), the settings
dialog's Diagnostics view and bug reports.  Never raises.
"""
from __future__ import annotations

import importlib
import os
import platform
import sys

from . import torch_install

# One line wherever the backend cannot run (log, Processing errors, message bar, dialogs): what is missing
# and where the button is.  The settings dialog installs PyTorch into the profile (torch_install).
SETTINGS_PLACE = "Raster ▸ LCMSR Super-Resolution ▸ Settings and models…"
INSTALL_HINT = "install it with 'Install PyTorch' in " + SETTINGS_PLACE


def add_extra_python_path(path: str | None) -> None:
    """Make a user-chosen site-packages (e.g. a venv with torch) importable."""
    if path and os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)


def _python_executable() -> str:
    """The interpreter QGIS embeds (sys.executable is the qgis binary inside QGIS)."""
    return torch_install.find_python() or sys.executable


def _why(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def backend_status() -> tuple[bool, str]:
    """(usable, message) of the runner the settings choose (lcmsr_qgis.worker): one line naming what is
    missing and how to install it; never raises.  The worker's check imports nothing into QGIS."""
    try:
        from . import worker

        if worker.runner_name() == worker.WORKER:
            return worker.worker_status()
    except ImportError:   # no QGIS (a bare import of the plugin): the in-process check below
        pass
    return in_process_status()


def in_process_status() -> tuple[bool, str]:
    """(usable, message) of the backend in QGIS's own interpreter (imports torch); never raises."""
    try:   # again here: a standalone script may import the plugin before its QgsApplication exists
        torch_install.activate()
    except Exception:
        pass
    try:
        importlib.import_module("lcmsr")
    except Exception as exc:
        return False, f"LCMSR cannot run: its backend 'lcmsr' does not import ({_why(exc)}); reinstall the plugin"
    missing = []
    for module in ("torch", "safetensors", "numpy"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing.append(f"{module} (not installed)" if exc.name == module else f"{module} ({_why(exc)})")
        except Exception as exc:  # a broken binary: OSError, RuntimeError
            missing.append(f"{module} ({_why(exc)})")
    if not missing:
        return True, "backend ready"
    return False, f"LCMSR needs PyTorch in QGIS's Python, missing: {', '.join(missing)}; {INSTALL_HINT}"


def manual_install_command() -> str:
    """The pip command the 'Install PyTorch' button runs (CPU build), for a terminal."""
    plan = torch_install.torch_plan("cpu")
    return " ".join(torch_install.pip_command(_python_executable(), _torch_dir(), plan))


def _torch_dir() -> str:
    try:
        return torch_install.torch_dir()
    except Exception:  # outside QGIS
        return "<QGIS profile>/python/" + torch_install.FOLDER


def diagnostics(device_request: str = "auto") -> str:
    """A plain-text report for bug reports: versions and which device runs and why."""
    lines = [f"LCMSR plugin: {_plugin_version()}", f"Python: {sys.version.split()[0]} ({_python_executable()})",
             f"Platform: {platform.platform()}"]
    try:
        from qgis.core import Qgis

        lines.append(f"QGIS: {Qgis.QGIS_VERSION}")
    except Exception as exc:
        lines.append(f"QGIS: not importable ({exc})")
    try:
        from osgeo import gdal

        lines.append(f"GDAL: {gdal.__version__}")
    except Exception as exc:
        lines.append(f"GDAL: not importable ({exc})")
    lines.append(f"Plugin-owned PyTorch folder: {_torch_dir()}"
                 + ("" if os.path.isdir(_torch_dir()) else " (not installed)"))
    ok, message = backend_status()
    if not ok:
        lines += [message, "Or in a terminal: " + manual_install_command()]
        return "\n".join(lines)
    from lcmsr.jobs import Job

    job = Job("diagnostics", {"device": device_request, "plugin_torch_dir": _torch_dir()})
    try:
        from . import worker

        runner = worker.runner()
        lines.append(f"Jobs run: {worker.RUNNER_LABELS[runner.name]}" + (f"; {message}" if runner.name == worker.WORKER
                                                                          else ""))
        lines += runner.run(job, None)["lines"]
    except ImportError:   # no QGIS: here
        from lcmsr.jobs import run

        lines += run(job)["lines"]
    except Exception as exc:   # a failed worker: its one line
        lines.append(f"The backend's report failed: {exc}")
    return "\n".join(lines)


def _plugin_version() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.txt")
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("version="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
