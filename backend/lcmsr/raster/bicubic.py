"""Bicubic upsampling of a raster: the baseline row next to a model in an evaluation.

The same bicubic as the model's LR↑ skip and the trainer's ``bicubic_psnr``
(:func:`lcmsr.ops.upsample_bicubic`), streamed in blocks with a margin wider than the
kernel and the fill rule's reach, so any raster size gives what one whole-image call gives.  Invalid pixels are
filled by the one fill rule before the filter, and an output pixel is valid where its
LR pixel is.  The output grid is the SR's: pixel size divided by ``scale``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..ops import upsample_bicubic
from ..progress import Progress
from . import io
from .pipeline import _Recording
from .facts import band_samples, value_ranges
from .validity import FILL_ITERATIONS, fill_invalid

BLOCK_LR = io.BLOCK  # LR pixels per block side: scale x whole GeoTIFF tiles out
# Bicubic reaches 2 LR pixels each side, and a filled hole's values come from valid pixels up to
# FILL_ITERATIONS deeper: with this margin a block sees what the whole image shows it.
MARGIN_LR = 3 + FILL_ITERATIONS


def bicubic_upsample(src, dst, scale: int, progress: Progress | None = None) -> str:
    """Write the bicubic ``scale``-times enlargement of every band of ``src`` to the GeoTIFF ``dst`` (atomic)."""
    s = int(scale)
    progress = _Recording(progress or Progress())
    src, dst = os.fspath(src), os.fspath(dst)
    ds = io.open_raster(src)
    bands = list(range(1, ds.RasterCount + 1))
    info = io.describe(ds, src, bands)
    ds = None
    w, h = info.width, info.height
    spec = io.derive_output(info, w * s, h * s, 1.0 / s, info.data_type)
    spec.value_ranges = value_ranges(band_samples(src, bands))   # clamped as SR outputs are
    fmt = io.output_format(dst, spec.data_type, spec=spec, progress=progress)
    io.check_destination(dst, src, spec.estimated_bytes(), progress, converted=not fmt.streamed)

    def block(reader, x, y, bw, bh):
        x0, y0 = max(0, x - MARGIN_LR), max(0, y - MARGIN_LR)
        x1, y1 = min(w, x + bw + MARGIN_LR), min(h, y + bh + MARGIN_LR)
        values, valid = reader.read(x0, y0, x1 - x0, y1 - y0)
        fill_invalid(values, valid, np.zeros(values.shape[0], np.float32))
        up = upsample_bicubic(torch.from_numpy(values)[None], s)[0].numpy()
        oy, ox = (y - y0) * s, (x - x0) * s
        up = up[:, oy:oy + bh * s, ox:ox + bw * s]
        valid = valid[:, y - y0:y - y0 + bh, x - x0:x - x0 + bw].repeat(s, axis=1).repeat(s, axis=2)
        return x * s, y * s, up, valid

    io.write_blocks(src, bands, dst, spec, progress, (w, h), BLOCK_LR, block, fmt=fmt)
    return dst
