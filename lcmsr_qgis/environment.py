"""Is the backend usable in this QGIS Python, which device will run, and why.

Used by the provider (to explain why algorithms cannot run), the settings
dialog's Diagnostics view and bug reports.  Never raises.
"""
from __future__ import annotations

import importlib
import os
import platform
import sys

INSTALL_HINT = (
    "LCMSR needs PyTorch in QGIS's Python ({python}). Install it with:\n"
    "  {python} -m pip install --user torch safetensors tqdm\n"
    "or point the plugin at a virtual environment that has it: Settings → LCMSR → "
    "'Extra Python path' (its site-packages folder), then restart QGIS."
)


def add_extra_python_path(path: str | None) -> None:
    """Make a user-chosen site-packages (e.g. a venv with torch) importable."""
    if path and os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)


def _python_executable() -> str:
    """The interpreter QGIS embeds, so an install hint targets the right Python.

    Inside QGIS ``sys.executable`` is the qgis binary or whatever ``python3`` comes first on PATH
    (pyenv, conda: seen under the Debian desktop), not necessarily the embedded interpreter; the
    interpreter of ``sys.exec_prefix`` is.
    """
    exe = sys.executable or ""
    prefixed = os.path.join(sys.exec_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    in_prefix = exe and os.path.realpath(exe).startswith(os.path.realpath(sys.exec_prefix) + os.sep)
    if os.path.exists(prefixed) and (not in_prefix or os.path.basename(exe).startswith("qgis")):
        return prefixed
    return exe or prefixed


def backend_status() -> tuple[bool, str]:
    """(usable, message).  The message names every missing piece and how to install it."""
    missing = []
    for module in ("numpy", "torch", "safetensors", "lcmsr"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken binary (OSError, RuntimeError)
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
    if not missing:
        return True, "backend ready"
    hint = INSTALL_HINT.format(python=_python_executable())
    return False, "Missing: " + "; ".join(missing) + "\n" + hint


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
    ok, message = backend_status()
    if not ok:
        lines.append(message)
        return "\n".join(lines)
    import numpy
    import torch

    import lcmsr
    from lcmsr.device import DeviceError, resolve_device

    lines += [f"lcmsr backend: {lcmsr.__version__} ({os.path.dirname(lcmsr.__file__)})",
              f"numpy: {numpy.__version__}", f"torch: {torch.__version__} (CUDA build: {torch.version.cuda})",
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
