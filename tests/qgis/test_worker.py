"""Jobs in a worker process (lcmsr_qgis.worker): QGIS never imports torch, the worker's events reach the
feedback, a cancel or a killed worker leaves no output and one clear error, a bad interpreter is named."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException

from conftest import REPO
from test_algorithms import RecordingFeedback

SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"


class Recording(RecordingFeedback):
    """Keeps also errors, console lines and percents; ``on_progress`` is called with each percent."""

    def __init__(self, on_progress=None):
        super().__init__()
        self.console, self.percents, self.errors = [], [], []
        self.progressChanged.connect(self.percents.append)
        if on_progress is not None:
            self.progressChanged.connect(on_progress)

    def reportError(self, error, fatalError=False):  # noqa: N802
        self.errors.append(error)
        super().reportError(error, fatalError)

    def pushConsoleInfo(self, info):  # noqa: N802
        self.console.append(info)
        super().pushConsoleInfo(info)


def run_sr(tiny_model, out, feedback, **extra):
    import processing

    parameters = dict({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "TILE": 16, "OVERLAP": 2, "BATCH": 1,
                       "DEVICE": 2, "OUTPUT": str(out)}, **extra)
    return processing.run("lcmsr:superresolve", parameters, feedback=feedback)


@pytest.fixture
def captured_runner(monkeypatch, runner_setting):
    """The WorkerRunner the next algorithm run uses, kept for the test (its ``process`` is the worker)."""
    from lcmsr_qgis import worker

    runner_setting("worker")
    made = []

    def runner():
        made.append(worker.WorkerRunner(*worker.configured_python(), grace=10.0))
        return made[-1]

    monkeypatch.setattr(worker, "runner", runner)
    return made


def test_a_job_runs_in_the_worker_with_progress_and_log_lines(provider, tiny_model, tmp_path, captured_runner):
    out = tmp_path / "sr.tif"
    feedback = Recording()
    result = run_sr(tiny_model, out, feedback)
    assert result["OUTPUT"] == str(out) and out.exists()
    assert len(captured_runner) == 1 and captured_runner[0].process is None   # it ran, and its worker is gone
    assert any(info.startswith("Model: ") and info.endswith("tiny_x4.safetensors") for info in feedback.infos)
    assert any("tile" in text for text in feedback.texts), feedback.texts
    assert max(feedback.percents) == 100.0 and any(0 < p < 100 for p in feedback.percents)
    assert sorted(os.listdir(tmp_path)) == ["sr.tif"]


def test_the_default_runner_is_the_worker_and_the_worker_python_is_a_python(runner_setting):
    from lcmsr_qgis import worker

    runner_setting("", "")   # nothing saved: the defaults
    assert worker.runner_name() == worker.WORKER and isinstance(worker.runner(), worker.WorkerRunner)
    python, custom = worker.configured_python()
    assert not custom and os.path.basename(python).startswith("python") and os.access(python, os.X_OK)
    runner_setting("inprocess")
    assert isinstance(worker.runner(), worker.InProcessRunner)


STANDALONE = """
import os, sys
sys.path.insert(0, {repo!r})
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
from lcmsr_qgis.provider import LcmsrProvider
provider = LcmsrProvider()   # kept: the registry does not own a Python provider
QgsApplication.processingRegistry().addProvider(provider)
import processing
result = processing.run("lcmsr:superresolve", {{"INPUT": {src!r}, "MODEL": {model!r}, "TILE": 32, "OVERLAP": 4,
                                               "BATCH": 1, "DEVICE": 2, "OUTPUT": {out!r}}})
