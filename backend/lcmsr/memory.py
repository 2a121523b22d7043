"""The batch and tile a CPU job runs with, chosen from the model's measured working memory and a budget.

A model call's peak memory grows with the HR pixels it produces: ``fixed + bytes per HR pixel x images
x (tile x scale)^2``, where *images* are what one call runs (tiles, times the bands of a band-wise model,
times any repeated samples).  Both figures were measured per model and precision by
``scripts/measure_working_memory.py`` (peak RSS a call adds, the pipeline's float64/float32 copies
included); docs/PERFORMANCE.md has the command and the figures.  The budget is what the job may add
to the memory the process already holds (Python, torch, GDAL, the model; QGIS in the plugin), capped by
half of what the system has available, so a loaded machine gets smaller batches.  torch-free.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

GB = 1e9
# (fixed bytes per call, bytes per HR output pixel per image) of peak RSS a model call adds, keyed
# (config name, bands the network sees, precision): the upper envelope of the points measured by
#   .venv/bin/python scripts/measure_working_memory.py --json build/working_memory.json
# (images x LR tile: 1x96 4x96 1x192 2x128 1x256) on this project's 2 shared cores (avx512_bf16),
# per-pixel figures rounded up by about 15 % because the same point measured twice differed by up to 30 % (glibc's arenas, oneDNN's scratch).
WORKING_MEMORY = {
    # measured 9 MiB + 663, 55 MiB + 391, 1 MiB + 659, 0 MiB + 360; bf16 re-measured for issue 23 (one 256² LR
    # image through lcmsr.sr.tile_model.TileModel with back-projection, 8 fresh processes per model, 1 and 2
    # threads): 0.36-0.86 GB a call, bimodal from run to run (oneDNN's scratch), so bf16 takes the high mode.
    ("small", 3, "fp32"): (10_000_000, 760), ("small", 3, "bf16"): (60_000_000, 800),
    ("small", 1, "fp32"): (10_000_000, 760), ("small", 1, "bf16"): (10_000_000, 800),
}
# Beyond the model call: tiles queued by the reader, the blender's blocks of the current stripe, the
# writer's queue and GDAL's caches.  Per output band and HR pixel of one stripe's row of tiles, bytes
# (float32 value + weight, twice for the blocks waiting for the next row), plus a fixed margin.
BLEND_BYTES = 16
MARGIN = 0.1 * GB
TILE_CHOICES = (256, 192, 128, 96)   # LR pixels; the largest that fits wastes least on overlaps
MAX_BATCH = 8                        # more tiles per call gain nothing measurable on the CPU
CUDA_TILE, CUDA_BATCH = 256, 8       # CUDA keeps these and backs off on out-of-memory


def available_bytes() -> int | None:
    """Memory the system can give without swapping: Linux's MemAvailable, else free physical pages, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None   # Windows, macOS without the name: the budget alone bounds the job


def figures(config: str, bands: int, precision: str, stored: dict | None = None) -> tuple[tuple[int, int], bool]:
    """((fixed bytes, bytes per HR pixel per image), whether measured for this model): the model file's own
    figures (``ModelInfo.working_memory``) where it has them, else this table's; an unmeasured model size
    takes the largest figures measured (the shipped small model's), which underestimate a larger model."""
    precision = precision if precision == "bf16" else "fp32"
    if stored and stored.get(precision):
        fixed, per_pixel = stored[precision]
        return (int(fixed), int(math.ceil(per_pixel))), True
    key = (config, 1 if bands == 1 else 3, precision)
    if key in WORKING_MEMORY:
        return WORKING_MEMORY[key], True
    return (max(f for f, _ in WORKING_MEMORY.values()), max(p for _, p in WORKING_MEMORY.values())), False


def working_bytes(model: tuple[int, int], images: int, tile_h: int, tile_w: int, scale: int) -> int:
    """Peak memory one model call adds on ``images`` LR tiles of ``tile_h x tile_w``; ``model`` is
    (fixed, per pixel) from :func:`figures`."""
    fixed, per_pixel = model
    return int(fixed + per_pixel * images * tile_h * scale * tile_w * scale)


@dataclass(frozen=True)
class MemoryPlan:
    tile: int
    batch: int
    estimate: int      # bytes the job is expected to add at its peak
    allowance: int     # bytes it may add
    reason: str        # one line for the log


def _tiles_along(size: int, tile: int, overlap: int) -> int:
    return 1 if size <= tile else math.ceil((size - tile) / (tile - overlap)) + 1


def choose(width: int, height: int, *, scale: int, model: tuple[int, int], images_per_tile: int, out_bands: int,
           overlap: int, budget_gb: float, tile: int = 0, batch: int = 0, available: int | None = None,
           stripe_hr: int = 2048, max_batch: int = MAX_BATCH) -> MemoryPlan:
    """The tile (LR pixels) and batch (images per call) for a ``width x height`` LR raster; 0 = choose.

    The largest of :data:`TILE_CHOICES` whose single image fits, then as many images per call as fit (at
    most ``max_batch`` and the raster's images: its tile count times ``images_per_tile``).  Values the
    user gave are kept, even where the estimate exceeds the allowance (the caller warns)."""
    allowance = int(budget_gb * GB)
    why = f"memory budget {budget_gb:g} GB"
    if available is not None and available // 2 < allowance:
        allowance = available // 2
        why = f"half of the {available / GB:.1f} GB available"

    def estimate(t: int, b: int) -> int:
        th, tw = min(t, height), min(t, width)
        blend = BLEND_BYTES * out_bands * min(width * scale, max(stripe_hr, t * scale)) * th * scale
        return working_bytes(model, b, th, tw, scale) + blend + int(MARGIN)

    tiles = [tile] if tile else [t for t in TILE_CHOICES if t > 2 * overlap] or [2 * overlap + 1]
    chosen = next((t for t in tiles if estimate(t, 1) <= allowance), tiles[-1])
    count = _tiles_along(width, chosen, overlap) * _tiles_along(height, chosen, overlap) * images_per_tile
    if batch:
        b = batch
    else:
        b = 1
        while b < min(max_batch, count) and estimate(chosen, b + 1) <= allowance:
            b += 1
    need = estimate(chosen, b)
    return MemoryPlan(chosen, b, need, allowance,
                      f"tiles of {min(chosen, width)}x{min(chosen, height)} LR pixels, batch {b} image(s): about "
                      f"{need / GB:.2f} GB of working memory within {allowance / GB:.2f} GB ({why})")
