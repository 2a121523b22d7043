"""Where a job of the backend runs: in a worker process (the default) or inside QGIS.

Every algorithm turns its parameters into an :class:`lcmsr.jobs.Job` and hands it to :func:`runner`:

* :class:`WorkerRunner` starts ``python -m lcmsr run-job JOB.json`` (no shell) on the interpreter of the
  settings (by default the Python QGIS runs on, with QGIS's own ``sys.path``: the plugin's PyTorch folder,
  the backend, GDAL), maps its JSON-lines events to the ``QgsProcessingFeedback`` (progress, log lines),
  turns a cancel into SIGTERM (then a kill after a grace period) and a worker that dies (killed, a crash,
  out of memory) into one ``QgsProcessingException`` naming the exit code or signal and its last stderr
  lines.  QGIS never imports torch, and the GPU memory is the worker's: freed when it exits.
* :class:`InProcessRunner` runs the same job in QGIS's interpreter with the plugin's model cache (the
  plugin's behaviour before the worker existed), for whoever chooses it in the settings.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from qgis.core import QgsProcessingException

WORKER, IN_PROCESS = "worker", "inprocess"
RUNNERS = (WORKER, IN_PROCESS)
RUNNER_LABELS = {WORKER: "In a worker process (QGIS never loads PyTorch)",
                 IN_PROCESS: "Inside QGIS (a crash or out-of-memory in PyTorch takes QGIS down)"}
GRACE_S = 20.0        # after SIGTERM, the time a job has to clean up (training: a checkpoint) before a kill
STDERR_LINES = 6      # the last stderr lines an error about a dead worker shows
PROBE_TIMEOUT_S = 60.0
_PROBE = ("import importlib.util as u, json, sys\n"
          "print(json.dumps({'version': sys.version.split()[0], 'modules': {m: u.find_spec(m) is not None "
          "for m in ('lcmsr', 'torch', 'safetensors', 'numpy', 'osgeo')}}))\n")


def _is_python(path: str) -> bool:
    return os.path.basename(path).lower().startswith("python") and os.path.isfile(path)


def default_python() -> str | None:
    """The Python QGIS itself runs on: the interpreter under ``sys.base_prefix``
    (:func:`lcmsr_qgis.torch_install.find_python`).  Not ``sys.executable``: inside QGIS and qgis_process
    that is the qgis binary or whatever ``python3`` PATH finds first (a pyenv shim, another version); a
    venv's packages come with :func:`worker_env`'s ``sys.path``.  ``sys.executable`` only where nothing
    is found there."""
    from .torch_install import find_python

    return find_python() or (sys.executable if _is_python(sys.executable) else None)


def backend_root() -> str:
    """The folder that holds the ``lcmsr`` package QGIS imports (the plugin zip's ext/, or a checkout's
    backend/): the worker runs the same backend as the plugin."""
    import lcmsr

    return os.path.dirname(os.path.dirname(os.path.abspath(lcmsr.__file__)))


def worker_env(custom: bool) -> dict:
    """The worker's environment: QGIS's, with PYTHONPATH = the backend, then (for QGIS's own Python) every
    folder of QGIS's ``sys.path`` (the plugin's PyTorch folder, extra paths, GDAL's bindings).  A Python
    of the user's choice keeps its own packages: only the backend is added."""
    env = {k: v for k, v in os.environ.items() if not (custom and k in ("PYTHONPATH", "PYTHONHOME"))}
    paths = [backend_root()]
    if not custom:
        paths += [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def configured_python() -> tuple[str | None, bool]:
    """(interpreter, chosen by the user): the settings' worker Python, else :func:`default_python`."""
    from .settings import Settings

    chosen = str(Settings().worker_python or "").strip()
    return (chosen, True) if chosen else (default_python(), False)


def check_python(python: str | None, custom: bool = True) -> tuple[bool, str]:
    """(usable, one line): whether ``python`` runs and finds the backend, PyTorch, safetensors, numpy and
    GDAL's bindings (found, not imported: a second or so)."""
    from .environment import INSTALL_HINT

    if not python:
        return False, ("LCMSR cannot find the Python interpreter QGIS runs on for its worker process; set one in "
                       "Settings and models… ▸ Worker Python")
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        return False, f"LCMSR's worker Python '{python}' does not exist or cannot be run; choose another in Settings"
    try:
        done = subprocess.run([python, "-c", _PROBE], env=worker_env(custom), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, **_popen_flags())
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"LCMSR's worker Python '{python}' does not run ({type(exc).__name__}: {exc})"
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
        modules = found["modules"]
    except (ValueError, IndexError, KeyError, TypeError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"'{python}' is not a usable Python for LCMSR's worker ({last})"
    missing = [m for m in ("lcmsr", "torch", "safetensors", "numpy", "osgeo") if not modules.get(m)]
    if missing:
        names = {"osgeo": "GDAL's Python bindings (osgeo)", "lcmsr": "the LCMSR backend"}
        hint = INSTALL_HINT if "torch" in missing or "safetensors" in missing else "choose another worker Python"
        return False, (f"LCMSR needs PyTorch in its worker Python {python} (Python {found.get('version')}), "
                       f"missing: {', '.join(names.get(m, m) + ' (not installed)' for m in missing)}; {hint}")
    return True, f"worker Python {python} (Python {found.get('version')}) is ready"


_CHECKED: dict = {}   # (python, custom, PYTHONPATH) -> the line of a successful check


def worker_status() -> tuple[bool, str]:
    """:func:`check_python` of the configured interpreter; a success is remembered for the session."""
    python, custom = configured_python()
    key = (python, custom, worker_env(custom).get("PYTHONPATH"))
    if key in _CHECKED:
        return True, _CHECKED[key]
    ok, message = check_python(python, custom)
    if ok:
        _CHECKED[key] = message
    return ok, message


def runner_name() -> str:
    from .settings import Settings

    name = str(Settings().runner or WORKER)
    return name if name in RUNNERS else WORKER


def runner():
    """The runner the settings choose."""
    if runner_name() == IN_PROCESS:
        return InProcessRunner()
    python, custom = configured_python()
    return WorkerRunner(python, custom)


def _popen_flags() -> dict:
    if sys.platform.startswith("win"):   # no console window; its own group so a cancel reaches it alone
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)
                | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}   # its own process group: a kill reaches the job's helpers too


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class InProcessRunner:
    """The job in QGIS's own interpreter (torch loaded into QGIS), with the plugin's model cache."""

    name = IN_PROCESS

    def run(self, job, feedback) -> dict:
        from lcmsr.jobs import Job, run

        from .algorithms.base import LcmsrAlgorithm
        from .feedback import feedback_progress
        from .model_cache import model_cache

        with LcmsrAlgorithm.backend_errors():
            # The same description the worker would read: what runs here can run there.
            return run(Job.from_json(job.to_json()), feedback_progress(feedback), load_model=model_cache().get)


class WorkerRunner:
    """The job in a worker process (see the module's docstring).  ``process``: the running worker's Popen
    (None before and after), for whoever needs its pid."""

    name = WORKER

    def __init__(self, python: str | None, custom: bool = False, grace: float = GRACE_S):
        self.python, self.custom, self.grace = python, custom, grace
        self.process: subprocess.Popen | None = None
        self.started = threading.Event()

    def run(self, job, feedback) -> dict:
        from lcmsr.jobs import output_paths

        from .feedback import feedback_progress

        if feedback is None:
            from qgis.core import QgsProcessingFeedback

            feedback = QgsProcessingFeedback()
        ok, message = self._usable()
        if not ok:
            raise QgsProcessingException(message)
        progress = feedback_progress(feedback)
        fd, job_file = tempfile.mkstemp(prefix="lcmsr-job-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(job.to_json())
            return self._run(job_file, feedback, progress)
        except QgsProcessingException:
            self._sweep(output_paths(job), progress)
            raise
        finally:
            os.remove(job_file)

    def _usable(self) -> tuple[bool, str]:
        if not self.python:
            return check_python(None)
        if not os.path.isfile(self.python) or not os.access(self.python, os.X_OK):
            return check_python(self.python)
        return True, ""

    def _run(self, job_file: str, feedback, progress) -> dict:
        from lcmsr.progress import decode_event
        from lcmsr.text import safe_text

        cmd = [self.python, "-m", "lcmsr", "run-job", job_file]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=worker_env(self.custom), encoding="utf-8", errors="replace",
                                    **_popen_flags())
        except OSError as exc:
            raise QgsProcessingException(f"LCMSR's worker Python '{self.python}' cannot be started: "
                                         f"{exc.strerror or exc}") from None
        self.process = proc
        self.started.set()
        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_read, args=(stream, name, lines), daemon=True)
                   for stream, name in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for reader in readers:
            reader.start()
        result = error = None
        tail: collections.deque = collections.deque(maxlen=STDERR_LINES)
        cancelled_at = exited_at = None
        open_streams = len(readers)
        try:
            # Until the worker exits and its streams close (at most 2 s longer: helpers may hold them open).
            while open_streams and (exited_at is None or time.monotonic() - exited_at < 2.0) \
                    or proc.poll() is None:
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
                if feedback.isCanceled() and cancelled_at is None and proc.poll() is None:
                    cancelled_at = time.monotonic()
                    progress.info("cancelling: the worker process stops and removes what it was writing")
                    proc.terminate()
                if cancelled_at is not None and proc.poll() is None and time.monotonic() - cancelled_at > self.grace:
                    _kill(proc)
                try:
                    name, line = lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                    continue
                if name == "err":
                    text = safe_text(line.rstrip("\r\n"))
                    if text.strip():
                        tail.append(text.strip())
                        feedback.pushConsoleInfo(text)
                    continue
                try:
                    event = decode_event(line)
                except ValueError as exc:
                    feedback.pushConsoleInfo(str(exc))
                    continue
                kind = event["event"]
                if kind == "progress":
                    progress.report(event["percent"] / 100.0, event["message"])
                elif kind == "info":
                    progress.info(event["message"])
                elif kind == "warning":
                    progress.warn(event["message"])
                elif kind == "result":
                    result = event["result"]
                elif kind == "error":
                    error = event["message"]
        finally:
            if proc.poll() is None:   # an exception here (in QGIS): the worker must not outlive the job
                _kill(proc)
            rc = proc.wait()
            if os.name == "posix" and rc != 0:
                _kill_group(proc.pid)   # helpers of a job that died (a batch's pool) go with it
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            self.process = None
        if rc == 0 and result is not None:
            return result
        if cancelled_at is not None:
            raise QgsProcessingException(f"Cancelled: {error}" if error and not error.startswith("Cancelled")
                                         else (error or "Cancelled: the worker process was stopped"))
        if error:
            raise QgsProcessingException(error)
        raise QgsProcessingException(self._death(rc, tail))

    def _death(self, rc: int, tail) -> str:
        if rc < 0:
            name = _signal_name(-rc)
            how = f"was ended by {name} (signal {-rc})"
            if -rc == getattr(signal, "SIGKILL", -1):
                how += ", killed from outside (e.g. by the system when memory ran out)"
            elif -rc in (getattr(signal, "SIGSEGV", -1), getattr(signal, "SIGBUS", -1), getattr(signal, "SIGABRT", -1)):
                how += ", a crash in a native library"
        else:
            how = f"exited with code {rc} without a result"
        last = " | ".join(tail) if tail else "no output on stderr"
        return (f"LCMSR's worker process ({self.python}) {how}; QGIS is unaffected and no output was written. "
                f"Last worker output: {last}")

    @staticmethod
    def _sweep(paths, progress) -> None:
        """What a worker that was killed left (temporary files; removable now that it is gone)."""
        from lcmsr.atomic import sweep_stale
        from lcmsr.paths import output_folders

        for folder in output_folders([("output", p) for p in paths]):
            for entry in sweep_stale(folder):
                progress.info(f"removed {entry}, left in {folder} by the stopped worker")


def _read(stream, name: str, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put((name, line))
    except (OSError, ValueError):
        pass
    finally:
        lines.put((name, None))


def _kill(proc) -> None:
    try:
        proc.kill()
    except OSError:
        pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass   # no group left: every process of it has exited
