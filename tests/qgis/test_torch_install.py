"""'Install PyTorch': which Python runs pip, which wheels, and an install that is complete or absent.

The installs here use small packages from the registry (tqdm), through the same ``install`` the dialog's
task runs; the real torch install is tests/process/test_torch_install_slow.py.
"""
import os
import subprocess
import sys

import pytest

from lcmsr_qgis import torch_install as ti

# The header nvidia-smi printed on the project's H200 machine (driver 580, whose torch is a cu130 build).
H200_SMI = """Fri Dec  4 14:47:44 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA H200                    On  |   00000000:00:06.0 Off |                    0 |
"""
OLD_SMI = "| NVIDIA-SMI 535.54.03   Driver Version: 535.54.03   CUDA Version: 12.2     |"


def _only(*paths):
    return lambda p: p in paths


@pytest.mark.parametrize("platform,base_prefix,executable,present,expected", [
    # Debian/Ubuntu QGIS: sys.executable is the qgis binary, the interpreter is /usr/bin/python3.11.
    ("linux", "/usr", "/usr/bin/qgis", ["/usr/bin/python3.11", "/usr/bin/python3"], "/usr/bin/python3.11"),
    ("linux", "/usr", "/usr/bin/qgis", ["/usr/bin/python3"], "/usr/bin/python3"),
    # macOS bundle: the framework's bin folder.
    ("darwin", "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.11",
     "/Applications/QGIS.app/Contents/MacOS/QGIS",
     ["/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.11/bin/python3.11"],
     "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.11/bin/python3.11"),
    # OSGeo4W / Windows installer: apps\Python312\python.exe, not the qgis-bin.exe of sys.executable.
    ("win32", r"C:\OSGeo4W\apps\Python312", r"C:\OSGeo4W\bin\qgis-bin.exe",
     [r"C:\OSGeo4W\apps\Python312\python.exe", r"C:\OSGeo4W\bin\python3.exe"], r"C:\OSGeo4W\apps\Python312\python.exe"),
    # ... or the python3.exe next to the QGIS binary when the prefix has none.
    ("win32", r"C:\Program Files\QGIS 3.34\apps\Python39", r"C:\Program Files\QGIS 3.34\bin\qgis-ltr-bin.exe",
     [r"C:\Program Files\QGIS 3.34\bin\python3.exe"], r"C:\Program Files\QGIS 3.34\bin\python3.exe"),
    # Nothing found, and sys.executable is not a Python: None (the install says so), never the qgis binary.
    ("linux", "/opt/qgis", "/opt/qgis/bin/qgis", ["/opt/qgis/bin/qgis"], None),
    ("linux", "/opt/py", "/opt/py/venv/bin/python", ["/opt/py/venv/bin/python"], "/opt/py/venv/bin/python"),
])
def test_find_python_finds_the_interpreter_not_the_qgis_binary(platform, base_prefix, executable, present, expected):
    assert ti.find_python(platform, base_prefix, executable, (3, 11), _only(*present)) == expected


