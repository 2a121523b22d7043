"""`lcmsr run-job JOB.json`: one job of :mod:`lcmsr.jobs` (what the QGIS plugin's worker process runs).

Stdout carries nothing but JSON-lines events (:func:`lcmsr.progress.encode_event`): progress, info and
warning lines, then the job's result, or one error event with a one-line message (exit status 2).
Whatever else writes to stdout (a library's print, GDAL) goes to stderr instead.

SIGTERM (the plugin's Cancel) is the job's own cancel, the one it has inside QGIS: ``progress.cancelled()``
turns true, so the SR pipeline stops at the next tile, a batch logs its cancel, a training run saves its
checkpoint; the job then ends with an error event "Cancelled: ..." and exit status 130.  A job that has not
stopped after :data:`STOP_AFTER_S` seconds, or a second SIGTERM, stops at once as the CLI's commands do
(every ``with`` removes its temporary files; exit status 128 + the signal's number).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback


STOP_AFTER_S = 5.0


def register(subparsers) -> None:
    p = subparsers.add_parser("run-job", help="run a job described in a JSON file (the QGIS plugin's worker); "
                                              "events as JSON lines on stdout")
    p.add_argument("job", help="the job file (JSON: command, args)")
    p.set_defaults(func=run, stop_on_signals=False)   # its own handling: _cancel_on_signals


def _event_stream():
    """A text stream on the real stdout; file descriptor 1 and sys.stdout then point at stderr."""
    sys.stdout.flush()
    try:
        fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:   # no real descriptors (an embedding host): keep the stream as it is
        return sys.stdout
    stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr
    return stream


@contextlib.contextmanager
def _cancel_on_signals(events):
    """SIGTERM/SIGHUP: a cancel request, then (a second signal, or STOP_AFTER_S later) lcmsr.cli's Stopped."""
    from ..cli import Stopped

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    alarm = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")

    def stop(signum, frame):
        for name in names + (["SIGALRM"] if alarm else []):
            signal.signal(getattr(signal, name), signal.SIG_IGN)   # the clean-up must not be interrupted
        raise Stopped(signal.SIGTERM if signum == getattr(signal, "SIGALRM", None) else signum)

    def cancel(signum, frame):
        if events.cancelled():
            stop(signum, frame)
        events.request_cancel()
        if alarm:
            signal.signal(signal.SIGALRM, stop)
            signal.setitimer(signal.ITIMER_REAL, STOP_AFTER_S)

    try:
        previous = {n: signal.signal(getattr(signal, n), cancel) for n in names}
    except ValueError:   # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for n, handler in previous.items():
            signal.signal(getattr(signal, n), handler)


def run(args) -> int:
    from ..jobs import Job, run as run_job
    from ..progress import Cancelled, JsonLinesProgress
    from ..text import safe_text

    events = JsonLinesProgress(_event_stream())
    try:
        job = Job.load(args.job)
        with _cancel_on_signals(events):
            result = run_job(job, events)
    except Cancelled as exc:
        events.error(f"Cancelled: {exc}")
        return 130
    except (ValueError, LookupError, OSError, RuntimeError, MemoryError) as exc:
        events.error(safe_text(exc) or type(exc).__name__)
        return 2
    except Exception as exc:   # a defect: its traceback on stderr for the bug report, one line for the user
        traceback.print_exc(file=sys.stderr)
        events.error(f"{type(exc).__name__}: {safe_text(exc)}")
        return 1
    events.result(result)
    return 0
