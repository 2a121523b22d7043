"""qgis_process sees the provider, from the checkout and from the release zip."""
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import QGIS_PROCESS, REPO, qgis_process_env, run_qgis_process, venv_site_packages

pytestmark = pytest.mark.qgis_process


def test_provider_listed_by_qgis_process():
    proc = run_qgis_process(["list"])
    assert "LCMSR super-resolution" in proc.stdout


def test_plugin_loads_without_torch_and_says_so(tmp_path):
    """QGIS's own Python without the venv: no torch.  The provider must still load, without a traceback."""
    env_profile = tmp_path / "profile"
    proc = run_qgis_process(["list"], profile=env_profile)
    assert "LCMSR super-resolution" in proc.stdout
    code = ("import sys; sys.path[:0] = [%r, %r]; from lcmsr_qgis import environment; "
            "ok, msg = environment.backend_status(); print(ok); print(msg)" % (str(REPO), str(REPO / "backend")))
    # /usr/bin/python3 has QGIS but not torch: exactly a desktop QGIS without the dependency (the zip's
    # plugin brings the backend, as the checkout's backend/ does here).
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    ok, message = out.stdout.splitlines()
    assert ok == "False" and "torch (not installed)" in message and "'Install PyTorch'" in message


def test_without_torch_every_algorithm_gives_the_one_line_hint_not_a_traceback(tmp_path):
    """qgis_process with the backend and the plugin but QGIS's own Python (no torch): every algorithm says
    what is missing and where the button is, in one line, instead of an import traceback."""
    env = qgis_process_env(profile=tmp_path / "profile")
    env["PYTHONPATH"] = str(REPO / "backend")      # not the venv's site-packages: no torch
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "lcmsr_qgis"], env=env, capture_output=True, timeout=300)
    sample, out = REPO / "resources" / "sample" / "neon_lr.tif", tmp_path / "out"
    model = sorted((REPO / "resources" / "models").glob("*.safetensors"))[0]
    runs = {"superresolve": [f"INPUT={sample}", f"OUTPUT={out}.tif"],
            "degrade": [f"INPUT={sample}", f"OUTPUT={out}_lr.tif"],
            "evaluate": [f"REFERENCE={sample}", f"SR={sample}", f"OUTPUT_HTML={out}.html"],
            "train_autoencoder": [f"INPUTS={sample}", f"VALIDATION={sample}", f"OUTPUT={out}_ae.safetensors"],
            "train_consistency": [f"INPUTS={sample}", f"VALIDATION={sample}", f"AUTOENCODER={model}",
                                  f"OUTPUT={out}_m.safetensors"],
            "train_decoder": [f"INPUTS={sample}", f"VALIDATION={sample}", f"MODEL={model}",
                              f"OUTPUT={out}_d.safetensors"],
            "finetune": [f"INPUTS={sample}", f"MODEL={model}", f"OUTPUT={out}_f.safetensors"]}
    for name, args in runs.items():
        proc = subprocess.run([QGIS_PROCESS, "run", f"lcmsr:{name}", "--", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, name
        assert "Traceback" not in text and "ModuleNotFoundError" not in text, f"{name}:\n{text}"
        errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and "torch (not installed)" in errors[0], f"{name}:\n{text}"
        assert errors[0].endswith("'Install PyTorch' in Raster ▸ LCMSR Super-Resolution ▸ Settings and models…")
    assert not list(tmp_path.glob("out*")), "nothing may be written"


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory):
    """The zip scripts/package.py builds, built once for this module."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "scripts" / "package.py"), "--out", str(dist)], check=True,
                   timeout=300, capture_output=True)
    (archive,) = dist.glob("lcmsr_qgis-*.zip")
    return archive


def test_package_zip_meets_the_plugin_repository_rules(release_zip):
    """What plugins.qgis.org's upload validator refuses, checked on the built file: size, forbidden and
    unsafe entries, one top folder with __init__.py, metadata.txt and LICENSE, the required metadata."""
    import configparser
    import re
    from urllib.parse import urlparse

    assert release_zip.stat().st_size <= 25_000_000, f"{release_zip.stat().st_size} bytes: over the 25 MB limit"
    with zipfile.ZipFile(release_zip) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for name in names:
            parts = name.rstrip("/").split("/")
            assert ".." not in name and not name.startswith("/"), name
            assert ".pyc" not in name, name
            assert not {"__MACOSX", ".git", "__pycache__"} & set(parts), name
        # Regular files and folders only: a symlink (the checkout's LICENSE, metadata.txt and icon.svg are
        # symlinks) must arrive as the file it points to.
        for info in infos:
            kind = (info.external_attr >> 16) & 0o170000
            assert kind in (0, 0o100000, 0o040000), f"{info.filename}: not a regular file or folder"
        (root,) = {n.split("/")[0] for n in names}
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]+", root) and names[0].startswith(root + "/")
        for required in ("__init__.py", "metadata.txt", "LICENSE", "ext/lcmsr/__init__.py"):
            assert f"{root}/{required}" in names, required
        assert zf.read(f"{root}/LICENSE") == (REPO / "LICENSE").read_bytes()
        meta = configparser.ConfigParser()
        meta.optionxform = str
        meta.read_string(zf.read(f"{root}/metadata.txt").decode("utf-8"))
        general = dict(meta.items("general"))
        for field in ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                      "tracker", "repository"):
            assert general.get(field, "").strip(), f"metadata.txt: {field} is missing or empty"
        for field in ("tracker", "repository", "homepage"):
            url = urlparse(general.get(field, "https://x"))
            assert url.scheme in ("http", "https") and url.netloc, f"{field}={general[field]} is not a URL"
        assert "/" not in general["author"]
        assert (general["supportsQt6"], general["qgisMaximumVersion"]) == ("True", "4.99")
        assert f"{root}/{general['icon']}" in names
        # Every bundled model, and the LPIPS weights zip users evaluate with.
        bundled = sorted(p.name for p in (REPO / "resources" / "models").glob("*.safetensors"))
        assert sorted(n.rsplit("/", 1)[1] for n in names if "/resources/models/" in n and n.endswith(".safetensors")) \
            == bundled and bundled
        assert f"{root}/resources/metric-weights/lpips_alex_fp16.safetensors" in names


def test_package_zip_installs_and_loads(release_zip, tmp_path):
    archive = release_zip
    with zipfile.ZipFile(archive) as zf:
        plugins = tmp_path / "plugins"
        zf.extractall(plugins)
    # A fresh profile and the zip's plugin folder, with torch from the venv but NOT the checkout's backend:
    # the bundled copy under ext/ must be what loads.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               QGIS_PLUGINPATH=str(plugins), PYTHONPATH=venv_site_packages())
    subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "lcmsr_qgis"], env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.run(["/usr/bin/qgis_process.bin", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LCMSR super-resolution" in proc.stdout
    code = ("import sys; sys.path.insert(0, %r); import lcmsr_qgis, lcmsr; print(lcmsr.__file__)" % str(plugins))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=venv_site_packages()), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(plugins) in out.stdout, f"backend not loaded from the zip: {out.stdout}"
    # A zip user has no build/metric-weights (nor torchvision): LPIPS comes from the zip's own float16 copy.
    code = ("import sys; sys.modules['torchvision'] = None; sys.path.insert(0, %r); import lcmsr_qgis; "
            "from lcmsr.metrics.lpips import LPIPS; "
            "print(LPIPS().weights_file)" % str(plugins))
    env = {k: v for k, v in os.environ.items() if k != "LCMSR_METRIC_WEIGHTS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(env, PYTHONPATH=venv_site_packages()), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(plugins / "lcmsr_qgis" / "resources" / "metric-weights" / "lpips_alex_fp16.safetensors")
