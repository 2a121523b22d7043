"""The backend's Progress protocol over QGIS's two progress carriers.

* :func:`feedback_progress` — over ``QgsProcessingFeedback`` (algorithms, batch,
  qgis_process): percent, progress text, the log, cancel.
* :func:`task_progress` — over ``QgsTask`` (the "Super-resolve active layer"
  action): percent and cancel; messages go to the QGIS message log and are kept
  for the task's ``finished()``.

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
def _classes():
    from lcmsr.progress import Progress

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
            self.feedback.pushInfo(message)

        def warn(self, message: str) -> None:
            self.feedback.pushWarning(message)

        def error(self, message: str) -> None:
            self.feedback.reportError(message, False)

        def cancelled(self) -> bool:
            return bool(self.feedback.isCanceled())

    class TaskProgress(Progress):
        """Progress over a ``QgsTask``, called from the task's worker thread.

        ``QgsTask.setProgress`` and ``QgsMessageLog.logMessage`` only emit queued
        signals, so they are safe off the main thread; nothing else of QGIS is touched.
        """

        def __init__(self, task):
            self.task = task
            self.messages: list[tuple[str, str]] = []   # (level, text), read by finished() on the main thread
            self.last_message = ""

        def report(self, fraction: float, message: str = "") -> None:
            self.task.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
            if message:
                self.last_message = message

        def _log(self, level_name: str, message: str) -> None:
            from qgis.core import Qgis, QgsMessageLog

            self.messages.append((level_name, message))
            level = Qgis.MessageLevel.Warning if level_name == "warning" else Qgis.MessageLevel.Info
            QgsMessageLog.logMessage(message, LOG_TAG, level)

        def info(self, message: str) -> None:
            self._log("info", message)

        def warn(self, message: str) -> None:
            self._log("warning", message)

        def cancelled(self) -> bool:
            return bool(self.task.isCanceled())

    return FeedbackProgress, TaskProgress


def feedback_progress(feedback):
    """A ``lcmsr.progress.Progress`` reporting to ``feedback`` (a silent one when it is None)."""
    if feedback is None:
        from qgis.core import QgsProcessingFeedback

        feedback = QgsProcessingFeedback()
    return _classes()[0](feedback)


def task_progress(task):
    """A ``lcmsr.progress.Progress`` reporting to a running ``QgsTask``."""
    return _classes()[1](task)
