"""LCMSR: single-step latent consistency super-resolution for remote-sensing imagery.

This package never imports QGIS or Qt; only :mod:`lcmsr.raster` imports GDAL.
"""

__version__ = "0.1.0"
