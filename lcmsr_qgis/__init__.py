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


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import LcmsrPlugin

    return LcmsrPlugin(iface)
