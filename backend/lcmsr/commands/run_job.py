"""`lcmsr run-job JOB.json`: one job of :mod:`lcmsr.jobs` (what the QGIS plugin's worker process runs).

Stdout carries nothing but JSON-lines events (:func:`lcmsr.progress.encode_event`): progress, info and
warning lines, then the job's result, or one error event with a one-line message (exit status 2).
Whatever else writes to stdout (a library's print, GDAL) goes to stderr instead.  SIGTERM stops the job
as a cancel does (lcmsr.cli; the training loop saves a checkpoint first) and exits with 128 + 15.
"""
from __future__ import annotations

import os
import sys
import traceback


def register(subparsers) -> None:
    p = subparsers.add_parser("run-job", help="run a job described in a JSON file (the QGIS plugin's worker); "
                                              "events as JSON lines on stdout")
    p.add_argument("job", help="the job file (JSON: command, args)")
    p.set_defaults(func=run)


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


def run(args) -> int:
    from ..jobs import Job, run as run_job
    from ..progress import Cancelled, JsonLinesProgress
    from ..text import safe_text

    events = JsonLinesProgress(_event_stream())
    try:
        job = Job.load(args.job)
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
