"""Where the units of a batch run: in this process, in a local process pool, or on a Dask cluster.

Every executor runs module-level functions of JSON-serialisable arguments (a unit dict, a scene dict),
so a task is shipped by reference and data, never by pickled state.  The driver
(:mod:`lcmsr.sr.batch`) only submits, waits for the first finished, cancels and closes; it never
schedules.  Scheduling, retries after a lost worker and GPU placement are the engine's.

* ``local`` — ``workers=1``: one thread in this process (torch keeps its threads; cancel reaches a
  running unit through its ``progress``).  ``workers=N>1``: a pool of N spawned processes, each with
  one torch thread.  A killed pool process breaks the pool: the items it touched fail, a rerun resumes.
* ``dask`` — Dask distributed (docs/DESIGN.md says why Dask and not Ray, with figures): ``address``
  connects to a running scheduler (``tcp://host:8786``); none starts a local cluster of ``workers``
  single-threaded worker processes, or one worker per GPU pinned by ``CUDA_VISIBLE_DEVICES`` when the
  job runs on CUDA.  Model tasks claim ``{"GPU": 1}`` wherever the workers declare that resource
  (``dask worker ... --resources GPU=1``), so a GPU never runs two units at once.  A worker killed
  mid-task is replaced by its nanny and the task runs again elsewhere (up to Dask's
  ``allowed-failures``).

The engine is an optional extra (``pip install lcmsr[cluster]``), imported only when asked for.
"""
from __future__ import annotations

import abc
import concurrent.futures as cf
import logging
import multiprocessing
import os
import shutil
import sys
import threading

from ..choices import EXECUTORS
from ..progress import Progress
# Environment of every worker process this module starts: one BLAS/OpenMP thread, so N workers on N cores
# do not fight (torch reads these at import).
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class ExecutorError(RuntimeError):
    """The executor could not start (engine missing, scheduler unreachable): one line, a usage problem."""


class _Stop(Progress):
    """What an in-process unit polls: the driver's cancel."""

    def __init__(self, event: threading.Event):
        self.event = event

    def cancelled(self) -> bool:
        return self.event.is_set()


def task(fn, arg, threads: int = 0):
    """What every worker runs: ``fn(arg)``, with torch held to ``threads`` threads when given."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return fn(arg)


def _init_pool_worker(env: dict) -> None:
    os.environ.update(env)


def python_for_children() -> str:
    """The interpreter for spawned workers: ``sys.executable``, unless that is not Python (inside QGIS it is
    the qgis binary), then the ``python3`` of the running version found beside it or on PATH."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in (os.path.join(sys.exec_prefix, "bin", version), shutil.which(version), shutil.which("python3")):
        if name and os.path.isfile(name):
            return name
    raise ExecutorError(f"cannot start worker processes: {exe} is not a Python interpreter and no {version} "
                        f"was found (use 1 worker, or a cluster address)")


class Executor(abc.ABC):
    """The driver's view of an engine: submit, wait for the first finished, cancel, close; each engine
    says how it submits."""

    name = "?"
    workers = 1
    gpu_tasks = False     # model tasks claim one GPU each

    @abc.abstractmethod
    def submit(self, fn, arg, gpu: bool = False):
        """Run ``fn(arg)`` on the engine (``gpu``: the task claims one GPU) -> a future."""

    def wait(self, futures, timeout: float):
        """(done, pending) sets: returns when at least one is done or ``timeout`` seconds passed."""
        done, pending = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done), set(pending)

    def result(self, future):
        return future.result()

    def cancel(self, futures) -> None:
        for f in futures:
            f.cancel()

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class InlineExecutor(Executor):
    """One unit at a time in a thread of this process; cancel stops a running unit between its batches."""

    name = "local"

    def __init__(self):
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcmsr-batch")
        self._stop = threading.Event()

    def submit(self, fn, arg, gpu: bool = False):
        return self._pool.submit(_call_with_stop, fn, arg, self._stop)

    def cancel(self, futures) -> None:
        self._stop.set()
        super().cancel(futures)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return "local (in this process)"


def _call_with_stop(fn, arg, stop: threading.Event):
    return fn(arg, _Stop(stop))   # run_unit and assemble take (spec, progress)


