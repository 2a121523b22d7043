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
    """(usable, message): one line naming what is missing and how to install it; never raises."""
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
    import numpy
    import torch

    import lcmsr
    from lcmsr.runtime import DeviceError, resolve_device

    lines += [f"lcmsr backend: {lcmsr.__version__} ({os.path.dirname(lcmsr.__file__)})",
              f"numpy: {numpy.__version__}", f"torch: {torch.__version__} (CUDA build: {torch.version.cuda}) from "
              f"{os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))}"
              + (" (the plugin-owned folder)" if _is_plugin_owned(torch.__file__) else " (no install needed)"),
              f"CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    try:
        choice = resolve_device(device_request)
        lines.append(f"Device for '{device_request}': {choice.device} — {choice.reason}")
    except DeviceError as exc:
        lines.append(f"Device for '{device_request}': unusable — {exc}")
    return "\n".join(lines)


def _is_plugin_owned(path: str) -> bool:
    try:
        return os.path.realpath(path).startswith(os.path.realpath(_torch_dir()) + os.sep)
    except OSError:
        return False


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
