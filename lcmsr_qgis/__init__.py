"""LCMSR super-resolution — QGIS plugin entry point.

Nothing here may raise at import time: if PyTorch or the backend is missing the
plugin still loads, registers its provider and says what is missing.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# The release zip bundles the backend under ext/ so that plugin and backend versions always match.
_EXT = os.path.join(_HERE, "ext")
if os.path.isdir(os.path.join(_EXT, "lcmsr")) and _EXT not in sys.path:
    sys.path.insert(0, _EXT)


def _activate_plugin_torch():
    """PyTorch installed by the plugin (<profile>/python/lcmsr_torch) goes on sys.path now, before anything
    imports torch, in the desktop and in qgis_process alike."""
    try:
        from .torch_install import activate

        activate()
    except Exception:  # outside QGIS (no profile): nothing to activate
        pass


_activate_plugin_torch()


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import LcmsrPlugin

    return LcmsrPlugin(iface)