class PoolExecutor(Executor):
    """N spawned processes on this machine (fork would copy torch's threads and locks), one torch thread each."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        context.set_executable(python_for_children())
        self._pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                            initializer=_init_pool_worker, initargs=(SINGLE_THREAD_ENV,))

    def submit(self, fn, arg, gpu: bool = False):
        return self._pool.submit(task, fn, arg, 1)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"local ({self.workers} processes, one thread each)"


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ExecutorError("--executor dask needs Dask distributed, which is not installed: "
                            "pip install 'lcmsr[cluster]' (or: pip install distributed)") from None
    return distributed


def _quiet_dask_logs() -> None:
    """A local cluster's scheduler and nannies live in this process: their INFO lines (worker started, connection
    closed ...) would bury the batch's own; each of Dask's loggers has its level set, so each is lowered."""
    for name in ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]:
        logging.getLogger(name).setLevel(logging.ERROR)


def local_worker_specs(workers: int, gpus: int) -> dict:
    """The workers of a local Dask cluster: one per GPU (pinned by CUDA_VISIBLE_DEVICES, declaring the GPU
    resource) when ``gpus``, else ``workers`` CPU workers; every one single-threaded (one unit at a time)."""
    from distributed import Nanny

    count = gpus if gpus else workers
    specs = {}
    for i in range(count):
        env = dict(SINGLE_THREAD_ENV)
        options = {"nthreads": 1, "env": env}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
            options["resources"] = {"GPU": 1}
        specs[f"lcmsr-{i}"] = {"cls": Nanny, "options": options}
    return specs


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, address: str | None = None, workers: int = 1, gpus: int = 0, timeout: float = 20):
        distributed = _import_distributed()
        self._distributed = distributed
        self.cluster = None
        try:
            if address:
                self.client = distributed.Client(address, timeout=timeout)
            else:
                from distributed import Scheduler, SpecCluster

                multiprocessing.set_executable(python_for_children())
                _quiet_dask_logs()
                # Spawned workers configure their logging when they import distributed, before a nanny's
                # `env` applies: the variable is set here while they start (a restarted worker logs as Dask does).
                previous = os.environ.get("DASK_LOGGING__DISTRIBUTED")
                os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"
                try:
                    self.cluster = SpecCluster(
                        workers=local_worker_specs(workers, gpus),
                        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0", "host": "127.0.0.1"}},
                        silence_logs=40, name="lcmsr-batch")
                finally:
                    if previous is None:
                        os.environ.pop("DASK_LOGGING__DISTRIBUTED", None)
                    else:
                        os.environ["DASK_LOGGING__DISTRIBUTED"] = previous
                self.client = distributed.Client(self.cluster)
                self.client.wait_for_workers(len(self.cluster.worker_spec), timeout=max(60, timeout))
        except (OSError, TimeoutError) as exc:
            self.close()
            where = f"the Dask scheduler at {address}" if address else "a local Dask cluster"
            raise ExecutorError(f"cannot reach {where}: {exc}") from None
        info = self.client.scheduler_info()
        workers_info = info.get("workers", {})
        self.workers = max(1, sum(int(w.get("nthreads", 1)) for w in workers_info.values()))
        self.gpu_tasks = any(float((w.get("resources") or {}).get("GPU", 0)) >= 1 for w in workers_info.values())
        self.address = address or self.client.scheduler.address

    def warm(self, module: str = "lcmsr.raster.scene") -> None:
        """Import ``module`` (torch, GDAL, the units) on every worker now rather than in its first task."""
        import importlib

        self.client.run(importlib.import_module, module)

    def submit(self, fn, arg, gpu: bool = False):
        resources = {"GPU": 1} if gpu and self.gpu_tasks else None
        # pure=False: a unit is run whenever it is submitted (the driver decided it is needed).
        threads = 1 if self.cluster is not None else 0
        return self.client.submit(task, fn, arg, threads, pure=False, resources=resources)

    def wait(self, futures, timeout: float):
        try:
            done, pending = self._distributed.wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set(), set(futures)
        return set(done), set(pending)

    def result(self, future):
        return future.result()

    def cancel(self, futures) -> None:
        if futures:
            self.client.cancel(list(futures))

    def close(self) -> None:
        client, cluster = getattr(self, "client", None), self.cluster
        self.client, self.cluster = None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def describe(self) -> str:
        where = "a local cluster" if self.cluster is not None else self.address
        gpus = ", one GPU per model task" if self.gpu_tasks else ""
        return f"dask ({where}, {self.workers} worker thread(s){gpus})"


def cuda_devices(device_request: str) -> int:
    """GPUs a local cluster should use for ``device_request`` (auto/cuda/cuda:N/cpu): all visible ones unless
    the CPU is asked for; 0 without CUDA.  Imports torch only when CUDA could be meant."""
    request = (device_request or "auto").strip().lower()
    if request == "cpu":
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None,
                  device: str = "auto", timeout: float = 20) -> Executor:
    """The executor a batch asked for.  ``address`` only with ``dask``; ``workers`` sizes local pools and
    local clusters (a local Dask cluster on a CUDA machine has one worker per GPU instead); ``timeout``:
    seconds to reach a scheduler."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor '{kind}': use one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ExecutorError(f"workers must be at least 1, got {workers}")
    if kind == "local":
        if address:
            raise ExecutorError("--address names a cluster's scheduler: use it with --executor dask")
        return InlineExecutor() if workers == 1 else PoolExecutor(workers)
    return DaskExecutor(address=address, workers=workers, gpus=0 if address else cuda_devices(device),
                        timeout=timeout)


__all__ = ["EXECUTORS", "Executor", "ExecutorError", "make_executor", "task"]
