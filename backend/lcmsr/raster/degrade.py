"""Make the LR raster of an HR raster, exactly as the model's training pairs are made.

Antialiased bicubic downsampling (:func:`lcmsr.ops.downsample_bicubic`),
streamed in blocks with a margin wider than the kernel, so a raster of any size
gives the same result as one whole-image call (tested).  The georeferencing is
scaled the other way from SR: pixel size and rotation times ``scale``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ops import downsample_bicubic
from ..progress import Progress
from . import io
from .pipeline import _Recording
from .validity import fill_invalid

BLOCK_LR = 2 * io.BLOCK   # output pixels per block side: whole GeoTIFF tiles, each written once
MARGIN_LR = 3             # antialiased bicubic reaches 2 LR pixels each side; 3 leaves room


@dataclass
class DegradeResult:
    path: str
    width: int
    height: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def degrade(src, dst, scale: int, progress: Progress | None = None, bands: list[int] | None = None) -> DegradeResult:
    """Write the ``scale``-times smaller antialiased-bicubic version of ``src`` to the GeoTIFF ``dst``.

    Same data type (rounded and clipped), same bands (alpha excluded unless
    ``bands`` names it), nodata kept: an output pixel is nodata when most of its
    ``scale x scale`` source block is.  Atomic: ``dst`` is only replaced when complete.
    """
    start = time.perf_counter()
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    s = int(scale)
    progress = _Recording(progress or Progress())
    src, dst = os.fspath(src), os.fspath(dst)
    ds = io.open_raster(src)
    chosen = io.select_bands(ds, bands, src)
    info = io.describe(ds, src, chosen)
    ds = None
    io.check_size(info.width, info.height, src)
    w, h = info.width // s, info.height // s
    if w == 0 or h == 0:
        raise io.RasterError(f"{src} ({info.width}x{info.height} pixels) is smaller than the scale {s}")
    if (w * s, h * s) != (info.width, info.height):
        progress.warn(f"{src} is {info.width}x{info.height}, not a multiple of {s}: the last "
                      f"{info.width - w * s} column(s) and {info.height - h * s} row(s) are left out")
    for message in io.source_warnings(info):
        progress.warn(message)
    spec = io.derive_output(info, w, h, float(s), info.data_type)
    fmt = io.output_format(dst, spec.data_type, spec=spec, progress=progress)
    io.check_destination(dst, src, spec.estimated_bytes(), progress, converted=not fmt.streamed)

    io.write_blocks(src, chosen, dst, spec, progress, (w, h), BLOCK_LR,
                    lambda reader, x, y, bw, bh: (x, y, *_degrade_block(reader, x, y, bw, bh, s, w, h)), fmt=fmt)
    seconds = time.perf_counter() - start
    progress.info(f"wrote {dst} ({w}x{h}) in {seconds:.1f} s")
    return DegradeResult(os.path.abspath(dst), w, h, seconds, list(progress.warnings))


def _degrade_block(reader: io.WindowReader, x: int, y: int, bw: int, bh: int, s: int, w: int, h: int):
    """LR block (x, y, bw, bh) -> (values float32 [C, bh, bw], valid [C, bh, bw])."""
    # HR window = the block plus MARGIN_LR LR pixels each side, clipped to the (cropped) raster;
    # clipping at the raster edge is what the whole-image call sees too.
    x0, y0 = max(0, x - MARGIN_LR), max(0, y - MARGIN_LR)
    x1, y1 = min(w, x + bw + MARGIN_LR), min(h, y + bh + MARGIN_LR)
    values, valid = reader.read(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s)
    fill_invalid(values, valid, np.zeros(values.shape[0], np.float32))
    lr = downsample_bicubic(torch.from_numpy(values)[None], s)[0].numpy()
    c = values.shape[0]
    invalid = (~valid).reshape(c, y1 - y0, s, x1 - x0, s).mean(axis=(2, 4), dtype=np.float32)
    oy, ox = y - y0, x - x0
    return lr[:, oy:oy + bh, ox:ox + bw], invalid[:, oy:oy + bh, ox:ox + bw] <= 0.5
