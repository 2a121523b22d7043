"""The backend's Progress protocol over ``QgsProcessingFeedback``.

:func:`feedback_progress` serves every algorithm (toolbox, batch, qgis_process and the
"Super-resolve active layer" action, which runs the toolbox's algorithm): percent,
progress text, the log, cancel.

``lcmsr.progress`` is imported on first use, not at import time, so the plugin
(and its toolbox listing) loads in a QGIS without the backend.
"""
from __future__ import annotations

import time
from functools import lru_cache

LOG_TAG = "LCMSR"
# Processing's dialog appends every progress text to its log: a per-tile message
# would bury the useful lines, so a changed text is shown at most this often.
TEXT_INTERVAL_S = 1.0


@lru_cache(maxsize=None)
def _progress_class():
    from lcmsr.progress import Progress
    from lcmsr.text import safe_text

    class FeedbackProgress(Progress):
        """Progress over a ``QgsProcessingFeedback`` (which is thread-safe by design)."""

        def __init__(self, feedback):
            self.feedback = feedback
            self._last_text = ""
            self._last_text_time = 0.0

        def report(self, fraction: float, message: str = "") -> None:
            self.feedback.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
            if message and message != self._last_text:
                now = time.monotonic()
                if now - self._last_text_time >= TEXT_INTERVAL_S or fraction >= 1.0:
                    self.feedback.setProgressText(message)
                    self._last_text, self._last_text_time = message, now

        def info(self, message: str) -> None:
            self.feedback.pushInfo(safe_text(message))

        def warn(self, message: str) -> None:
            self.feedback.pushWarning(safe_text(message))

        def error(self, message: str) -> None:
            self.feedback.reportError(safe_text(message), False)

        def cancelled(self) -> bool:
            return bool(self.feedback.isCanceled())

    return FeedbackProgress


def feedback_progress(feedback):
    """A ``lcmsr.progress.Progress`` reporting to ``feedback`` (a silent one when it is None)."""
    if feedback is None:
        from qgis.core import QgsProcessingFeedback

        feedback = QgsProcessingFeedback()
    return _progress_class()(feedback)

