"""One progress/cancel protocol for every long job (SR, training, evaluation).

The CLI adapts it to tqdm, the QGIS plugin to ``QgsProcessingFeedback`` / ``QgsTask``.
Backend code calls ``progress.report(...)`` and ``progress.check()``; it never
imports a UI toolkit.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time

from .text import safe_text

log = logging.getLogger("lcmsr")


class Cancelled(Exception):
    """Raised inside a job when the user asked to cancel; the job cleans up first."""


class Progress:
    """Base adapter: silent, never cancelled.  Subclasses override what they show."""

    def report(self, fraction: float, message: str = "") -> None:
        """``fraction`` in [0, 1] of the whole job; ``message`` a short status line."""

    def info(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)

    def cancelled(self) -> bool:
        return False

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user asked to stop."""
        if self.cancelled():
            raise Cancelled("cancelled by the user")


def duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '2 h 07 min': a time left as people read it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Eta:
    """The time left and the output rate of a tiled job, said the same way by every front end.

    ``update(done, computed, pixels)`` after each batch: ``done`` tiles passed (computed or skipped),
    ``computed`` of them run through the model, ``pixels`` output pixels finished so far (the rate).  The time left
    is the time per computed tile so far times the tiles still to come (each assumed to be computed:
    an all-nodata tile costs about nothing, so the estimate errs long where nodata is ahead).  There is
    no estimate before the first computed tile.  ``clock`` is injectable so tests need no sleeps.
    """

    def __init__(self, total: int, clock=time.monotonic):
        self.total, self.clock = total, clock
        self.start = clock()
        self.done = self.computed = self.pixels = 0
        self.elapsed = 0.0

    def update(self, done: int, computed: int, pixels: int) -> None:
        self.done, self.computed, self.pixels = done, computed, pixels
        self.elapsed = self.clock() - self.start

    def seconds_left(self) -> float | None:
        if not self.computed or self.elapsed <= 0:
            return None
        return self.elapsed / self.computed * (self.total - self.done)

    def text(self) -> str:
        """'tile 12/64, 1.35 MP/s, about 2 min 10 s left' (before the first computed tile: 'tile 0/64')."""
        left = self.seconds_left()
        if left is None:
            return f"tile {self.done}/{self.total}"
        return (f"tile {self.done}/{self.total}, {self.pixels / self.elapsed / 1e6:.2f} MP/s, "
                f"about {duration(left)} left")