print("output:", os.path.exists(result["OUTPUT"]))
print("torch imported:", "torch" in sys.modules)
print("runner:", __import__("lcmsr_qgis.worker", fromlist=["x"]).runner_name())
"""


def test_qgis_never_imports_torch_with_the_worker(tiny_model, tmp_path):
    """A fresh QGIS process (this test process has torch already) runs Super-resolve: torch stays out."""
    out = tmp_path / "sr.tif"
    script = STANDALONE.format(repo=str(REPO), src=str(SAMPLE_LR), model=tiny_model, out=str(out))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO / "backend"), OMP_NUM_THREADS="1",
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "output: True" in done.stdout and "runner: worker" in done.stdout, done.stdout
    assert "torch imported: False" in done.stdout, done.stdout


def once_running(captured_runner, action):
    """(feedback, seen): at the job's first progress, ``action(feedback, worker pid)`` runs once and
    ``seen["pid"]`` keeps the pid."""
    seen = {}

    def act(percent):
        if percent > 0 and "pid" not in seen and captured_runner[0].process is not None:
            seen["pid"] = captured_runner[0].process.pid
            action(feedback, seen["pid"])

    feedback = Recording(act)
    return feedback, seen


def test_cancel_terminates_the_worker_and_leaves_nothing(provider, tiny_model, tmp_path, captured_runner):
    out = tmp_path / "cancelled.tif"
    feedback, seen = once_running(captured_runner, lambda feedback, pid: feedback.cancel())
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        run_sr(tiny_model, out, feedback)
    assert "pid" in seen, "the job ended before it could be cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)   # the worker has exited (and been reaped)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_killed_worker_is_one_clear_error_and_no_partial_file(provider, tiny_model, tmp_path, captured_runner):
    out = tmp_path / "killed.tif"
    # SIGKILL, as the system's out-of-memory killer would.
    feedback, seen = once_running(captured_runner, lambda feedback, pid: os.kill(pid, signal.SIGKILL))
    from lcmsr_qgis.worker import WorkerRunner

    job_error = []
    original = WorkerRunner.run

    def keep(self, job, fb):
        try:
            return original(self, job, fb)
        except QgsProcessingException as exc:
            job_error.append(str(exc))
            raise

    WorkerRunner.run = keep
    try:
        with pytest.raises(QgsProcessingException):
            run_sr(tiny_model, out, feedback)
    finally:
        WorkerRunner.run = original
    assert "pid" in seen
    (message,) = job_error
    assert "SIGKILL (signal 9)" in message and "QGIS is unaffected" in message and "\n" not in message, message
    assert not out.exists() and os.listdir(tmp_path) == []   # neither the output nor its temporary file


def test_a_worker_that_fails_to_start_python_is_named(provider, tiny_model, tmp_path, runner_setting):
    from lcmsr_qgis import worker

    runner_setting("worker", str(tmp_path / "no" / "python3"))
    ok, message = worker.worker_status()
    assert not ok and f"'{tmp_path / 'no' / 'python3'}' does not exist" in message and "\n" not in message
    alg = provider.algorithm("superresolve")
    assert alg.canExecute() == (False, message)
    not_python = tmp_path / "fake-python"
    not_python.write_text("#!/bin/sh\necho nonsense\n")
    not_python.chmod(0o755)
    runner_setting("worker", str(not_python))
    ok, message = worker.worker_status()
    assert not ok and "is not a usable Python" in message
    feedback = Recording()
    with pytest.raises(QgsProcessingException):
        run_sr(tiny_model, tmp_path / "x.tif", feedback)
    assert any("is not a usable Python" in error for error in feedback.errors), feedback.errors
    assert not (tmp_path / "x.tif").exists()


def test_a_worker_that_exits_without_a_result_names_its_code_and_last_lines(tmp_path):
    """A script standing for a Python whose backend dies at start-up (exit 3 after two stderr lines)."""
    from lcmsr.jobs import Job

    from lcmsr_qgis.worker import WorkerRunner

    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'ImportError: libtorch.so' >&2\n"
                    "exit 3\n")
    fake.chmod(0o755)
    with pytest.raises(QgsProcessingException) as caught:
        WorkerRunner(str(fake), custom=True).run(Job("degrade", {"src": "a.tif", "dst": str(tmp_path / "b.tif"),
                                                                  "scale": 4}), Recording())
    message = str(caught.value)
    assert "exited with code 3 without a result" in message and "ImportError: libtorch.so" in message, message
