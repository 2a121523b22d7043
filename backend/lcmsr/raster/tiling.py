"""Tile plan over the LR raster and the weighted blend that makes tiles seamless.

Tiles overlap by a margin; each tile's output is multiplied by a smooth weight
window (a raised-cosine ramp over the overlap, never zero) and the weighted sums
are divided by the summed weights.

:class:`BlockBlender` (what the pipeline uses) bounds memory in both
directions: the output is cut into fixed square blocks, tiles run in vertical
stripes of a few tile columns (top to bottom inside a stripe), and a block is
handed out as soon as the last tile touching it was added.  In any order of a
2-D grid the frontier between done and not-done tiles is as long as the grid is
wide or high, so no order alone keeps it bounded: blocks on a stripe's right
edge, which wait for the next stripe, are spilled to a scratch folder on disk
and read back when that stripe reaches them.  In memory: the blocks under about
one tile of the current stripe.

Pure numpy: no GDAL, no torch.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .. import atomic


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Tile:
    """One model input: LR origin ``(x, y)`` and size ``(w, h)`` (the same for every tile of a plan).

    The tile may reach past the right/bottom raster edge by less than the
    alignment; ``read_w``/``read_h`` is the part inside the raster, the rest is
    replicate-padded by the reader.
    """
    index: int
    row: int
    col: int
    x: int
    y: int
    w: int
    h: int
    read_w: int
    read_h: int
    # Sides that meet a neighbouring tile get a ramp; sides on the raster border do not.
    ramp_left: bool
    ramp_top: bool
    ramp_right: bool
    ramp_bottom: bool


def axis_starts(length: int, tile: int, stride: int, align: int) -> list[int]:
    """Tile starts along one axis: a regular grid, plus the last tile shifted inward to the end.

    Every start is a multiple of ``align``; the last one is rounded *up*, so
    that tile may pass the end by up to ``align - 1`` pixels (padded), never leave
    pixels uncovered.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(_ceil_to(length - tile, align))
    return starts


@dataclass(frozen=True)
class TilePlan:
    width: int          # LR raster
    height: int
    tile_w: int         # LR tile size actually used (aligned; smaller when the raster is smaller)
    tile_h: int
    overlap: int        # LR overlap margin actually used
    align: int
    tiles: tuple[Tile, ...]

    @property
    def rows(self) -> int:
        return self.tiles[-1].row + 1 if self.tiles else 0

    @property
    def cols(self) -> int:
        return self.tiles[-1].col + 1 if self.tiles else 0


