"""Text from untrusted files (model metadata, raster descriptions) made safe to show: the one place.

A crafted model file may carry ANSI escape codes, newlines or bidirectional overrides in its band
names, sensor, notes or training record; printed raw they repaint a terminal or a dialog.  The model
reader (:mod:`lcmsr.weights`) cleans every string of a file's description with :func:`clean`, and
:class:`~lcmsr.weights.ModelFileError` cleans its message, so nothing downstream needs to care.
Torch-free and GDAL-free.
"""
from __future__ import annotations


def safe_text(value, limit: int | None = None) -> str:
    """``str(value)`` with every non-printable character (controls, escapes, line breaks, format
    characters) shown as its escape code, e.g. ``\\x1b``; cut to ``limit`` characters."""
    s = str(value)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)
    return s if limit is None or len(s) <= limit else s[:limit] + "..."


def clean(data):
    """JSON-like data with every string in it (keys included) passed through :func:`safe_text`."""
    if isinstance(data, str):
        return safe_text(data)
    if isinstance(data, list):
        return [clean(v) for v in data]
    if isinstance(data, dict):
        return {safe_text(k): clean(v) for k, v in data.items()}
    return data
