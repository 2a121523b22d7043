"""Georeferenced raster I/O and the streaming SR pipeline — the only part of lcmsr that imports GDAL.

``pipeline.superresolve`` (SR of any GDAL raster, tiled, seamless, bounded
memory), ``degrade.degrade`` (make the LR raster of an HR raster),
``io`` (windows, nodata, georeferencing, atomic GeoTIFF/COG output),
``tiling`` (tile plan and blend weights; pure numpy).

Submodules are imported on use, so ``lcmsr.raster.tiling`` works without GDAL.
"""
