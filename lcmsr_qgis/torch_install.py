"""PyTorch installed from the plugin into a plugin-owned folder of the QGIS profile.

``pip install --target <profile>/python/lcmsr_torch`` run by QGIS's own Python, CPU wheels or the CUDA
wheels that the driver reported by ``nvidia-smi`` can run.  The package goes into a temporary folder
beside the destination and is renamed into place only once it imports, so a cancelled or failed
install leaves nothing half-installed.  ``activate()`` puts the folder first on ``sys.path``; the
plugin calls it when QGIS (desktop or qgis_process) imports the plugin, before anything imports torch.

Importable without QGIS (QGIS is imported only where the profile or a QgsTask is needed).
"""
from __future__ import annotations

import importlib
import json
import ntpath
import os
import posixpath
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

# The one pin: the torch release the plugin installs (the backend runs on torch 2.11 to 2.14), and the
# CUDA builds download.pytorch.org publishes for it, newest first: (driver CUDA major, minor, wheel label).
TORCH_VERSION = "2.13.0"
CUDA_WHEELS = ((13, 0, "cu130"), (12, 8, "cu128"), (12, 6, "cu126"))
EXTRA_PACKAGES = ("safetensors", "tqdm")
PYTORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
# Set to another index (a mirror) or to "" (pip's own configuration only: an offline wheelhouse).
INDEX_ENV = "LCMSR_TORCH_INDEX_URL"
FOLDER = "lcmsr_torch"


class InstallError(RuntimeError):
    """An install that did not complete; one paragraph, and nothing left behind.  ``offer``: a build that
    is reachable instead (the registry's, with its measured size), for the user to choose."""

    def __init__(self, message: str, offer=None):
        super().__init__(message)
        self.offer = offer


class InstallCancelled(InstallError):
    pass


# --- where --------------------------------------------------------------------------------------
def plugin_profile(plugin_dir: str | None = None) -> str | None:
    """The QGIS profile this plugin is installed in (``<profile>/python/plugins/lcmsr_qgis``), or None (a
    development copy found through QGIS_PLUGINPATH, say)."""
    plugin_dir = plugin_dir or os.path.dirname(os.path.abspath(__file__))
    plugins = os.path.dirname(plugin_dir)
    python = os.path.dirname(plugins)
    if os.path.basename(plugins) == "plugins" and os.path.basename(python) == "python":
        return os.path.dirname(python)
    return None


def torch_dir(settings_dir: str | None = None) -> str:
    """``<QGIS profile>/python/lcmsr_torch``: the plugin-owned environment.

    The profile is the one the plugin is installed in: a standalone PyQGIS script (``QgsApplication`` and
    ``processing.run``) points ``qgisSettingsDirPath()`` elsewhere (``~/.local/share/profiles/default``, or
    nowhere before ``initQgis``), yet must find the PyTorch that 'Install PyTorch' put beside the plugin.
    Only a plugin outside any profile uses the running QGIS's settings folder."""
    if settings_dir is None:
        settings_dir = plugin_profile()
    if settings_dir is None:
        from qgis.core import QgsApplication

        settings_dir = QgsApplication.qgisSettingsDirPath()
        if not settings_dir:
            raise RuntimeError("no QGIS profile: QgsApplication is not initialised yet")
    return os.path.join(settings_dir, "python", FOLDER)


def activate(path: str | None = None) -> bool:
    """Put an installed environment first on sys.path (its torch's dependencies must win over older
    system copies, e.g. Debian's sympy).  True when the folder exists."""
    path = path or torch_dir()
    if not os.path.isdir(path):
        return False
    if path not in sys.path:
        sys.path.insert(0, path)
        importlib.invalidate_caches()
    return True


def find_python(platform: str = sys.platform, base_prefix: str = sys.base_prefix,
                executable: str = sys.executable, version=sys.version_info[:2], exists=os.path.isfile) -> str | None:
    """The real Python interpreter of the QGIS that runs this code (pip must run with it).

    Inside QGIS ``sys.executable`` is the qgis binary (or a python3 that PATH finds first); the
    interpreter lives under ``sys.base_prefix`` (Linux, macOS: ``bin/python3.X``; OSGeo4W and the
    Windows installers: ``apps/Python3X/python.exe``), or, on Windows, next to the QGIS binary.
    """
    path = ntpath if platform.startswith("win") else posixpath   # pure: the platform's rules, not the host's
    if platform.startswith("win"):
        folders = [base_prefix, path.dirname(executable)]
        names = ["python.exe", "python3.exe"]
    else:
        folders = [path.join(base_prefix, "bin")]
        names = [f"python{version[0]}.{version[1]}", f"python{version[0]}", "python"]
    for folder in folders:
        for name in names:
            candidate = path.join(folder, name)
            if exists(candidate):
                return candidate
    name = path.basename(executable).lower()
    return executable if name.startswith("python") and exists(executable) else None


