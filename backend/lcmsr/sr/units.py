"""The unit of work of scenes and catalogues: plain dicts in, files out, so any engine can run them.

* :func:`plan_scene` — decide once for a raster (model chosen by domain unless given, bands, stretch,
  value ranges, tile/batch, output spec) and cut it into units of about ``unit_size`` LR pixels a side.
* :func:`run_unit` — a pure function of one unit (source, region, bands, model file + SHA-256, options,
  seed) -> its part file, written atomically; the same unit gives the same bytes, on any process or
  machine that sees the same paths.  A unit's pixels are the single-process run's: the region runs the
  whole raster's tiles that touch it and blends them with the whole raster's weights.
* :func:`assemble` — the parts of a scene -> the output (format from its extension), atomically.

Units and plans are JSON-serialisable dicts (see :mod:`lcmsr.raster.scene` for their keys).  This module
imports neither torch nor GDAL until a function is called, so a driver or a scheduler can import it.
"""
from __future__ import annotations


def plan_scene(src, dst, model_or_path=None, options=None, progress=None, *, unit_size: int = 0) -> dict:
    """``{"src", "dst", "model", "model_sha256", "plan", "units": [unit, ...]}``; one-line errors
    (:class:`lcmsr.raster.io.RasterError`, :class:`lcmsr.domain.DomainError`, ...) for bad input."""
    from ..raster.scene import plan_scene as plan

    return plan(src, dst, model_or_path, options, progress, unit_size=unit_size)


def run_unit(unit: dict, progress=None) -> dict:
    """Run one unit: ``{"part", "sha256", "seconds", "tiles", "skipped", "device"}``."""
    from ..raster.scene import run_region

    return run_region(unit, progress)


def assemble(scene: dict, progress=None) -> dict:
    """All parts of ``scene`` done -> its output: ``{"path", "sha256", "seconds"}``; parts removed."""
    from ..raster.scene import assemble as join

    return join(scene, progress)
