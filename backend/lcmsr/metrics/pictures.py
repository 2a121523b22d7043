"""The evaluation report's pictures, with numpy alone: display stretch, a colour ramp with its legend, PNG bytes.

No plotting library: the plugin runs in whatever Python QGIS ships, so the report draws its own
pictures.  Arrays are ``[H, W, 3]`` uint8 RGB.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

NODATA_RGB = (0, 255, 255)     # where a picture has no valid value: cyan, neither a ramp colour nor common in imagery
# Inferno's anchors (dark -> bright): monotonic in lightness, readable in grey print and by most colour-blind eyes.
_RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                  (245, 125, 21), (250, 193, 39), (252, 255, 164)], np.float64)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file (8-bit RGB, no interlace) of ``[H, W, 3]`` uint8."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def stretch(values: np.ndarray, valid: np.ndarray, lo, hi) -> np.ndarray:
    """``[C, H, W]`` data -> ``[H, W, 3]`` RGB: the first three bands (one band: grey) mapped ``lo..hi`` (per
    band) onto 0..255; pixels not valid in every shown band are :data:`NODATA_RGB`."""
    shown = values[:3] if values.shape[0] >= 3 else values[:1].repeat(3, 0)
    lo = np.broadcast_to(np.asarray(lo, np.float64), (values.shape[0],))[:3]
    hi = np.broadcast_to(np.asarray(hi, np.float64), (values.shape[0],))[:3]
    if values.shape[0] < 3:
        lo, hi = np.repeat(lo[:1], 3), np.repeat(hi[:1], 3)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.clip((shown - lo[:, None, None]) / span[:, None, None] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = out.transpose(1, 2, 0).copy()
    out[~np.asarray(valid, bool)] = NODATA_RGB
    return out


def display_range(values: np.ndarray, valid: np.ndarray, byte: bool) -> tuple[np.ndarray, np.ndarray]:
    """The stretch every crop of one report shares: 0..255 for 8-bit data, else each band's 1st..99th
    percentile of ``values``' valid pixels (``valid`` ``[H, W]``)."""
    c = values.shape[0]
    if byte:
        return np.zeros(c), np.full(c, 255.0)
    ok = np.asarray(valid, bool)
    if not ok.any():
        return np.zeros(c), np.ones(c)
    pts = np.percentile(values[:, ok], [1, 99], axis=1)
    return pts[0], pts[1]


def ramp(x: np.ndarray, vmax: float) -> np.ndarray:
    """``[H, W]`` values 0..``vmax`` -> ``[H, W, 3]`` RGB on the ramp; NaN is :data:`NODATA_RGB`."""
    x = np.asarray(x, np.float64)
    t = np.clip(np.nan_to_num(x / vmax if vmax > 0 else x * 0, nan=0.0), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    out = (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f + 0.5).astype(np.uint8)
    out[np.isnan(x)] = NODATA_RGB
    return out


# 3x5 glyphs for the legend's numbers (rows top to bottom, 3 bits each, left bit first).
_GLYPHS = {"0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
           "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
           "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
           "+": "000010111010000", "e": "000111111100111", " ": "000000000000000"}


def text(s: str, zoom: int = 2) -> np.ndarray:
    """``[5 zoom, 4 zoom len(s), ]`` bool: ``s`` (digits, ``.-+e``) in a 3x5 pixel font."""
    cols = []
    for ch in s:
        g = np.array([int(b) for b in _GLYPHS.get(ch, _GLYPHS[" "])], bool).reshape(5, 3)
        cols += [g, np.zeros((5, 1), bool)]
    glyphs = np.concatenate(cols, axis=1) if cols else np.zeros((5, 0), bool)
    return glyphs.repeat(zoom, 0).repeat(zoom, 1)


def with_legend(rgb: np.ndarray, vmax: float, width: int | None = None) -> np.ndarray:
    """``rgb`` (a ramp picture) over a colour bar from 0 to ``vmax``, its two ends written beneath it."""
    h, w, _ = rgb.shape
    bar_w = max(64, w if width is None else width)
    canvas_w = max(w, bar_w)
    bar = ramp(np.tile(np.linspace(0, vmax, bar_w), (12, 1)), vmax)
    lo, hi = text("0"), text(f"{vmax:.3g}")
    canvas = np.full((h + 6 + 12 + 4 + lo.shape[0] + 4, canvas_w, 3), 255, np.uint8)
    canvas[:h, :w] = rgb
    canvas[h + 6:h + 18, :bar_w] = bar
    y = h + 22
    canvas[y:y + lo.shape[0], :lo.shape[1]][lo] = 0
    hi = hi[:, :bar_w]
    x = bar_w - hi.shape[1]
    canvas[y:y + hi.shape[0], x:bar_w][hi] = 0
    return canvas