# --- which wheels -------------------------------------------------------------------------------
def driver_cuda_version(smi_output: str):
    """(major, minor) from ``nvidia-smi``'s header ("CUDA Version: 12.4"), or None."""
    match = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", smi_output or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def query_nvidia_smi(timeout: float = 20) -> str:
    """nvidia-smi's output, '' where there is none (no NVIDIA driver, or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def choose_variant(driver_cuda, platform: str = sys.platform) -> tuple[str, str]:
    """(wheel label, why): the newest CUDA build the driver runs, else 'cpu'."""
    if platform == "darwin":
        return "cpu", "macOS: the standard build (CPU, Apple GPU through MPS)"
    if driver_cuda is None:
        return "cpu", "no NVIDIA driver found (nvidia-smi)"
    for major, minor, label in CUDA_WHEELS:
        if tuple(driver_cuda) >= (major, minor):
            return label, f"the NVIDIA driver supports CUDA {driver_cuda[0]}.{driver_cuda[1]}"
    oldest = CUDA_WHEELS[-1]
    return "cpu", (f"the NVIDIA driver supports CUDA {driver_cuda[0]}.{driver_cuda[1]}, older than the "
                   f"{oldest[0]}.{oldest[1]} PyTorch {TORCH_VERSION} needs: update the driver for GPU use")


@dataclass
class InstallPlan:
    """What one install puts into the folder and which modules must import from it afterwards."""
    requirements: list
    index_url: str = ""          # an extra index (PyTorch's wheels); "" = pip's configuration only
    verify: tuple = ("torch", "safetensors")
    label: str = ""
    fallback: "InstallPlan | None" = None   # what to offer when this plan has no build here (the registry's)


REGISTRY = "registry"   # the variant name of registry_plan() in the settings dialog


def registry_plan() -> InstallPlan:
    """torch TORCH_VERSION from pip's own configuration (the package registry): whatever build it has for
    this Python and platform.  On Linux that is the CUDA build with NVIDIA's libraries (several GB)."""
    return InstallPlan([f"torch=={TORCH_VERSION}", *EXTRA_PACKAGES], "", ("torch", "safetensors"),
                       f"PyTorch {TORCH_VERSION} from the package registry")


def torch_plan(variant: str, platform: str = sys.platform) -> InstallPlan:
    """torch pinned to TORCH_VERSION in the chosen build, and the backend's other dependencies.

    From PyTorch's index the build label is pinned (``+cpu``: only that index has it); the registry's build
    is the fallback to offer.  With LCMSR_TORCH_INDEX_URL set (a mirror, or "" for pip's configuration
    only: an offline wheelhouse) any build of TORCH_VERSION that index has for this Python will do."""
    if variant == REGISTRY:
        return registry_plan()
    label = f"PyTorch {TORCH_VERSION} ({'CPU' if variant == 'cpu' else 'CUDA ' + variant[2:-1] + '.' + variant[-1]})"
    if INDEX_ENV in os.environ:
        return InstallPlan([f"torch=={TORCH_VERSION}", *EXTRA_PACKAGES], os.environ[INDEX_ENV],
                           ("torch", "safetensors"), label)
    if platform == "darwin":   # macOS wheels carry no build label and come from PyPI itself
        return InstallPlan([f"torch=={TORCH_VERSION}", *EXTRA_PACKAGES], "", ("torch", "safetensors"), label)
    return InstallPlan([f"torch=={TORCH_VERSION}+{variant}", *EXTRA_PACKAGES], PYTORCH_INDEX.format(variant=variant),
                       ("torch", "safetensors"), label, fallback=registry_plan())


def pip_command(python: str, target: str, plan: InstallPlan) -> list:
    cmd = [python, "-m", "pip", "install", "--target", target, "--no-input", "--progress-bar", "off",
           "--disable-pip-version-check"]
    if plan.index_url:
        cmd += ["--extra-index-url", plan.index_url]
    return cmd + list(plan.requirements)


