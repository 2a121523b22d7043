"""Tile plan over the LR raster and the weighted blend that makes tiles seamless.

Tiles overlap by a margin; each tile's output is multiplied by a smooth weight
window (a raised-cosine ramp over the overlap, never zero) and the weighted sums
are divided by the summed weights.  Only the HR rows still reachable by a tile
are held in memory: once every tile of a tile row is added, the rows above the
next tile row are final and handed out as a strip, so memory is bounded by
(tile rows x raster width), not by the raster size.

Pure numpy: no GDAL, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


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
    lines up).  A raster smaller than a tile gets one tile, padded to ``align``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"raster of {width}x{height} pixels has nothing to tile")
    if tile < 1 or overlap < 0 or align < 1:
        raise ValueError(f"invalid tiling: tile={tile}, overlap={overlap}, align={align}")
    tile = _ceil_to(tile, align)
    overlap = _ceil_to(overlap, align)
    if 2 * overlap >= tile:
        raise ValueError(f"overlap {overlap} must be less than half the tile size {tile} "
                         f"(after rounding both to multiples of {align})")
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


@dataclass
class Strip:
    """Finished HR rows ``[y, y + rows)`` over the full output width."""
    y: int
    value: np.ndarray   # [C, rows, W*s] float32, the blended result (0 where weight is 0)
    valid: np.ndarray   # [C, rows, W*s] bool, nearest-upsampled LR validity (False where no tile ran)


class RowBandBlender:
    """Accumulates weighted tiles for the current row band and hands out finished strips.

    Tiles must be added in plan order (row-major).  ``hr`` is ``None`` for a
    skipped tile (all nodata): it contributes no weight but its validity is
    recorded.  Memory: two float32 buffers of [C, tile_h*s, W*s] and one LR bool
    mask of [C, tile_h, W].
    """

    def __init__(self, plan: TilePlan, bands: int, scale: int):
        self.plan, self.bands, self.scale = plan, bands, scale
        self.out_w, self.out_h = plan.width * scale, plan.height * scale
        self._rows_hr = plan.tile_h * scale
        self._top = 0        # HR row of buffer row 0 (always a multiple of scale)
        self._next = 0       # index of the next tile expected
        self._sum = np.zeros((bands, self._rows_hr, self.out_w), np.float32)
        self._wsum = np.zeros((self._rows_hr, self.out_w), np.float32)
        self._valid = np.zeros((bands, plan.tile_h, plan.width), bool)

    def add(self, tile: Tile, hr: np.ndarray | None, valid: np.ndarray) -> list[Strip]:
        """Add one tile's HR output ``[C, h*s, w*s]`` and LR validity ``[C, read_h, read_w]``."""
        if tile.index != self._next:
            raise ValueError(f"tile {tile.index} added out of order (expected {self._next})")
        self._next += 1
        strips = []
        s = self.scale
        if tile.y * s > self._top:
            strips.append(self._advance(tile.y * s))
        r0 = tile.y * s - self._top
        rows = min(tile.h * s, self.out_h - tile.y * s)
        cols = min(tile.w * s, self.out_w - tile.x * s)
        x0 = tile.x * s
        if hr is not None:
            if hr.shape != (self.bands, tile.h * s, tile.w * s):
                raise ValueError(f"tile {tile.index}: model output {tuple(hr.shape)} is not "
                                 f"{(self.bands, tile.h * s, tile.w * s)}")
            w = blend_window(tile, self.plan.overlap * s, s)[:rows, :cols]
            self._sum[:, r0:r0 + rows, x0:x0 + cols] += hr[:, :rows, :cols] * w
            self._wsum[r0:r0 + rows, x0:x0 + cols] += w
        lr0 = tile.y - self._top // s
        self._valid[:, lr0:lr0 + tile.read_h, tile.x:tile.x + tile.read_w] |= valid[:, :tile.read_h, :tile.read_w]
        if self._next == len(self.plan.tiles):
            strips.append(self._advance(self.out_h))
        return strips

    def _advance(self, new_top: int) -> Strip:
        """Emit HR rows [top, new_top) and move the buffer down so that it starts at ``new_top``."""
        s = self.scale
        n = min(new_top, self.out_h) - self._top
        covered = self._wsum[:n] > 0
        value = self._sum[:, :n].copy()
        value /= np.where(covered, self._wsum[:n], 1)[None]
        value[:, ~covered] = 0
        valid = np.repeat(np.repeat(self._valid[:, :n // s], s, axis=1), s, axis=2)
        valid &= covered[None]
        strip = Strip(self._top, value, valid)
        keep = self._rows_hr - n
        if keep > 0:
            # Rows still reachable by the next tile row move to the top; the rest restarts empty.
            self._sum[:, :keep] = self._sum[:, n:]
            self._wsum[:keep] = self._wsum[n:]
            self._valid[:, :keep // s] = self._valid[:, n // s:]
        self._sum[:, max(keep, 0):] = 0
        self._wsum[max(keep, 0):] = 0
        self._valid[:, max(keep, 0) // s:] = False
        self._top = new_top
        return strip
