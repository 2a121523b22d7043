"""Stream a georeferenced raster through an LCMSR model: read -> SR -> blend -> write.

Three threads overlap: a reader fills a small bounded queue with tiles, the
calling thread runs the model in batches (through :class:`lcmsr.inference.Inference`)
and blends, a writer writes finished blocks.  Memory does not depend on the
raster's size in either direction (see :class:`~lcmsr.raster.tiling.BlockBlender`):
tiles run in vertical stripes, output blocks are written as soon as complete,
blocks waiting for the next stripe are spilled to a scratch folder beside the
output, and the reader reopens its input per tile row so GDAL's block cache
holds one row of input tiles (the global GDAL_CACHEMAX is left alone: QGIS
shares it).  Only the calling thread talks to ``progress`` (QGIS objects must
not be touched off their thread).

A region of the raster (``region``) runs the whole raster's tiles that touch it and blends them with the
whole raster's weights, so a scene cut into units (:mod:`lcmsr.raster.scene`, :mod:`lcmsr.sr.units`) run by
any number of processes or machines gives the single-process output.

Seamless and deterministic: the diffusion noise of every tile is cut from one
noise field over the whole raster's latent grid, generated in fixed blocks
seeded by ``(seed, draw, block row, block column)``.  A pixel therefore gets the
same noise whatever the tile size, and tiles agree with a single big tile up to
the networks' finite receptive field, which the blend ramps hide.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .. import __version__, catalog, memory
from ..choices import CLI_TERMS, OUTPUT_TYPES, PRECISIONS, SR_DEFAULTS, Terms, canonical_sampler
from ..runtime import is_cpu_alloc_failure, resolve_device, resolve_precision
from ..normalizers import NORMALIZERS
from ..domain import Domain, DomainError, choose_model, fit_problems, parse_band_roles, plan_bands, state_roles
from ..normalization import Normalization
from ..paths import check_outputs, check_regular, raster_outputs
from ..progress import Eta, Progress, Timers
from ..sr.tile_model import TileModel, TileTooLarge
from . import io
from .facts import band_ranges, band_samples, input_facts, value_ranges
from .tiling import BlockBlender, plan_tiles, stripe_columns
from .validity import fill_invalid, neutral_values

_QUEUE_TILES = 2          # reader look-ahead, in batches
# Stripe width in HR pixels: rasters at most this wide are one stripe written in full-width strips;
# wider ones run in stripes of about this width, written in GeoTIFF-tile-aligned blocks.
STRIPE_HR = 2048
_STRIP_ROWS = 64          # strip height of one-stripe rasters (RasterWriter regroups to whole tile rows)
_QUEUE_BLOCKS = 8
MAX_SAMPLES = 64          # uncertainty samples K
MAX_BACK_PROJECTION = 50  # LR-consistency iterations


@dataclass
class SROptions:
    """One job's options; the defaults (and the CLI's and the plugin's) are lcmsr.choices.SR_DEFAULTS."""
    bands: list[int] | None = None   # 1-based input bands in model order; None = all (alpha excluded)
    # What each input band is, in band order (red, green, blue, nir ...; None = unknown), stated by the user over
    # what the file says or what is guessed from a sensor's usual stack; None = not stated.
    band_roles: list[str | None] | None = None
    tile: int = SR_DEFAULTS["tile"]          # LR pixels per tile side; 0: chosen (lcmsr.memory)
    overlap: int = SR_DEFAULTS["overlap"]    # LR pixels shared by neighbouring tiles
    batch: int = SR_DEFAULTS["batch"]        # tiles per model call; 0: chosen (lcmsr.memory)
    # GB the job may add to the process's memory on the CPU; tile and batch left at 0 are chosen to fit it.
    memory_budget: float = SR_DEFAULTS["memory_budget"]
    device: str = SR_DEFAULTS["device"]
    precision: str = SR_DEFAULTS["precision"]  # a PRECISIONS name; lcmsr.runtime.resolve_precision decides "auto"
    # None: the model's default sampler (ModelInfo.default_sampler: the one that measures best on its validation
    # split), else SR_DEFAULTS' (resolved per model in _prepare, said in the log).
    steps: int | None = None
    sampler: str | None = None
    seed: int = SR_DEFAULTS["seed"]
    output_type: str = SR_DEFAULTS["output_type"]  # "input" (the input's data type) | "float32"
    # The output's format is its extension's GDAL driver (lcmsr.raster.io.output_format).
    cog: bool = SR_DEFAULTS["cog"]                 # a Cloud Optimized GeoTIFF (.tif), overviews included
    overviews: bool = SR_DEFAULTS["overviews"]     # build overviews (average) into the output, or a .ovr beside it
    creation_options: list[str] = field(default_factory=list)   # NAME=VALUE for the driver, over the defaults
    # Speed options (lcmsr.inference): results equal fp32 eager up to float (channels_last) or bf16 rounding.
    channels_last: bool | None = None  # None: on the CPU (measured faster), not on CUDA (measured slower)
    compile: bool = False              # torch.compile, eager fallback (said) where it fails
    cuda_graphs: bool = False          # CUDA: replay each tile shape as a CUDA graph
    # The domain guard: an input outside the model's domain stops the job unless this is set (then it warns).
    ignore_domain: bool = False
    # Model files (or folders) to choose from when no model is given, besides the bundled ones.
    models: list[str] = field(default_factory=list)
    # How error messages name the options to change: the CLI's flags, or the plugin's parameter labels.
    terms: Terms = CLI_TERMS
    # Trust (docs/DESIGN.md, "Uncertainty and LR-consistency"): the uncertainty raster's path (None: not
    # written), its number of samples K, and the back-projection iterations (0 = off).
    uncertainty: str | None = None
    samples: int = SR_DEFAULTS["samples"]
    lr_consistency: int = SR_DEFAULTS["lr_consistency"]

    def validate(self) -> None:
        if self.tile and self.tile < 8:
            raise ValueError(f"tile must be at least 8 LR pixels (or 0: chosen), got {self.tile}")
        if self.tile and not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"overlap must be in [0, tile/2), got overlap={self.overlap} with tile={self.tile}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be at least 0, got {self.overlap}")
        if self.batch < 0:
            raise ValueError(f"batch must be at least 1 (or 0: chosen), got {self.batch}")
        if not 0 < self.memory_budget < 1e6:
            raise ValueError(f"memory budget must be a positive number of GB, got {self.memory_budget}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        self.band_roles = parse_band_roles(self.band_roles)
        if self.sampler is not None:
            self.sampler = canonical_sampler(self.sampler)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output type must be one of {', '.join(OUTPUT_TYPES)}, got '{self.output_type}'")
        if not 0 <= self.lr_consistency <= MAX_BACK_PROJECTION:
            raise ValueError(f"LR-consistency iterations must be in 0..{MAX_BACK_PROJECTION}, got {self.lr_consistency}")
        if self.uncertainty:
            if not 2 <= self.samples <= MAX_SAMPLES:
                raise ValueError(f"uncertainty needs 2 to {MAX_SAMPLES} samples, got {self.samples}")
            if self.sampler == "faithful":
                raise ValueError("the faithful sampler draws no noise, so its samples do not spread: "
                                 "an uncertainty raster needs the consistency, ddim or ddpm sampler")


@dataclass
class SRResult:
    path: str
    device: str
    precision: str
    seconds: float
    tiles: int            # tiles run through the model
    skipped_tiles: int    # tiles that were entirely nodata
    width: int            # output size in pixels
    height: int
    warnings: list[str] = field(default_factory=list)
    bands: list[int] = field(default_factory=list)   # the input bands written, in output order
    model: str = ""                                   # the model file that ran ("" for an in-memory model)
    uncertainty: str = ""                             # the uncertainty raster written ("" for none)
    tile: int = 0                                     # the LR tile the plan chose (or the user gave)
    batch: int = 0                                    # images per model call (tiles x bands of a band-wise model)


class _Recording(Progress):
    """Forwards to the caller's progress and keeps the warnings for the result."""

    def __init__(self, parent: Progress):
        self.parent, self.warnings = parent, []

    def report(self, fraction, message=""):
        self.parent.report(fraction, message)

    def info(self, message):
        self.parent.info(message)

    def warn(self, message):
        self.warnings.append(message)
        self.parent.warn(message)

    def cancelled(self):
        return self.parent.cancelled()


# ---------------------------------------------------------------- threads

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Reader(threading.Thread):
    """Reads tiles in the given order, fills invalid values (:mod:`lcmsr.raster.validity`), pads to the
    tile size; owns its own GDAL handle, reopened for every tile row so that GDAL's block cache never
    holds more than one row of input."""

    def __init__(self, path, bands, tiles, neutral, out: queue.Queue, stop: threading.Event, timers: Timers):
        super().__init__(name="lcmsr-reader", daemon=True)
        self.path, self.bands, self.tiles, self.neutral, self.out, self.stop = path, bands, tiles, neutral, out, stop
        self.timers = timers

    def run(self):
        reader, row = None, None
        try:
            for tile in self.tiles:
                if self.stop.is_set():
                    return
                with self.timers.part("read"):
                    if reader is None or tile.row != row:
                        if reader is not None:
                            reader.close()
                        reader, row = io.WindowReader(self.path, self.bands, exact=True), tile.row
                    values, valid = reader.read(tile.x, tile.y, tile.read_w, tile.read_h)
                    skip = not valid.any()
                    data = None
                    if not skip:
                        fill_invalid(values, valid, self.neutral)
                        pad = ((0, 0), (0, tile.h - tile.read_h), (0, tile.w - tile.read_w))
                        # Replicate padding past the raster edge, as the model pads internally.
                        data = np.pad(values, pad, mode="edge") if any(p[1] for p in pad) else values
                if not _put(self.out, (tile, data, valid), self.stop):
                    return
            _put(self.out, _END, self.stop)
        except BaseException as exc:  # handed to the calling thread, which raises it
            _put(self.out, _Failure(exc), self.stop)
        finally:
            if reader is not None:
                reader.close()


class _Writer(threading.Thread):
    """Converts finished blocks to the output type and writes them; owns the output dataset meanwhile.

    Full-width blocks (a one-stripe raster) go through ``write_rows``, which
    regroups them into whole GeoTIFF tile rows; other blocks are aligned to the
    GeoTIFF tiles already, so each tile is compressed and written exactly once.
    """

    def __init__(self, writer: io.RasterWriter, spec: io.OutputSpec, inbox: queue.Queue, timers: Timers):
        super().__init__(name="lcmsr-writer", daemon=True)
        self.writer, self.spec, self.inbox, self.timers = writer, spec, inbox, timers
        self.error: BaseException | None = None

    def run(self):
        while True:
            item = self.inbox.get()
            if item is _END:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                with self.timers.part("write"):
                    data, mask = io.finish_block(item.value, item.valid, self.spec)
                    if item.x == 0 and data.shape[2] == self.spec.width:
                        self.writer.write_rows(item.y, data, mask)
                    else:
                        self.writer.write(item.x, item.y, data, mask)
            except BaseException as exc:
                self.error = exc


# ---------------------------------------------------------------- the job

def _load_model(model_or_path, device: torch.device):
    if isinstance(model_or_path, (str, os.PathLike)):
        from ..weights import load_model  # torch-only; imported late so a missing file is a clear error

        check_regular(model_or_path, "model")  # a FIFO would block the reader forever

        return load_model(os.fspath(model_or_path), device=str(device))
    model = model_or_path
    if isinstance(model, torch.nn.Module):
        model.to(device)
        model.eval()
    return model


def _alignment(model, tile: int) -> int:
    """LR alignment of tile origins: the model's LR multiple, and whatever makes the tile's
    latent offset an integer (latent pixels per LR pixel = scale/8)."""
    align = int(model.lr_multiple)
    t = -(-tile // align) * align
    ratio = Fraction(model.latent_shape(t, t)[1], t)
    return align * ratio.denominator // math.gcd(align, ratio.denominator)


class _Job:
    """One raster (or one region of it, ``region`` = LR x, y, w, h) through a :class:`TileModel`: the
    tiles of the whole raster's plan that touch the region are read, run, blended and written."""

    def __init__(self, src, dst, model, info, spec, options, device, precision, progress,
                 norm: Normalization | None = None, bandwise: bool = False, fmt: io.OutputFormat | None = None,
                 uspec: io.OutputSpec | None = None, ufmt: io.OutputFormat | None = None,
                 region: tuple[int, int, int, int] | None = None, timers: Timers | None = None):
        self.src, self.dst, self.model, self.info, self.spec, self.fmt = src, dst, model, info, spec, fmt
        self.uspec, self.ufmt = uspec, ufmt   # the uncertainty raster's (options.uncertainty)
        self.o, self.device, self.precision, self.progress = options, device, precision, progress
        self.region = region
        self.timers = timers or Timers()
        self.scale = int(model.info.scale)
        self.norm = norm or model.info.normalization
        self.bandwise = bandwise
        self.tiles_run = 0
        self.skipped = 0
        # With an uncertainty raster, each tile's result carries one more band: the spread of K samples.
        self.samples = options.samples if options.uncertainty else 1
        self.out_bands = len(info.bands) + (self.samples > 1)
        # Blends in float64 where float32 would round the input's or the output's values (64-bit types),
        # or where weighted sums of values near float32's limit (3.4e38) could overflow.
        huge = any(max(abs(lo), abs(hi)) > 1e30 for lo, hi in io.output_bounds(spec))
        self.work = max(io.exact_work_type(info.data_type), io.exact_work_type(spec.data_type),
                        np.dtype(np.float64 if huge else np.float32), key=lambda d: d.itemsize)
        # Model outputs are clamped to the output's bounds (within the blend type's range) before blending,
        # so blending never overflows; NaN/inf pass, for the one sanity check (io.check_finite) to stop.
        big = float(np.finfo(self.work).max)
        bounds = np.array([(max(lo, -big), min(hi, big)) for lo, hi in io.output_bounds(spec)])
        self.tm = TileModel(model, device, precision=precision, norm=self.norm, bandwise=bandwise, bounds=bounds,
                            work=self.work, batch=options.batch or 1, steps=options.steps, sampler=options.sampler,
                            seed=options.seed, lr_consistency=options.lr_consistency, samples=self.samples,
                            channels_last=options.channels_last, compile=options.compile,
                            cuda_graphs=options.cuda_graphs, progress=progress, timers=self.timers)

    @property
    def batch(self) -> int:
        """Tiles per group: as many as give the tile model's batch of images (bands of a band-wise model)."""
        return self.tm.tiles_per_call(len(self.info.bands))

    # -- streaming ----------------------------------------------------------------
    def _plan(self, tile: int):
        """The whole raster's tile plan (a region runs the same tiles), stripes and output blocks."""
        o = self.o
        plan = plan_tiles(self.info.width, self.info.height, tile, o.overlap, _alignment(self.model, tile))
        s = self.scale
        width = self.region[2] if self.region else plan.width
        if width * s <= STRIPE_HR:
            stripe_cols, block = plan.cols, (_STRIP_ROWS, width * s)
        else:
            stripe_cols, block = stripe_columns(plan, s, STRIPE_HR), io.BLOCK
        return plan, stripe_cols, block

    def _batches(self, tiles_q: queue.Queue, writer=None):
        """Groups of consecutive tiles holding ``self.batch`` tiles to run (skipped tiles ride along)."""
        pending = []
        while True:
            self.progress.check()
            try:
                item = tiles_q.get(timeout=0.1)
            except queue.Empty:
                if writer is not None and writer.error is not None:
                    raise writer.error
                continue
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.exc
            pending.append(item)
            if sum(d is not None for _, d, _ in pending) >= self.batch:
                yield pending
                pending = []
        if pending:
            yield pending

    def run(self, tile: int) -> None:
        p = self.progress
        plan, stripe_cols, block = self._plan(tile)
        self.tiles_run = self.skipped = 0
        c = len(self.info.bands)
        unc = self.o.uncertainty
        blenders = [BlockBlender(plan, c, self.scale, block=block, stripe_cols=stripe_cols, region=self.region,
                                 spill_dir=os.path.dirname(os.path.abspath(self.dst)), dtype=self.work)]
        if unc:
            # The uncertainty raster: a second blend of the same tiles (its blocks complete with the main ones).
            blenders.append(BlockBlender(plan, 1, self.scale, block=block, stripe_cols=stripe_cols,
                                         region=self.region, dtype=self.work,
                                         spill_dir=os.path.dirname(os.path.abspath(unc))))
        total = len(blenders[0].order)
        images = self.tm.images_per_tile(c)
        p.info(f"{total} tile(s) of {plan.tile_w}x{plan.tile_h} LR pixels"
               + (f" (of {len(plan.tiles)}, for the region x={self.region[0]} y={self.region[1]} "
                  f"{self.region[2]}x{self.region[3]})" if self.region else "")
               + f", overlap {plan.overlap} (multiples of {plan.align}), batch {self.batch} tile(s)"
               + (f" = {self.batch * images} single-band images" if images > 1 else "")
               + f", stripes of {stripe_cols} tile column(s)")
        neutral = neutral_values(self.norm)
        stop = threading.Event()
        tiles_q: queue.Queue = queue.Queue(maxsize=max(2, _QUEUE_TILES * self.batch))
        reader = _Reader(self.src, self.info.bands, blenders[0].order, neutral, tiles_q, stop, self.timers)
        # Both outputs are finished (converted, checked) before either replaces what was at its path, so
        # they come as a pair or not at all, and a failure loses no older file.
        outputs = [io.AtomicRaster(self.dst, self.spec, p, fmt=self.fmt, deferred=True)]
        if unc:
            outputs.append(io.AtomicRaster(unc, self.uspec, p, fmt=self.ufmt, deferred=True))
        try:
            with contextlib.ExitStack() as stack:
                targets = [(stack.enter_context(o), o.spec) for o in outputs]
                self._stream(plan, total, blenders, reader, tiles_q, stop, targets)
                finishing = time.perf_counter()
            # Leaving the block finished the files: a COG's or another format's conversion, overviews, checks.
            self.timers.add("finish", time.perf_counter() - finishing)
            for o in outputs:
                o.publish()
        except BaseException:
            for o in outputs:
                o.abandon()
            raise
        finally:
            for blender in blenders:
                blender.close()

    def _stream(self, plan, total, blenders, reader, tiles_q, stop, targets) -> None:
        """Read, compute, blend and write every tile; one writer thread per output."""
        p, c = self.progress, len(self.info.bands)
        writers = [_Writer(out, spec, queue.Queue(maxsize=_QUEUE_BLOCKS), self.timers) for out, spec in targets]
        if self.device.type == "cpu" and total >= 4 * self.batch:
            # One call on one tile of the job's shape first, timed by nobody: the first call's one-time
            # costs (library pages, thread pool, allocator growth; measured 0-5 s on this project's
            # shared 2-core machine against 1.2 s per 192-pixel tile) would otherwise inflate the first
            # batch's time, which the first estimate of the time left scales by the tiles to come.
            self.tm.warm_up(c, plan.tile_h, plan.tile_w)
        reader.start()
        for writer in writers:
            writer.start()
        try:
            done = 0
            eta, said = Eta(total), -1   # the time left: on the bar each batch, in the log every 10 %
            for pending in self._batches(tiles_q, writers[0]):
                todo = [(t, d) for t, d, _ in pending if d is not None]
                outs = iter(self.tm([t for t, _ in todo], [d for _, d in todo]) if todo else [])
                for t, d, valid in pending:
                    hr = next(outs) if d is not None else None
                    # Main output: the bands; uncertainty: the extra band, valid where every input band is.
                    parts = [(hr if hr is None else hr[:c], valid),
                             (hr if hr is None else hr[c:], valid.all(axis=0, keepdims=True))]
                    for blender, writer, (value, ok) in zip(blenders, writers, parts):
                        with self.timers.part("blend"):
                            finished = blender.add(t, value, ok)
                        for b in finished:
                            self._send(writer.inbox, b, writer)
                del outs
                self.tiles_run += len(todo)
                self.skipped += len(pending) - len(todo)
                done += len(pending)
                eta.update(done, self.tiles_run, self.spec.width * self.spec.height * done // total)
                p.report(done / total, eta.text())
                if eta.seconds_left() is not None and done * 10 // total > said and done < total:
                    said = done * 10 // total
                    p.info(f"progress: {eta.text()}")
            for writer in writers:
                _put(writer.inbox, _END, threading.Event())
                writer.join()
                if writer.error is not None:
                    raise writer.error
        finally:
            stop.set()
            reader.join()
            for writer in writers:
                if writer.is_alive():
                    writer.error = writer.error or RuntimeError("aborted")
                    while writer.is_alive():
                        try:
                            writer.inbox.put(_END, timeout=0.1)
                        except queue.Full:
                            pass
                        writer.join(timeout=0.1)

    def _send(self, q: queue.Queue, item, writer: _Writer) -> None:
        while True:
            if writer.error is not None:
                raise writer.error
            self.progress.check()
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def choose_model_for(src: str, options: SROptions, progress: Progress, facts=None) -> str:
    """The bundled or registered model (``options.models``, ``LCMSR_MODELS``) whose domain fits ``src``
    best, said in the log with why; :class:`DomainError` listing every model when none fits."""
    facts = facts or state_roles(input_facts(os.fspath(src)), options.band_roles, options.terms)
    found, unreadable = catalog.candidates(catalog.model_paths(options.models))
    for message in unreadable:
        progress.warn(f"model skipped: {message}")
    path, _, why = choose_model(found, facts, options.bands, options.terms)
    progress.info(why)
    return path


def _fit(model, facts, src: str, ds, options: SROptions, progress) -> tuple:
    """The domain guard and the band plan: (domain, bands, normalisation, output value ranges).

    Stops with :class:`DomainError` (one line naming both sides) when the input's pixel size or
    data type is outside the model's domain, unless ``options.ignore_domain``; then it warns.
    """
    info = model.info
    domain = getattr(info, "domain", None) or Domain()
    if not domain.known:
        progress.warn(f"the model's domain is unknown (model file format {getattr(info, 'format_version', '?')}): "
                      f"whether {os.path.basename(src)} is imagery it was made for cannot be checked")
    bands, why, warnings = plan_bands(domain, int(info.bands), facts, options.bands, options.terms)
    progress.info(f"{facts.describe()}; using {why}")
    for message in warnings:
        progress.warn(message)
    problems = fit_problems(domain, facts)
    if problems:
        line = (f"{os.path.basename(src)} is outside the model's domain: {'; '.join(problems)}")
        if not options.ignore_domain:
            raise DomainError(line + f" -- use a model made for this imagery, or override with "
                                     f"{options.terms['ignore_domain']}")
        progress.warn(line + " (overridden: the result may invent detail that is not there)")
    samples = band_samples(src, bands, ds=ds)
    strategy = NORMALIZERS[domain.normalization]
    ranges = band_ranges(src, bands, samples=samples) if strategy.measures_input or domain.bandwise else None
    norm = info.normalization
    if strategy.measures_input or len(bands) != norm.bands:
        norm = Normalization(*strategy.input_range(norm.lo, norm.hi, ranges, len(bands)))
    if strategy.measures_input:
        progress.info("per-band stretch (1-99 %): " + "; ".join(
            f"band {b} {p1:g}..{p99:g}" for b, (p1, p99, _, _) in zip(bands, ranges)))
    # Every output value lies in its input band's value range (ringing and extrapolation are clamped):
    # measured on the stretch's sample, so exact up to STRETCH_SAMPLE pixels a side, inside it beyond.
    return domain, bands, norm, value_ranges(samples)


def provenance(model, model_or_path, options: SROptions, scale: int, bands: list[int]) -> dict[str, str]:
    """What made the output, as metadata keys of its default domain (every format keeps those): the
    model file's name and SHA-256 (what ``sha256sum`` prints), scale, sampler, steps, seed, input bands
    and the lcmsr version."""
    path = (os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike))
            else getattr(model, "source_path", None))   # lcmsr.weights.load_model records it
    p = io.PROVENANCE_PREFIX
    meta = {f"{p}MODEL": os.path.basename(path) if path else "(a model given in memory, not a file)"}
    if path:
        meta[f"{p}MODEL_SHA256"] = catalog.file_sha256(path)
    meta.update({f"{p}SCALE": str(scale), f"{p}SAMPLER": options.sampler, f"{p}STEPS": str(options.steps),
                 f"{p}SEED": str(options.seed), f"{p}INPUT_BANDS": ",".join(map(str, bands)),
                 f"{p}VERSION": __version__})
    return meta


UNCERTAINTY_DESCRIPTION = "uncertainty: std of {k} samples, RMS over bands"


def _uncertainty_format(options: SROptions, data_type, spec: io.OutputSpec | None = None) -> io.OutputFormat:
    try:
        return io.output_format(options.uncertainty, data_type, options.cog, options.overviews, bands=1, spec=spec)
    except io.RasterError as exc:
        raise io.RasterError(f"the uncertainty raster: {exc}") from None


def uncertainty_spec(spec: io.OutputSpec, options: SROptions) -> io.OutputSpec:
    """The uncertainty raster: one Float32 band on the SR output's grid and georeferencing, NaN where
    any input band is nodata, the output's provenance plus what the values are."""
    meta = {k: v for k, v in spec.metadata.items() if k.startswith(io.PROVENANCE_PREFIX)}
    meta[f"{io.PROVENANCE_PREFIX}UNCERTAINTY"] = (
        f"per-pixel standard deviation (unbiased) of {options.samples} samples with different noise, "
        f"root-mean-square over the bands, in the output's data units")
    nan = float("nan")
    return dataclasses.replace(
        spec, data_type=io.gdal.GDT_Float32, metadata=meta,
        band_descriptions=[UNCERTAINTY_DESCRIPTION.format(k=options.samples)],
        color_interp=[], nodata=[nan], offsets=[None], scales=[None],
        unit_types=[spec.unit_types[0] if spec.unit_types and len(set(spec.unit_types)) == 1 else ""],
        band_metadata=[{}], fill=[nan], mask=False, value_ranges=None, rpc=dict(spec.rpc))


def _tile_and_batch(model, info, options: SROptions, device, precision, bandwise: bool, bands: int,
                    progress) -> tuple[int, int]:
    """The tile (LR pixels) and the batch (images per model call: tiles, times the bands of a band-wise
    model): the user's where given; on the CPU the rest chosen to fit the memory budget (lcmsr.memory,
    said in the log, with a warning where the user's values exceed it); on CUDA 256/8 with the
    out-of-memory back-off.  A band-wise model's bands are a batch of single-band images, not a
    reason for smaller tiles: the plan counts each band as one image of one tile."""
    if device.type == "cuda":
        return options.tile or memory.CUDA_TILE, options.batch or memory.CUDA_BATCH
    config = getattr(getattr(model.info, "config", None), "name", "")
    figures, measured = memory.figures(config, 1 if bandwise else int(model.info.bands), precision,
                                       getattr(model.info, "working_memory", None))
    plan = memory.choose(info.width, info.height, scale=int(model.info.scale), model=figures,
                         images_per_tile=bands if bandwise else 1, out_bands=bands, overlap=options.overlap,
                         budget_gb=options.memory_budget, tile=options.tile, batch=options.batch,
                         available=memory.available_bytes(), stripe_hr=STRIPE_HR,
                         max_batch=memory.MAX_BATCH * (bands if bandwise else 1))
    if not measured:
        progress.info(f"no working-memory figure for a '{config or 'custom'}' model: estimated from the "
                      f"small model's")
    progress.info(f"memory: {plan.reason}")
    if plan.estimate > plan.allowance:
        t = options.terms
        given = [t.set(k, v) for k, v in (("tile", options.tile), ("batch", options.batch)) if v]
        what = " and ".join(given) if given else f"the smallest choice ({t.set('tile', plan.tile)}, batch 1)"
        budget = t.names.get("memory_budget", "the memory budget")
        progress.warn(f"{what} may need more memory than allowed: about {plan.estimate / memory.GB:.2f} GB "
                      f"against {plan.allowance / memory.GB:.2f} GB (raise {budget} if the machine has it)")
    return plan.tile, plan.batch


@dataclass
class _Prepared:
    """Everything decided before the first tile, once per job (and, for a batch, once per scene)."""
    src: str
    dst: str
    options: SROptions
    model: object
    model_path: str | None
    device: torch.device
    precision: str
    domain: Domain
    bands: list[int]
    norm: Normalization
    value_ranges: list
    info: io.SourceInfo
    spec: io.OutputSpec
    fmt: io.OutputFormat | None
    uspec: io.OutputSpec | None
    ufmt: io.OutputFormat | None
    tile: int
    batch: int


def with_model_sampler(options: SROptions, info, progress) -> SROptions:
    """``options`` with the sampler and steps settled for this model: those given; where neither is given, the
    model file's default (ModelInfo.default_sampler, chosen by scripts/choose_sampler.py's rule on its validation
    split); else SR_DEFAULTS'.  A copy: a batch's options stay as the user gave them for the next raster."""
    if options.sampler is not None and options.steps is not None:
        return options
    chosen = getattr(info, "default_sampler", None) if options.sampler is None and options.steps is None else None
    if chosen and chosen["sampler"] == "faithful" and options.uncertainty:
        progress.info("the model's default sampler is faithful, which draws no noise: the uncertainty raster needs "
                      f"samples, so {SR_DEFAULTS['sampler']} with {SR_DEFAULTS['steps']} step(s) runs")
        chosen = None
    if chosen:
        progress.info(f"sampler {chosen['sampler']}" + ("" if chosen["sampler"] == "faithful" else
                                                         f", {chosen['steps']} step(s)")
                      + f" (the model's default, measured best on its validation split: {chosen.get('why', '')}"
                        f"; choose another sampler to override)")
        return dataclasses.replace(options, sampler=chosen["sampler"], steps=int(chosen["steps"]))
    return dataclasses.replace(options, sampler=options.sampler or SR_DEFAULTS["sampler"],
                               steps=options.steps or SR_DEFAULTS["steps"])


def device_and_precision(options: SROptions, progress, device=None) -> tuple[torch.device, str]:
    """The job's device and precision (lcmsr.runtime's rules), said once in the log with their reasons;
    ``device`` given: that device (a worker placed by its executor)."""
    if device is None:
        choice = resolve_device(options.device)
        device, reason = choice.device, choice.reason
    else:
        device, reason = torch.device(device), "chosen for this process"
    precision, why = resolve_precision(options.precision, device)
    if options.precision == "bf16" and precision != "bf16":
        progress.warn(why)   # emulated bf16 would be slower than fp32
    progress.info(f"device {device} ({reason}), precision {precision} ({why})")
    return device, precision


def _prepare(src, dst, model_or_path, options: SROptions, progress, *, device=None) -> _Prepared:
    """Check everything that can be checked, choose the model, device, precision, bands, normalisation,
    output spec, tile and batch: the run plan, logged once."""
    io.output_format(dst, None, options.cog, options.overviews, options.creation_options)

    # One handle for everything read before the tiles (facts, band checks, stretch, output description).
    ds = io.open_raster(src)
    io.check_size(ds.RasterXSize, ds.RasterYSize, src)
    io.select_bands(ds, options.bands, src)   # band numbers and data types first: RasterError names the band
    facts = state_roles(input_facts(src, ds), options.band_roles, options.terms)
    if model_or_path is None:
        model_or_path = choose_model_for(src, options, progress, facts)
    # An output may never be an input: not the raster, any file it is made of (a VRT's sources), the model.
    model_file = (os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike))
                  else getattr(model_or_path, "source_path", None))
    outputs = raster_outputs("the output", dst)
    if options.uncertainty:
        options.uncertainty = os.fspath(options.uncertainty)
        _uncertainty_format(options, None)
        outputs += raster_outputs("the uncertainty raster", options.uncertainty)
    check_outputs(outputs, [("the input raster", src), ("the model file", model_file)]
                  + [("a file of the input raster", f) for f in ds.GetFileList() or []])

    device, precision = device_and_precision(options, progress, device)

    model = _load_model(model_or_path, device)
    options = with_model_sampler(options, model.info, progress)
    domain, bands, norm, ranges = _fit(model, facts, src, ds, options, progress)
    bands = io.select_bands(ds, bands, src)
    info = io.describe(ds, src, bands)
    ds = None
    if not domain.bandwise:
        io.check_band_count(bands, int(model.info.bands), src, info.band_count, options.terms)
    scale = int(model.info.scale)
    for message in io.source_warnings(info):
        progress.warn(message)

    out_type = info.data_type if options.output_type == "input" else io.gdal.GDT_Float32
    spec = io.derive_output(info, info.width * scale, info.height * scale, 1.0 / scale, out_type)
    spec.value_ranges = ranges
    io.check_output_type(spec, bands)
    spec.metadata.update(provenance(model, model_or_path, options, scale, bands))
    # The driver's probe: bands, type, the files it writes, nodata per band (settled into spec).
    fmt = io.output_format(dst, out_type, options.cog, options.overviews, options.creation_options,
                           spec=spec, progress=progress)
    io.check_destination(dst, src, spec.estimated_bytes(), progress, converted=not fmt.streamed)
    uspec = ufmt = None
    if options.uncertainty:
        uspec = uncertainty_spec(spec, options)
        ufmt = _uncertainty_format(options, uspec.data_type, uspec)
        io.check_destination(options.uncertainty, src, uspec.estimated_bytes(), progress,
                             converted=not ufmt.streamed)
    tile, batch = _tile_and_batch(model, info, options, device, precision, domain.bandwise, len(bands),
                                  progress)
    path = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    return _Prepared(src, dst, options, model, path, device, precision, domain, bands, norm, ranges, info,
                     spec, fmt, uspec, ufmt, tile, batch)


