"""One progress/cancel protocol for every long job (SR, training, evaluation).

The CLI adapts it to tqdm, the QGIS plugin to ``QgsProcessingFeedback`` / ``QgsTask``.
Backend code calls ``progress.report(...)`` and ``progress.check()``; it never
imports a UI toolkit.
"""
from __future__ import annotations

import logging
import sys
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