# --- what pip says -------------------------------------------------------------------------------
# The network problem behind a failure, which pip prints only in its retry warnings.
_NETWORK = ((r"Failed to establish a new connection: (?:\[Errno [^\]]*\] )?([^'\")]+)", "{}"),
            (r"Failed to resolve '([^']+)'", "cannot resolve {}"),
            (r"certificate verify failed: ([^'\")(]+)", "its TLS certificate is not trusted ({})"),
            (r"[Tt]imed out", "no answer in time"),
            (r"ProxyError\('([^']+)", "proxy: {}"))


def _network_reason(line: str) -> str:
    for pattern, text in _NETWORK:
        found = re.search(pattern, line)
        if found:
            return text.format(*(g.strip().rstrip(".") for g in found.groups()))
    return "the connection failed"


def pip_cause(log: list, plan: InstallPlan) -> str:
    """pip's reason for a failure as one readable paragraph: its ERROR lines (a long version list shortened)
    and, where pip could not reach an index, which one and why."""
    errors = []
    for line in log:
        if line.startswith("ERROR:"):
            text = line[len("ERROR:"):].strip()
            text = re.sub(r"\(from versions: ([^)]*)\)", lambda m: _versions(m.group(1)), text)
            if text and text not in errors:
                errors.append(text)
    if not errors:
        errors = [line.strip() for line in log[-1:] if line.strip()] or ["pip gave no reason"]
    reasons = []
    for line in log:
        if "connection broken by" in line or line.startswith("Could not fetch URL"):
            reason = _network_reason(line)
            if reason not in reasons:
                reasons.append(reason)
    python = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform}"
    text = f"pip could not install {', '.join(plan.requirements)} for {python}: " + "; ".join(
        e.rstrip(".") for e in errors) + "."
    if reasons:
        where = plan.index_url or "the package index pip is configured with"
        text += f" {where} could not be reached: {'; '.join(reasons)}."
    return " ".join(text.split())


def _versions(listed: str) -> str:
    versions = [v.strip() for v in listed.split(",") if v.strip()]
    if not versions:
        return "(the index has no version of it for this Python)"
    shown = ", ".join(versions) if len(versions) <= 6 else f"{versions[0]} … {', '.join(versions[-3:])}"
    return f"(the index has {shown})"


# --- which build exists here, and how big it is -------------------------------------------------
@dataclass
class Build:
    """What pip would install for a plan on this Python and platform, measured before anything downloads."""
    plan: InstallPlan
    packages: list               # (name, version, url) as pip resolved them
    download_bytes: int | None   # the index's file sizes added up; None where one could not be measured

    def torch_version(self) -> str:
        return next((version for name, version, _ in self.packages if name.lower() == "torch"), "")

    @property
    def cuda_libraries(self) -> bool:
        return any(name.lower().startswith("nvidia-") for name, _, _ in self.packages)

    def describe(self) -> str:
        if not self.packages:
            return f"{self.plan.label or ' '.join(self.plan.requirements)} (size unknown: pip is older than 22.2)"
        kind = ", the CUDA build with NVIDIA's libraries" if self.cuda_libraries else ""
        size = (f"{self.download_bytes / 1e9:.2f} GB to download (measured from the index)"
                if self.download_bytes is not None else "download size not measurable")
        return f"torch {self.torch_version()}{kind}, {len(self.packages)} packages: {size}"