def _run(prep: _Prepared, progress, *, region=None, timers: Timers | None = None) -> _Job:
    """Stream the prepared job; on GPU out-of-memory with one tile, restart with half the tile."""
    options = prep.options
    job = _Job(prep.src, prep.dst, prep.model, prep.info, prep.spec, options, prep.device, prep.precision,
               progress, norm=prep.norm, bandwise=prep.domain.bandwise, fmt=prep.fmt,
               uspec=prep.uspec, ufmt=prep.ufmt, region=region, timers=timers)
    job.tm.batch = prep.batch
    tile = prep.tile
    while True:
        try:
            job.run(tile)
            return job
        except (MemoryError, RuntimeError) as exc:
            if not is_cpu_alloc_failure(exc):
                raise
            # The allocator's own text names no file and no way out: say both, in the caller's words.
            t = options.terms
            raise MemoryError(f"not enough memory to super-resolve {prep.src} with tiles of {tile} LR pixels in "
                              f"batches of {job.tm.batch} image(s): use a smaller {t['tile']} or {t['batch']}, "
                              f"or leave both to the memory budget") from None
        except TileTooLarge as exc:
            smaller = tile // 2
            if smaller < max(16, 2 * options.overlap + 1):
                t = options.terms
                raise RuntimeError(f"out of GPU memory even with one tile of {tile} LR pixels: "
                                   f"use {t.set('device', t['cpu'])}, or a smaller {t['overlap']} "
                                   f"({options.overlap})") from None
            progress.warn(f"out of GPU memory with one tile of {tile} LR pixels ({exc}): "
                          f"restarting with tiles of {smaller}")
            tile = smaller


