"""A scene as units of work: plan once, run regions anywhere, assemble the parts (GDAL side).

:func:`plan_scene` decides everything once for a raster (model, bands, normalisation or stretch, value
ranges, tile, batch, output spec: :func:`lcmsr.raster.pipeline._prepare`) and cuts the LR raster into
square regions.  :func:`run_region` super-resolves one region into a part file: it runs the whole
raster's tiles that touch the region, blends them with the whole raster's weights
(:class:`~lcmsr.raster.tiling.BlockBlender` with a region) and writes only the region's pixels, so a
pixel comes out as the single-process run gives it, whichever unit computes it (up to the float
rounding of a different batch composition).  :func:`assemble` copies the parts into the final output
through the same atomic writer as ``lcmsr sr`` (format from the extension, COG, overviews, checks).

The plan is a plain dict (JSON): what a worker on another machine needs, nothing it must decide again.
"""
from __future__ import annotations

import os
import time

from .. import catalog
from ..domain import Domain
from ..normalization import Normalization
from ..progress import Progress, Timers
from . import io
from .pipeline import (SROptions, _load_model, _prepare, _Prepared, _Recording, _run, _tile_and_batch,
                       device_and_precision)

PLAN_VERSION = 1
PARTS_FOLDER = ".lcmsr-parts"
# Options a unit's worker uses; the rest (terms, models, uncertainty) belong to the driver.
_UNIT_OPTIONS = ("tile", "overlap", "batch", "memory_budget", "device", "precision", "steps", "sampler", "seed",
                 "output_type", "cog", "overviews", "creation_options", "channels_last", "compile", "cuda_graphs",
                 "ignore_domain", "lr_consistency")


class PlanError(ValueError):
    """A plan or unit that cannot run as given (changed model file, malformed spec): one line."""


def _regions(width: int, height: int, size: int) -> list[list[int]]:
    if size <= 0 or (width <= size and height <= size):
        return [[0, 0, width, height]]
    return [[x, y, min(size, width - x), min(size, height - y)]
            for y in range(0, height, size) for x in range(0, width, size)]


def parts_folder(dst: str) -> str:
    """Where a scene's part files live until assembled: a hidden folder beside the output."""
    dst = os.path.abspath(dst)
    return os.path.join(os.path.dirname(dst), PARTS_FOLDER, os.path.basename(dst) + ".parts")