def remote_size(url: str, timeout: float = 20) -> int | None:
    """The size of a file pip would download: a HEAD request (http/https) or the local file; None if unknown."""
    parsed = urllib.parse.urlparse(url.split("#", 1)[0])
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        return os.path.getsize(path) if os.path.isfile(path) else None
    if parsed.scheme not in ("http", "https"):
        return None
    request = urllib.request.Request(parsed.geturl(), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # nosec B310 (http/https only, checked above)
            length = answer.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except (OSError, ValueError):
        return None


def resolve(plan: InstallPlan, python: str, cancelled=None, size_of=remote_size) -> Build:
    """Ask pip which files ``plan`` needs on this Python and platform (``install --dry-run --report``,
    nothing downloaded but the metadata), and measure them.  InstallError with pip's cause otherwise."""
    cancelled = cancelled or (lambda: False)
    with tempfile.TemporaryDirectory(prefix="lcmsr-resolve-") as scratch:
        report = os.path.join(scratch, "report.json")
        cmd = pip_command(python, os.path.join(scratch, "target"), plan)
        cmd[4:4] = ["--dry-run", "--report", report, "--retries", "1", "--timeout", "20"]
        log: list = []
        if _run(cmd, _child_env(), lambda *a: None, cancelled, log) != 0:
            if any("no such option: --report" in line or "no such option: --dry-run" in line for line in log):
                return Build(plan, [], None)    # an old pip: the install itself will tell
            raise InstallError(pip_cause(log, plan))
        with open(report, encoding="utf-8") as fh:
            data = json.load(fh)
    packages = [(item["metadata"]["name"], item["metadata"]["version"], item["download_info"]["url"])
                for item in data.get("install", [])]
    sizes = [size_of(url) for _, _, url in packages]
    return Build(plan, packages, None if any(size is None for size in sizes) else sum(sizes))


ELSEWHERE = ("or use a Python environment that already has PyTorch: QGIS's own Python (Debian/Ubuntu: "
             "apt install python3-torch python3-safetensors, used with no install step) or a conda/virtual "
             "environment's site-packages under 'Extra Python path'")


def find_build(plan: InstallPlan, python: str, cancelled=None, size_of=remote_size) -> Build:
    """The build ``plan`` gets here, measured.  Where it has none (its index unreachable, or no wheel for this
    Python), InstallError says why in pip's words and, when the plan has a fallback that resolves, offers
    it with its measured size: never switched to silently (the registry's Linux build is several GB)."""
    try:
        return resolve(plan, python, cancelled, size_of)
    except InstallCancelled:
        raise
    except InstallError as exc:
        if plan.fallback is None:
            raise InstallError(f"{exc} Instead, {ELSEWHERE}.") from None
        try:
            offer = resolve(plan.fallback, python, cancelled, size_of)
        except InstallCancelled:
            raise
        except InstallError as second:
            raise InstallError(f"{exc} {plan.fallback.label} does not resolve either: {second} "
                               f"Instead, {ELSEWHERE}.") from None
        raise InstallError(f"{exc} Reachable instead: {plan.fallback.label}, {offer.describe()}; choose it and "
                           f"'Install PyTorch' again, {ELSEWHERE}.", offer=offer) from None


# --- installing ---------------------------------------------------------------------------------
def _child_env() -> dict:
    # Neither a PYTHONPATH (a venv's torch) nor the user site may satisfy or shadow what is installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _stage(line: str, fraction: float) -> float:
    """Rough progress from pip's log lines: resolving 0-40 %, installing 40-85 %, checking the rest."""
    if line.startswith(("Collecting", "Processing", "Downloading", "Using cached")):
        return min(fraction + 3.0, 40.0)
    if line.startswith("Installing collected packages"):
        return 45.0
    return fraction


def _run(cmd, env, progress, cancelled, log, start: float = 0.0) -> int:
    """Run ``cmd``, feeding its lines to ``progress``; polls ``cancelled`` even while it prints nothing."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          bufsize=1) as proc:
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
        reader.start()
        fraction = start
        while proc.poll() is None or reader.is_alive() or not lines.empty():
            if cancelled():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise InstallCancelled("PyTorch install cancelled; nothing was installed")
            try:
                line = lines.get(timeout=0.2).rstrip()
            except queue.Empty:
                continue
            log.append(line)
            fraction = _stage(line.strip(), fraction)
            progress(fraction, line)
        return proc.wait()


def install(target: str, plan: InstallPlan, progress=None, cancelled=None, python: str | None = None,
            size_of=remote_size) -> str:
    """Install ``plan`` so that ``target`` holds it complete, or is left as it was.  Returns a one-line
    summary with the measured download and installed sizes; raises InstallError (InstallCancelled) with
    one paragraph.  Blocking: the task runs it."""
    progress = progress or (lambda fraction, text: None)
    cancelled = cancelled or (lambda: False)
    python = python or find_python()
    if python is None:
        raise InstallError(f"cannot find QGIS's Python interpreter under {sys.base_prefix} to run pip")
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):   # an earlier install killed with QGIS
        if stale.startswith(FOLDER + ".partial-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    temp = tempfile.mkdtemp(prefix=FOLDER + ".partial-", dir=parent)   # same disk: the rename is atomic
    log: list = []
    started = time.monotonic()
    try:
        if _run([python, "-m", "pip", "--version"], _child_env(), lambda *a: None, cancelled, log) != 0:
            raise InstallError(f"{python} has no pip ({log[-1] if log else 'no output'}); install pip for "
                               "QGIS's Python (Debian/Ubuntu: apt install python3-pip)")
        progress(1.0, f"finding the build of {plan.label or ' '.join(plan.requirements)} for this Python")
        build = find_build(plan, python, cancelled, size_of)
        progress(2.0, build.describe())
        log = []
        if _run(pip_command(python, temp, plan), _child_env(), progress, cancelled, log, start=2.0) != 0:
            raise InstallError(pip_cause(log, plan))
        progress(85.0, "checking that it imports")
        check = ("import importlib, os, sys\nfor m in sys.argv[1:]:\n"
                 "    f = importlib.import_module(m).__file__\n"
                 "    assert os.path.realpath(f).startswith(os.path.realpath(os.environ['PYTHONPATH'])), f\n")
        env = dict(_child_env(), PYTHONPATH=temp)
        done = subprocess.run([python, "-c", check, *plan.verify], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InstallError(f"the installed packages do not import: {last}")
        if cancelled():
            raise InstallCancelled("PyTorch install cancelled; nothing was installed")
        old = None
        if os.path.exists(target):   # a previous install: replaced only now that the new one works
            old = tempfile.mkdtemp(prefix=FOLDER + ".partial-old-", dir=parent)
            os.replace(target, os.path.join(old, FOLDER))
        os.replace(temp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)   # Windows keeps loaded DLLs: removed on a later install
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)
    progress(100.0, "installed")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(target) for f in files)
    downloaded = f"{build.download_bytes / 1e9:.2f} GB downloaded, " if build.download_bytes is not None else ""
    return (f"{plan.label or ' '.join(plan.requirements)} installed in {target} "
            f"({downloaded}{size / 1e9:.2f} GB installed, {time.monotonic() - started:.0f} s)")


def use_now(target: str, module: str = "torch") -> tuple[bool, str]:
    """After an install: make it importable in this QGIS; (True, '') or (False, why a restart is needed).

    A failed ``import torch`` leaves nothing in sys.modules, so the new folder is found without a
    restart; a restart is needed only where this process already imported another copy."""
    activate(target)
    try:
        found = importlib.import_module(module)
    except Exception as exc:   # e.g. an older copy of a dependency already imported in this process
        return False, f"restart QGIS to use it ({type(exc).__name__}: {exc})"
    if not os.path.realpath(found.__file__).startswith(os.path.realpath(target)):
        return False, (f"restart QGIS to use it (this session already runs the {module} in "
                       f"{os.path.dirname(found.__file__)})")
    return True, ""


_TASKS: list = []   # install tasks not finished yet: Python must hold them (a dialog may close meanwhile)


def current_task():
    """The install task still running, if any (one at a time)."""
    return _TASKS[-1] if _TASKS else None


def make_task(plan: InstallPlan, target: str | None = None, on_done=None):
    """A QgsTask running ``install`` in the background; its result goes to the LCMSR log and to
    ``on_done(ok, message, offer)`` on the main thread (``offer``: the Build reachable instead, or None)."""
    from qgis.core import Qgis, QgsMessageLog, QgsTask

    target = target or torch_dir()

    class InstallTorchTask(QgsTask):
        def __init__(self):
            super().__init__(f"Installing {plan.label or 'packages'} for LCMSR", QgsTask.Flag.CanCancel)
            self.message = ""
            self.line = ""
            self.offer = None
            self.announced = ""   # the build found and its measured size, once known

        def run(self):
            def progress(fraction, line):
                self.line = line
                if fraction == 2.0:   # install() announces the build it found, before downloading
                    self.announced = line
                self.setProgress(fraction)
            try:
                self.message = install(target, plan, progress, self.isCanceled)
                return True
            except InstallError as exc:
                self.message, self.offer = str(exc), exc.offer
                return False
            except Exception as exc:   # never let a worker thread's exception vanish silently
                self.message = f"install failed: {type(exc).__name__}: {exc}"
                return False

        def finished(self, ok):
            if ok:
                ready, why = use_now(target, plan.verify[0])
                self.message += ": ready, no restart needed" if ready else f"; {why}"
            elif self.isCanceled() and not self.message:
                self.message = "PyTorch install cancelled; nothing was installed"
            QgsMessageLog.logMessage(self.message, "LCMSR",
                                     Qgis.MessageLevel.Info if ok else Qgis.MessageLevel.Warning)
            if self in _TASKS:
                _TASKS.remove(self)
            if on_done is not None:
                try:
                    on_done(ok, self.message, self.offer)
                except RuntimeError:   # the dialog that started it was closed: the log has the result
                    pass

    task = InstallTorchTask()
    _TASKS.append(task)
    return task