def test_find_python_here_is_the_python_that_runs_qgis():
    python = ti.find_python()
    out = subprocess.run([python, "-c", "import qgis.core, pip, sys; print(sys.prefix)"], capture_output=True,
                         text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sys.base_prefix


def test_wheels_follow_the_driver():
    assert ti.driver_cuda_version(H200_SMI) == (13, 0)
    assert ti.driver_cuda_version(OLD_SMI) == (12, 2)
    assert ti.driver_cuda_version("") is None and ti.driver_cuda_version("NVIDIA-SMI has failed") is None
    assert ti.choose_variant((13, 0), "linux")[0] == "cu130"
    assert ti.choose_variant((12, 9), "win32")[0] == "cu128"
    assert ti.choose_variant((12, 6), "linux")[0] == "cu126"
    variant, why = ti.choose_variant((12, 2), "linux")     # too old for any CUDA build: CPU, and why
    assert variant == "cpu" and "12.2" in why and "update the driver" in why
    assert ti.choose_variant(None, "linux") == ("cpu", "no NVIDIA driver found (nvidia-smi)")
    assert ti.choose_variant((13, 0), "darwin")[0] == "cpu"


def test_pip_command_pins_the_build_and_installs_into_the_target(monkeypatch):
    monkeypatch.delenv(ti.INDEX_ENV, raising=False)
    plan = ti.torch_plan("cu128", "linux")
    cmd = ti.pip_command("/usr/bin/python3.11", "/p/python/lcmsr_torch", plan)
    assert cmd[:4] == ["/usr/bin/python3.11", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == "/p/python/lcmsr_torch"
    assert cmd[cmd.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cu128"
    assert f"torch=={ti.TORCH_VERSION}+cu128" in cmd and "safetensors" in cmd
    assert ti.torch_plan("cpu", "linux").requirements[0] == f"torch=={ti.TORCH_VERSION}+cpu"
    assert ti.torch_plan("cpu", "darwin").requirements[0] == f"torch=={ti.TORCH_VERSION}"
    assert ti.torch_plan("cpu", "linux").fallback.requirements[0] == f"torch=={ti.TORCH_VERSION}"   # the registry's
    monkeypatch.setenv(ti.INDEX_ENV, "")                      # an offline wheelhouse: pip's configuration only
    offline = ti.torch_plan("cpu", "linux")
    assert "--extra-index-url" not in ti.pip_command("py", "t", offline)
    # Any build of the release the wheelhouse has for this Python (a +cpu one, or the registry's).
    assert offline.requirements[0] == f"torch=={ti.TORCH_VERSION}" and offline.fallback is None


def _leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith(ti.FOLDER + ".partial"))


TQDM = ti.InstallPlan(["tqdm"], "", ("tqdm",), "tqdm")


def test_install_puts_a_complete_environment_in_place(tmp_path):
    target = str(tmp_path / "python" / ti.FOLDER)
    seen = []
    summary = ti.install(target, TQDM, progress=lambda f, line: seen.append(f))
    assert os.path.isfile(os.path.join(target, "tqdm", "__init__.py"))
    assert summary.startswith("tqdm installed in " + target)
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert _leftovers(tmp_path / "python") == []


def test_a_second_install_replaces_the_first_whole(tmp_path):
    target = tmp_path / "python" / ti.FOLDER
    ti.install(str(target), TQDM)
    ti.install(str(target), ti.InstallPlan(["typing_extensions"], "", ("typing_extensions",)))
    assert (target / "typing_extensions.py").is_file()
    assert not (target / "tqdm").exists(), "the old environment must be replaced, not merged into"
    assert _leftovers(tmp_path / "python") == []


def test_a_failed_install_keeps_the_previous_one_and_leaves_nothing(tmp_path):
    target = tmp_path / "python" / ti.FOLDER
    ti.install(str(target), TQDM)
    before = sorted(os.listdir(target))
    with pytest.raises(ti.InstallError) as err:   # pip fails: no such version
        ti.install(str(target), ti.InstallPlan(["tqdm==0.0.0.1"], "", ("tqdm",)))
    assert "\n" not in str(err.value) and "tqdm==0.0.0.1" in str(err.value)
    with pytest.raises(ti.InstallError, match="do not import"):   # pip succeeds, the check fails
        ti.install(str(target), ti.InstallPlan(["tqdm"], "", ("tqdm", "no_such_module_here")))
    assert sorted(os.listdir(target)) == before
    assert _leftovers(tmp_path / "python") == []


def test_a_cancelled_install_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ti.INDEX_ENV, "")
    target = tmp_path / "python" / ti.FOLDER
    started = []
    with pytest.raises(ti.InstallCancelled):
        ti.install(str(target), ti.torch_plan("cpu"), progress=lambda f, line: started.append(line),
                   cancelled=lambda: bool(started))       # cancel as soon as pip says anything
    assert not target.exists() and _leftovers(tmp_path / "python") == []


def test_no_pip_is_one_sentence(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ti.InstallError, match="has no pip .*apt install python3-pip"):
        ti.install(str(tmp_path / "python" / ti.FOLDER), TQDM, python=str(fake))
    assert not (tmp_path / "python" / ti.FOLDER).exists()


# --- a build that exists for this Python, measured, and pip's real cause -----------------------------
def _wheel(folder, name, version, tag="py3-none-any", requires=()):
    """A small installable wheel (a package of one empty module), as an index serves it."""
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tag}.whl"
    module = name.replace("-", "_")
    meta = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s" % (name, version,
                                                               "".join(f"Requires-Dist: {r}\n" for r in requires))
    files = {f"{module}/__init__.py": "# " + "x" * 20000 + "\n",     # some bytes to measure
             f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, text in files.items():
            zf.writestr(n, text)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def _index(root, wheels):
    """A PEP 503 index in ``root`` serving ``wheels``; its file:// URL."""
    for wheel in wheels:
        project = wheel.name.split("-")[0].replace("_", "-").lower()
        page = root / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        with open(page / "index.html", "a") as fh:
            fh.write(f'<a href="{wheel.as_uri()}">{wheel.name}</a>\n')
    return (root / "simple").as_uri()


@pytest.fixture()
def isolated_pip(monkeypatch, tmp_path):
    """pip's child sees only the indexes a test gives it: no user/site configuration, no wheel folder; the
    'registry' (pip's own index) is a local one the test fills."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv(ti.INDEX_ENV, raising=False)
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "simple").mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", (registry / "simple").as_uri())
    return registry


def _plan(index_url, fallback=None):
    return ti.InstallPlan([f"torch=={ti.TORCH_VERSION}+cpu"], index_url, ("torch",), "PyTorch (CPU)",
                          fallback=fallback)


def _registry_plan():
    return ti.InstallPlan([f"torch=={ti.TORCH_VERSION}"], "", ("torch",), "PyTorch from the package registry")


def test_the_build_is_found_and_measured_before_anything_downloads(isolated_pip, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cpu = _wheel(wheels, "torch", f"{ti.TORCH_VERSION}+cpu")
    build = ti.find_build(_plan(_index(tmp_path / "pytorch", [cpu])), ti.find_python())
    assert build.packages == [("torch", f"{ti.TORCH_VERSION}+cpu", cpu.as_uri())]
    assert build.download_bytes == cpu.stat().st_size and not build.cuda_libraries
    assert f"torch {ti.TORCH_VERSION}+cpu, 1 packages: 0.00 GB to download (measured" in build.describe()
    target = tmp_path / "python" / ti.FOLDER
    summary = ti.install(str(target), _plan(_index(tmp_path / "pytorch2", [cpu])))
    assert "GB downloaded" in summary and (target / "torch" / "__init__.py").is_file()


def test_an_unreachable_index_says_why_and_offers_the_reachable_build_with_its_size(isolated_pip, tmp_path):
    """The PyTorch index cannot be reached: pip's own cause in one paragraph, the registry's build offered
    with its measured size (its Linux build brings NVIDIA's libraries), nothing installed, nothing left."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    plain = _wheel(wheels, "torch", ti.TORCH_VERSION, requires=["nvidia-cuda-runtime"])
    runtime = _wheel(wheels, "nvidia-cuda-runtime", "13.0.0")
    _index(isolated_pip, [plain, runtime])
    target = tmp_path / "python" / ti.FOLDER
    plan = _plan("http://127.0.0.1:9/simple", fallback=_registry_plan())   # nothing listens on port 9
    with pytest.raises(ti.InstallError) as err:
        ti.install(str(target), plan)
    message = str(err.value)
    assert "\n" not in message
    assert f"pip could not install torch=={ti.TORCH_VERSION}+cpu for Python {sys.version_info[0]}." in message
    assert "http://127.0.0.1:9/simple could not be reached: Connection refused" in message
    assert "the CUDA build with NVIDIA's libraries, 2 packages" in message
    assert "apt install python3-torch" in message
    offer = err.value.offer
    assert offer.plan.requirements == [f"torch=={ti.TORCH_VERSION}"]
    assert offer.download_bytes == plain.stat().st_size + runtime.stat().st_size
    assert f"{offer.download_bytes / 1e9:.2f} GB to download" in message
    assert not target.exists() and _leftovers(tmp_path / "python") == []


def test_no_build_for_this_python_is_said_in_pips_words(isolated_pip, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    other = _wheel(wheels, "torch", f"{ti.TORCH_VERSION}+cpu", tag="cp27-cp27mu-manylinux1_x86_64")
    with pytest.raises(ti.InstallError) as err:
        ti.find_build(_plan(_index(tmp_path / "pytorch", [other])), ti.find_python())
    message = str(err.value)
    assert "\n" not in message and err.value.offer is None
    assert f"No matching distribution found for torch=={ti.TORCH_VERSION}+cpu" in message
    assert "could not be reached" not in message and "Extra Python path" in message


def test_pip_cause_reads_the_retry_warnings_of_a_real_failure():
    """The lines pip printed on this machine for download.pytorch.org (no name resolution there)."""
    log = ["WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
           "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
           "0x7f680553af50>: Failed to establish a new connection: [Errno -2] Name or service not known')': "
           "/whl/cpu/torch/",
           "ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: "
           "1.13.0, 1.13.1, 2.0.0, 2.0.1, 2.1.0, 2.12.1, 2.13.0, 2.14.0, 2.14.1, 2.15.0)",
           "ERROR: No matching distribution found for torch==2.13.0+cpu"]
    text = ti.pip_cause(log, ti.torch_plan("cpu", "linux"))
    assert text.count(".") and "\n" not in text
    assert "(the index has 1.13.0 … 2.14.0, 2.14.1, 2.15.0)" in text
    assert "No matching distribution found for torch==2.13.0+cpu" in text
    assert text.endswith("https://download.pytorch.org/whl/cpu could not be reached: Name or service not known.")
    tls = ["WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(SSLCertVerificationError(1, "
           "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate "
           "chain (_ssl.c:1130)'))': /simple/torch/", "ERROR: No matching distribution found for torch==2.13.0"]
    assert "its TLS certificate is not trusted (self-signed certificate in certificate chain)" in \
        ti.pip_cause(tls, ti.registry_plan())
