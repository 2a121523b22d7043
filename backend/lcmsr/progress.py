"""One progress/cancel protocol for every long job (SR, training, evaluation).

The CLI adapts it to tqdm, the QGIS plugin to ``QgsProcessingFeedback`` / ``QgsTask``.
Backend code calls ``progress.report(...)`` and ``progress.check()``; it never
imports a UI toolkit.
"""
from __future__ import annotations

import logging
import sys

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


class TqdmProgress(Progress):
    """A tqdm bar over [0, 100] %; messages go through ``tqdm.write`` so the bar stays intact."""

    def __init__(self, desc: str = "", disable: bool | None = None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(total=100.0, desc=desc, unit="%", disable=disable,
                         bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}] {postfix}")
        self._last = 0.0

    def report(self, fraction: float, message: str = "") -> None:
        value = max(0.0, min(100.0, 100.0 * fraction))
        if value > self._last:
            self._bar.update(value - self._last)
            self._last = value
        if message:
            self._bar.set_postfix_str(message, refresh=False)

    def info(self, message: str) -> None:
        self._tqdm.write(message, file=sys.stderr)

    def warn(self, message: str) -> None:
        self._tqdm.write(f"WARNING: {message}", file=sys.stderr)

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