def plan_tiles(width: int, height: int, tile: int = 256, overlap: int = 32, align: int = 1) -> TilePlan:
    """Plan tiles of ``tile`` LR pixels overlapping by ``overlap``, origins multiples of ``align``.

    ``tile`` and ``overlap`` are rounded up to multiples of ``align`` (the model's
    LR multiple, so no tile is padded inside the model and position-seeded noise
    lines up); if that leaves the overlap at half the tile or more, the tile grows
    to fit it.  A raster smaller than a tile gets one tile, padded to ``align``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"raster of {width}x{height} pixels has nothing to tile")
    if tile < 1 or overlap < 0 or align < 1:
        raise ValueError(f"invalid tiling: tile={tile}, overlap={overlap}, align={align}")
    if 2 * overlap >= tile:
        raise ValueError(f"overlap {overlap} must be less than half the tile size {tile}")
    tile = _ceil_to(tile, align)
    overlap = _ceil_to(overlap, align)
    if 2 * overlap >= tile:
        # Valid values that rounding pushed apart (tile 16, overlap 4 with a model aligned to 16):
        # grow the tile rather than refuse or drop the blend that keeps tiles seamless.
        tile = _ceil_to(2 * overlap + 1, align)
    stride = tile - overlap
    tw = min(tile, _ceil_to(width, align))
    th = min(tile, _ceil_to(height, align))
    xs = axis_starts(width, tw, stride, align)
    ys = axis_starts(height, th, stride, align)
    tiles = []
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            tiles.append(Tile(
                index=len(tiles), row=r, col=c, x=x, y=y, w=tw, h=th,
                read_w=min(tw, width - x), read_h=min(th, height - y),
                ramp_left=x > 0, ramp_top=y > 0, ramp_right=x + tw < width, ramp_bottom=y + th < height))
    return TilePlan(width, height, tw, th, overlap, align, tuple(tiles))


@lru_cache(maxsize=64)
def _ramp_1d(length: int, ramp: int, start: bool, end: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float32)
    if ramp > 0:
        # sin^2 over pixel centres: smooth (C1) and strictly positive, so no pixel ever has zero weight.
        r = np.sin(0.5 * math.pi * (np.arange(ramp, dtype=np.float64) + 0.5) / ramp) ** 2
        r = r.astype(np.float32)
        if start:
            w[:ramp] = np.minimum(w[:ramp], r)
        if end:
            w[-ramp:] = np.minimum(w[-ramp:], r[::-1])
    w.setflags(write=False)
    return w


def blend_window(tile: Tile, overlap_hr: int, scale: int) -> np.ndarray:
    """[h*s, w*s] float32 separable raised-cosine weights of ``tile`` (ramp of ``overlap_hr`` HR pixels)."""
    wy = _ramp_1d(tile.h * scale, overlap_hr, tile.ramp_top, tile.ramp_bottom)
    wx = _ramp_1d(tile.w * scale, overlap_hr, tile.ramp_left, tile.ramp_right)
    return np.outer(wy, wx)


# ---------------------------------------------------------------- the blend, bounded in both directions

@dataclass
class Block:
    """A finished output block: HR pixels ``[y, y + h) x [x, x + w)``."""
    x: int
    y: int
    value: np.ndarray   # [C, h, w] float32 (or the blender's dtype), the blended result (0 where weight is 0)
    valid: np.ndarray   # [C, h, w] bool, nearest-upsampled LR validity (False where no tile ran)


def stripe_order(plan: TilePlan, stripe_cols: int) -> tuple[Tile, ...]:
    """Tiles in stripes of ``stripe_cols`` tile columns, each stripe top to bottom, rows left to right."""
    if stripe_cols < 1:
        raise ValueError(f"a stripe needs at least one tile column, got {stripe_cols}")
    return tuple(sorted(plan.tiles, key=lambda t: (t.col // stripe_cols, t.row, t.col)))


def stripe_columns(plan: TilePlan, scale: int, stripe_hr: int) -> int:
    """Tile columns per stripe so that a stripe is about ``stripe_hr`` HR pixels wide (at least one)."""
    stride_hr = max(1, (plan.tile_w - plan.overlap) * scale)
    return max(1, round(stripe_hr / stride_hr))


class _Acc:
    __slots__ = ("sum", "wsum", "valid")

    def __init__(self, bands: int, h: int, w: int, dtype=np.float32):
        self.sum = np.zeros((bands, h, w), dtype)
        self.wsum = np.zeros((h, w), dtype)  # the sums' type too: at 2**62 a float32 sum of weights is 1e11 off
        self.valid = np.zeros((bands, h, w), bool)


class BlockBlender:
    """Weighted blend into fixed output blocks (``block`` = side or (height, width)), each handed out
    as soon as complete.

    Tiles must be added in ``self.order`` (see :func:`stripe_order`).  ``hr`` is
    ``None`` for a skipped tile (all nodata): no weight, but its validity is
    recorded.  Blocks of the output's right/bottom edge are cut to the raster.
    ``spill_dir`` is where a scratch folder for blocks waiting on the next stripe
    is made (the output's folder: a RAM-backed /tmp would defeat the purpose);
    :meth:`close` removes it, and the next run in that folder removes one left
    by a killed process.  The sums do not depend on the stripe width or the
    block size; only the order in which a pixel's overlapping tiles are added
    does (float rounding, ~1e-7 relative).  ``dtype`` is the sums' type: float64 keeps the values
    of 32/64-bit integer and Float64 rasters that float32 would round or overflow.
    """

    def __init__(self, plan: TilePlan, bands: int, scale: int, block: int | tuple[int, int] = 256,
                 stripe_cols: int | None = None, spill_dir: str | None = None, dtype=np.float32,
                 region: tuple[int, int, int, int] | None = None):
        self.dtype = np.dtype(dtype)
        bh, bw = (block, block) if isinstance(block, int) else block
        if bh < 1 or bw < 1:
            raise ValueError(f"block size must be positive, got {block}")
        self.plan, self.bands, self.scale, self.block_h, self.block_w = plan, bands, scale, bh, bw
        # A region (LR x, y, w, h) blends only the output inside it, from the plan's tiles that touch it,
        # with the whole raster's weights: its pixels are the whole-raster blend's, whichever region
        # computes them.  Block coordinates are relative to the region's corner.
        rx, ry, rw, rh = region or (0, 0, plan.width, plan.height)
        if rw < 1 or rh < 1 or rx < 0 or ry < 0 or rx + rw > plan.width or ry + rh > plan.height:
            raise ValueError(f"region {region} is not inside the {plan.width}x{plan.height} raster")
        self.origin_x, self.origin_y = rx * scale, ry * scale
        self.out_w, self.out_h = rw * scale, rh * scale
        self.stripe_cols = stripe_cols or max(1, plan.cols)
        self.order = tuple(t for t in stripe_order(plan, self.stripe_cols)
                           if t.x < rx + rw and t.x + t.w > rx and t.y < ry + rh and t.y + t.h > ry)
        self._pos = 0
        # For every block, the positions (in self.order) of the tiles that touch it, in order.
        self._touches: dict[tuple[int, int], list[int]] = {}
        for pos, t in enumerate(self.order):
            for key in self._blocks_of(t):
                self._touches.setdefault(key, []).append(pos)
        self._cursor = {key: 0 for key in self._touches}
        self._open: dict[tuple[int, int], _Acc] = {}
        self._spilled: set[tuple[int, int]] = set()
        self._spill_parent = spill_dir
        self._spill_dir: str | None = None
        self.peak_open = 0      # most blocks held in memory at once (for tests and benchmarks)
        self.spilled_blocks = 0  # blocks written to the scratch folder

    # -- geometry ---------------------------------------------------------------
    def _hr_rect(self, t: Tile) -> tuple[int, int, int, int]:
        """The tile's HR pixels inside the output (the region), relative to its corner."""
        s, oy, ox = self.scale, self.origin_y, self.origin_x
        return (max(t.y * s - oy, 0), min((t.y + t.h) * s - oy, self.out_h),
                max(t.x * s - ox, 0), min((t.x + t.w) * s - ox, self.out_w))

    def _blocks_of(self, t: Tile):
        y0, y1, x0, x1 = self._hr_rect(t)
        bh, bw = self.block_h, self.block_w
        return [(by, bx) for by in range(y0 // bh, (y1 - 1) // bh + 1) for bx in range(x0 // bw, (x1 - 1) // bw + 1)]

    def _block_rect(self, key) -> tuple[int, int, int, int]:
        by, bx = key
        bh, bw = self.block_h, self.block_w
        return by * bh, min((by + 1) * bh, self.out_h), bx * bw, min((bx + 1) * bw, self.out_w)

    def _stripe(self, pos: int) -> int:
        return self.order[pos].col // self.stripe_cols

    # -- blending ---------------------------------------------------------------
    def add(self, tile: Tile, hr: np.ndarray | None, valid: np.ndarray) -> list[Block]:
        """Add one tile's HR output ``[C, h*s, w*s]`` and LR validity ``[C, read_h, read_w]``."""
        if self._pos >= len(self.order) or tile.index != self.order[self._pos].index:
            expected = self.order[self._pos].index if self._pos < len(self.order) else None
            raise ValueError(f"tile {tile.index} added out of order (expected {expected})")
        s = self.scale
        if hr is not None and hr.shape != (self.bands, tile.h * s, tile.w * s):
            raise ValueError(f"tile {tile.index}: model output {tuple(hr.shape)} is not "
                             f"{(self.bands, tile.h * s, tile.w * s)}")
        # The tile's HR corner relative to the region's (negative where the tile starts before it).
        ty0, tx0 = tile.y * s - self.origin_y, tile.x * s - self.origin_x
        _, ty1, _, tx1 = self._hr_rect(tile)
        weights = blend_window(tile, self.plan.overlap * s, s) if hr is not None else None
        done = []
        for key in self._blocks_of(tile):
            acc = self._take(key)
            by0, by1, bx0, bx1 = self._block_rect(key)
            y0, y1, x0, x1 = max(ty0, by0), min(ty1, by1), max(tx0, bx0), min(tx1, bx1)
            dst = (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))
            src = (slice(y0 - ty0, y1 - ty0), slice(x0 - tx0, x1 - tx0))
            if hr is not None:
                w = weights[src]
                acc.sum[(slice(None),) + dst] += hr[(slice(None),) + src] * w
                acc.wsum[dst] += w
            # HR pixel (Y, X) lies in LR pixel (Y // s, X // s): nearest upsampling of the validity.
            ry = (np.arange(y0, y1) + self.origin_y) // s - tile.y
            rx = (np.arange(x0, x1) + self.origin_x) // s - tile.x
            acc.valid[(slice(None),) + dst] |= valid[:, ry[:, None], rx[None, :]]
            self._cursor[key] += 1
            if self._cursor[key] == len(self._touches[key]):
                done.append(self._finish(key))
        self._pos += 1
        self.peak_open = max(self.peak_open, len(self._open))
        if self._pos < len(self.order) and self.order[self._pos].row != tile.row:
            self._spill_waiting()
        return done

    def _take(self, key) -> _Acc:
        acc = self._open.get(key)
        if acc is not None:
            return acc
        if key in self._spilled:
            path = self._spill_path(key)
            with np.load(path) as z:
                acc = _Acc.__new__(_Acc)
                acc.sum, acc.wsum, acc.valid = z["sum"], z["wsum"], z["valid"]
            os.remove(path)
            self._spilled.discard(key)
        else:
            y0, y1, x0, x1 = self._block_rect(key)
            acc = _Acc(self.bands, y1 - y0, x1 - x0, self.dtype)
        self._open[key] = acc
        return acc

    def _finish(self, key) -> Block:
        acc = self._open.pop(key)
        covered = acc.wsum > 0
        value = acc.sum
        value /= np.where(covered, acc.wsum, 1)[None]
        value[:, ~covered] = 0
        acc.valid &= covered[None]
        y0, _, x0, _ = self._block_rect(key)
        return Block(x0, y0, value, acc.valid)

    # -- spilling -----------------------------------------------------------------
    def _spill_waiting(self) -> None:
        """A tile row is done: open blocks whose next tile lies in another stripe than the coming one
        would wait a whole stripe in memory, so they go to disk until then."""
        coming = self._stripe(self._pos)
        for key in [k for k in self._open if self._stripe(self._touches[k][self._cursor[k]]) != coming]:
            self._spill(key)

    def _spill(self, key) -> None:
        if self._spill_dir is None:
            # lcmsr.atomic's names: a killed run's folder is swept by the next lcmsr command here.
            parent = self._spill_parent or tempfile.gettempdir()
            atomic.sweep_stale(parent)
            self._spill_dir = atomic.temp_folder(parent, "lcmsr-blend")
        acc = self._open.pop(key)
        with open(self._spill_path(key), "wb") as f:
            np.savez(f, sum=acc.sum, wsum=acc.wsum, valid=acc.valid)
        self._spilled.add(key)
        self.spilled_blocks += 1

    def _spill_path(self, key) -> str:
        return os.path.join(self._spill_dir, f"{key[0]}_{key[1]}.npz")

    def close(self) -> None:
        """Remove the scratch folder (also after an error or a cancel)."""
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None
        self._open.clear()
        self._spilled.clear()
