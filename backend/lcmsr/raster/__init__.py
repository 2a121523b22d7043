"""Georeferenced raster I/O and the streaming SR pipeline — the only part of lcmsr that imports GDAL.

``pipeline.superresolve`` (SR of any GDAL raster, tiled, seamless, bounded
memory), ``degrade.degrade`` (make the LR raster of an HR raster),
``io`` (the one window reader, georeferencing, atomic output in the format its extension names),
``validity`` (the one nodata/validity rule and hole fill; pure numpy),
``tiling`` (tile plan and blend weights; pure numpy).

Submodules are imported on use, so ``lcmsr.raster.tiling`` and ``lcmsr.raster.validity``
work without GDAL.
"""
from __future__ import annotations


def gdal_version() -> str | None:
    """GDAL's version, or None where its Python bindings are not importable."""
    try:
        from osgeo import gdal
    except ImportError:
        return None
    return gdal.__version__