def plan_scene(src, dst, model_or_path, options: SROptions | None = None, progress: Progress | None = None, *,
               unit_size: int = 0) -> dict:
    """The scene's plan: ``{"version", "src", "dst", "model", "model_sha256", "plan": {...}, "units": [...]}``.

    ``unit_size`` (LR pixels, rounded up to a multiple of the output's 256-pixel GeoTIFF tiles) cuts the
    raster into regions of that side; 0 = one unit.  Everything that can be checked is checked here,
    before any work: the input, the model and its domain, the output's format and destination."""
    options = options or SROptions()
    options.validate()
    if options.uncertainty:
        raise PlanError("a scene split into units writes no uncertainty raster: run `lcmsr sr --uncertainty` "
                        "for one raster")
    progress = _Recording(progress or Progress())
    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    prep = _prepare(src, dst, model_or_path, options, progress)
    if not prep.model_path:
        raise PlanError("a scene plan needs a model file (workers load it by path), not a model in memory")
    model_path = os.path.abspath(prep.model_path)
    size = 0 if unit_size <= 0 else -(-unit_size // io.BLOCK) * io.BLOCK
    scale = int(prep.model.info.scale)
    plan = {
        "src": src, "dst": dst, "model": model_path, "model_sha256": catalog.file_sha256(model_path),
        "options": {k: getattr(prep.options, k) for k in _UNIT_OPTIONS},   # the sampler settled for the model
        "device_type": prep.device.type, "tile": prep.tile, "batch": prep.batch,
        "bands": list(prep.bands), "bandwise": bool(prep.domain.bandwise),
        "norm": {"lo": list(prep.norm.lo), "hi": list(prep.norm.hi)},
        "value_ranges": [None if r is None else list(r) for r in (prep.value_ranges or [])],
        "scale": scale, "width": prep.info.width, "height": prep.info.height,
        "metadata": {k: v for k, v in prep.spec.metadata.items() if k.startswith(io.PROVENANCE_PREFIX)},
    }
    folder = parts_folder(dst)
    units = [{"scene": dst, "index": i, "region": region, "part": os.path.join(folder, f"{i:05d}.tif"),
              "plan": plan} for i, region in enumerate(_regions(prep.info.width, prep.info.height, size))]
    progress.info(f"{os.path.basename(src)}: " + (f"{len(units)} unit(s) of at most {size} LR pixels a side"
                                                   if len(units) > 1 else "one unit, the whole raster"))
    return {"version": PLAN_VERSION, "src": src, "dst": dst, "model": model_path,
            "model_sha256": plan["model_sha256"], "plan": plan, "units": units, "warnings": list(progress.warnings)}


def _check_model(plan: dict) -> str:
    path = plan["model"]
    try:
        sha = catalog.file_sha256(path)
    except OSError as exc:
        raise PlanError(f"the model file {path} of this plan cannot be read: {exc.strerror or exc}") from None
    if sha != plan["model_sha256"]:
        raise PlanError(f"the model file {path} changed since the plan was made (SHA-256 {sha[:12]}..., "
                        f"planned {plan['model_sha256'][:12]}...): plan the scene again")
    return path


def _prepared(plan: dict, dst: str, region, progress, device=None) -> _Prepared:
    """The pipeline's prepared job from a plan, for a part (region) or for the whole output."""
    options = SROptions(**plan["options"])
    options.validate()
    device, precision = device_and_precision(options, progress, device)
    model = _load_model(_check_model(plan), device)
    src, bands = plan["src"], [int(b) for b in plan["bands"]]
    ds = io.open_raster(src)
    if (ds.RasterXSize, ds.RasterYSize) != (plan["width"], plan["height"]):
        raise PlanError(f"{src} is {ds.RasterXSize}x{ds.RasterYSize} pixels, planned "
                        f"{plan['width']}x{plan['height']}: the input changed since the plan was made")
    bands = io.select_bands(ds, bands, src)
    info = io.describe(ds, src, bands)
    ds = None
    s = int(plan["scale"])
    x, y, w, h = region
    out_type = info.data_type if options.output_type == "input" else io.gdal.GDT_Float32
    spec = io.derive_output(info, w * s, h * s, 1.0 / s, out_type)
    if spec.geotransform is not None and (x or y):
        g = info.geotransform   # the region's corner, in the input's georeferencing
        spec.geotransform = (g[0] + x * g[1] + y * g[2], spec.geotransform[1], spec.geotransform[2],
                             g[3] + x * g[4] + y * g[5], spec.geotransform[4], spec.geotransform[5])
    if (x, y, w, h) != (0, 0, info.width, info.height):
        spec.gcps, spec.rpc = [], {}   # a part is an intermediate file: its pixel grid is the region's
    spec.value_ranges = [None if r is None else tuple(r) for r in plan["value_ranges"]] or None
    spec.metadata.update(plan["metadata"])
    fmt = io.output_format(dst, out_type, cog=False, overviews=False, spec=spec, progress=progress)
    domain = Domain(bandwise=bool(plan["bandwise"]))   # the run needs only this of the domain: checked when planned
    tile, batch = int(plan["tile"]), int(plan["batch"])
    if device.type != plan["device_type"]:
        # A worker of another kind than the planner's (a GPU worker for a CPU driver): its own memory plan.
        tile, batch = _tile_and_batch(model, info, options, device, precision, bool(plan["bandwise"]), len(bands),
                                      progress)
    return _Prepared(src, dst, options, model, plan["model"], device, precision, domain, bands,
                     Normalization(plan["norm"]["lo"], plan["norm"]["hi"]), spec.value_ranges, info, spec, fmt,
                     None, None, tile, batch)


def run_region(unit: dict, progress: Progress | None = None, *, device=None, timers: Timers | None = None) -> dict:
    """Super-resolve one unit's region into its part file (atomically); -> ``{"part", "sha256", "seconds",
    "tiles", "skipped", "device"}``.  The same unit gives the same bytes every time."""
    start = time.perf_counter()
    progress = _Recording(progress or Progress())
    plan, part = unit["plan"], os.path.abspath(unit["part"])
    region = tuple(int(v) for v in unit["region"])
    os.makedirs(os.path.dirname(part), exist_ok=True)
    prep = _prepared(plan, part, region, progress, device=device)
    whole = region == (0, 0, plan["width"], plan["height"])
    job = _run(prep, progress, region=None if whole else region, timers=timers)
    return {"part": part, "sha256": catalog.file_sha256(part), "seconds": time.perf_counter() - start,
            "tiles": job.tiles_run, "skipped": job.skipped, "device": str(prep.device)}


def assemble(scene: dict, progress: Progress | None = None) -> dict:
    """The parts of a scene -> its output (the format its extension names, COG by default for .tif when the
    plan asked for it), written atomically; the parts and their folder are removed.  -> ``{"path",
    "sha256", "seconds"}``.  A missing or unreadable part is a :class:`PlanError` naming it."""
    start = time.perf_counter()
    progress = _Recording(progress or Progress())
    plan, dst = scene["plan"], scene["dst"]
    units = scene["units"]
    for unit in units:
        if not os.path.isfile(unit["part"]):
            raise PlanError(f"part {unit['index']} of {dst} is missing ({unit['part']}): run its unit first")
    options = SROptions(**plan["options"])
    ds = io.open_raster(plan["src"])
    bands = io.select_bands(ds, [int(b) for b in plan["bands"]], plan["src"])
    info = io.describe(ds, plan["src"], bands)
    ds = None
    s = int(plan["scale"])
    out_type = info.data_type if options.output_type == "input" else io.gdal.GDT_Float32
    spec = io.derive_output(info, info.width * s, info.height * s, 1.0 / s, out_type)
    spec.value_ranges = [None if r is None else tuple(r) for r in plan["value_ranges"]] or None
    spec.metadata.update(plan["metadata"])
    fmt = io.output_format(dst, out_type, options.cog, options.overviews, options.creation_options, spec=spec,
                           progress=progress)
    io.check_destination(dst, plan["src"], spec.estimated_bytes(), progress, converted=not fmt.streamed)
    rows = io.BLOCK
    with io.AtomicRaster(dst, spec, progress, fmt=fmt) as writer:
        for n, unit in enumerate(units):
            progress.check()
            x, y, w, h = (int(v) * s for v in unit["region"])
            reader = io.WindowReader(unit["part"], None, exact=True)
            try:
                if (reader.width, reader.height) != (w, h):
                    raise PlanError(f"part {unit['index']} of {dst} is {reader.width}x{reader.height} pixels, "
                                    f"expected {w}x{h}: run its unit again")
                for r in range(0, h, rows):
                    values, valid = reader.read(0, r, w, min(rows, h - r))
                    data, mask = io.finish_block(values, valid, spec)
                    writer.write(x, y + r, data, mask)
            finally:
                reader.close()
            progress.report((n + 1) / len(units), f"assembling part {n + 1}/{len(units)}")
    remove_parts(scene)
    return {"path": dst, "sha256": catalog.file_sha256(dst), "seconds": time.perf_counter() - start}


def remove_parts(scene: dict) -> None:
    """Remove a scene's part files and their folder (and the parent folder when empty)."""
    for unit in scene["units"]:
        try:
            os.remove(unit["part"])
        except FileNotFoundError:
            pass
    folder = parts_folder(scene["dst"])
    for path in (folder, os.path.dirname(folder)):
        try:
            os.rmdir(path)
        except OSError:
            break