class TqdmProgress(Progress):
    """A tqdm bar over [0, 100] %; messages go through ``tqdm.write`` so the bar stays intact."""

    def __init__(self, desc: str = "", disable: bool | None = None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(total=100.0, desc=desc, unit="%", disable=disable,
                         bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}] {postfix}")
        # No tqdm {remaining}: it extrapolates percent linearly; the job's message says the time left (Eta).
        self._last = 0.0

    def report(self, fraction: float, message: str = "") -> None:
        value = max(0.0, min(100.0, 100.0 * fraction))
        if value > self._last:
            self._bar.update(value - self._last)
            self._last = value
        if message:
            self._bar.set_postfix_str(message, refresh=False)

    def info(self, message: str) -> None:
        self._tqdm.write(safe_text(message), file=sys.stderr)   # one line: a path may hold a newline

    def warn(self, message: str) -> None:
        self._tqdm.write(f"WARNING: {safe_text(message)}", file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


class SubProgress(Progress):
    """Maps a child job's [0, 1] onto [start, stop] of a parent's, forwarding cancel and messages."""

    def __init__(self, parent: Progress, start: float, stop: float):
        self.parent, self.start, self.stop = parent, start, stop

    def report(self, fraction: float, message: str = "") -> None:
        self.parent.report(self.start + (self.stop - self.start) * fraction, message)

    def info(self, message: str) -> None:
        self.parent.info(message)

    def warn(self, message: str) -> None:
        self.parent.warn(message)

    def cancelled(self) -> bool:
        return self.parent.cancelled()


# ---------------------------------------------------------------- JSON lines: a job in another process
# `lcmsr run-job` (lcmsr.jobs) writes one JSON object per line on stdout; the QGIS plugin's worker runner
# reads them back with decode_event.  Events: {"event": "progress", "percent": 0-100, "message": text},
# {"event": "info" | "warning", "message": text}, {"event": "result", "result": {...}} (what the job
# returns) and, for a job that failed, one {"event": "error", "message": one line}.
EVENTS = ("progress", "info", "warning", "result", "error")


def plain(value):
    """JSON for what results hold besides dicts, lists and numbers: numpy scalars, paths."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_event(event: str, **fields) -> str:
    """One event as one line of JSON (no newline in it: text is escaped by JSON itself)."""
    if event not in EVENTS:
        raise ValueError(f"unknown event '{event}'")
    return json.dumps(dict(event=event, **fields), default=plain, ensure_ascii=True)


def decode_event(line: str) -> dict:
    """The event of one line :func:`encode_event` wrote; ValueError (one line) for anything else."""
    text = line.strip()
    try:
        event = json.loads(text)
    except ValueError:
        raise ValueError(f"not an LCMSR event: {safe_text(text[:200])}") from None
    kind = event.get("event") if isinstance(event, dict) else None
    if kind not in EVENTS:
        raise ValueError(f"not an LCMSR event: {safe_text(text[:200])}")
    if kind == "progress":
        percent = event.get("percent")
        if not isinstance(percent, (int, float)) or isinstance(percent, bool) or not math.isfinite(percent):
            raise ValueError(f"progress event without a percent: {safe_text(text[:200])}")
        event["message"] = str(event.get("message") or "")
    elif kind == "result":
        if not isinstance(event.get("result"), dict):
            raise ValueError("result event without a result object")
    else:
        event["message"] = safe_text(event.get("message", ""))
    return event


class JsonLinesProgress(Progress):
    """Progress as JSON-lines events on ``stream`` (the worker side of :mod:`lcmsr.jobs`).  Cancel comes
    from outside: ``request_cancel()`` (a signal handler) makes ``cancelled()`` true.  Progress events are
    thinned to changes of at least ``min_step`` percent or a new message."""

    def __init__(self, stream, min_step: float = 0.1):
        self.stream, self.min_step = stream, min_step
        self._lock = threading.Lock()
        self._percent: float | None = None
        self._message = ""
        self._cancel = False

    def emit(self, event: str, **fields) -> None:
        line = encode_event(event, **fields)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def report(self, fraction: float, message: str = "") -> None:
        percent = round(max(0.0, min(100.0, 100.0 * float(fraction))), 2)
        if (self._percent is not None and abs(percent - self._percent) < self.min_step
                and (not message or message == self._message) and percent < 100.0):
            return
        self._percent, self._message = percent, message or self._message
        self.emit("progress", percent=percent, message=safe_text(message) if message else "")

    def info(self, message: str) -> None:
        self.emit("info", message=safe_text(message))

    def warn(self, message: str) -> None:
        self.emit("warning", message=safe_text(message))

    def error(self, message: str) -> None:
        self.emit("error", message=safe_text(message))

    def result(self, result: dict) -> None:
        self.emit("result", result=result)

    def request_cancel(self) -> None:
        self._cancel = True

    def cancelled(self) -> bool:
        return self._cancel


class Timers:
    """Seconds spent per part of a job (read, normalise, model, back-projection, blend, write ...), added
    from any thread: the engine's reader and writer threads time their own parts.  ``busy()`` is what
    the benchmarks print; parts that run in other threads overlap the calling thread's."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, part: str, seconds: float) -> None:
        with self._lock:
            self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    def part(self, name: str):
        """``with timers.part("model"): ...`` adds the block's wall time to ``name``."""
        return _Timed(self, name)

    def busy(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


class _Timed:
    __slots__ = ("timers", "name", "start")

    def __init__(self, timers: Timers, name: str):
        self.timers, self.name = timers, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timers.add(self.name, time.perf_counter() - self.start)
        return False