def superresolve(src, dst, model_or_path, options: SROptions | None = None,
                 progress: Progress | None = None, *, device=None,
                 timers: Timers | None = None) -> SRResult:
    """Super-resolve raster ``src`` into ``dst`` with a model (or a model file path).

    ``dst``'s extension names its format (any GDAL raster driver that writes files; an unknown
    extension is a :class:`io.RasterError` before any work).  The output keeps the input's CRS,
    metadata, band descriptions, colour interpretation per band and nodata, not its band statistics,
    and records its provenance (:func:`provenance`); its geotransform is the input's with pixel size
    and rotation divided by the model's scale.  Raises :class:`io.RasterError`
    (bad input or options), :class:`io.RasterWriteError` (output could not be
    written) or :class:`~lcmsr.progress.Cancelled`; in every such case ``dst``
    is left as it was.  ``timers`` collects the seconds spent per part (benchmarks); ``device`` (a
    torch device) skips the device choice.
    """
    start = time.perf_counter()
    options = options or SROptions()
    options.validate()
    progress = _Recording(progress or Progress())
    src, dst = os.fspath(src), os.fspath(dst)
    prep = _prepare(src, dst, model_or_path, options, progress, device=device)
    job = _run(prep, progress, timers=timers)
    seconds = time.perf_counter() - start
    spec, device = prep.spec, prep.device
    progress.report(1.0, "done")
    progress.info(f"wrote {dst} ({spec.width}x{spec.height}, {job.tiles_run} tile(s), "
                  f"{job.skipped} skipped as nodata) in {seconds:.1f} s on {device}, "
                  f"{spec.width * spec.height / seconds / 1e6:.2f} MP/s")
    if options.uncertainty:
        progress.info(f"wrote the uncertainty raster {options.uncertainty} (spread of {options.samples} samples)")
    return SRResult(path=os.path.abspath(dst), device=str(device), precision=prep.precision, seconds=seconds,
                    tiles=job.tiles_run, skipped_tiles=job.skipped, width=spec.width, height=spec.height,
                    warnings=list(progress.warnings), bands=list(prep.bands), model=prep.model_path or "",
                    uncertainty=os.path.abspath(options.uncertainty) if options.uncertainty else "",
                    tile=prep.tile, batch=job.tm.batch)
