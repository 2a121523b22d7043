"""Bugs the robustness suite found, each pinned by a test: damaged model files that loaded silently or
raised raw errors, a settings dialog that accepted what a run refuses, temp files a killed SR left."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from conftest import write_tiny_model  # noqa: E402
from lcmsr.weights import DIGEST_KEY, ModelFileError, check_model, load_model, read_info  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return Path(write_tiny_model(tmp_path_factory.mktemp("w") / "tiny.safetensors", scale=2))


def _header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def test_a_bit_flipped_in_the_weights_is_refused_by_its_checksum(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    pos = _header_end(data) + (len(data) - _header_end(data)) // 2
    data[pos] ^= 0x01  # lowest mantissa bit of some weight: finite, plausible, and wrong
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"flipped\.safetensors is damaged: its contents do not match"):
        load_model(bad)
    with pytest.raises(ModelFileError, match="do not match the checksum"):
        check_model(bad)
    assert check_model(model_file).scale == 2


def test_a_changed_normalisation_is_refused_by_the_checksum(model_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(model_file), framework="pt") as f:
        meta = dict(f.metadata())
    info = json.loads(meta["lcmsr"])
    info["normalization"]["hi"][0] = 254.0
    bad = tmp_path / "renormalised.safetensors"
    save_file(load_file(str(model_file)), str(bad), metadata=dict(meta, lcmsr=json.dumps(info)))
    with pytest.raises(ModelFileError, match="do not match the checksum"):
        load_model(bad)


def test_files_without_a_checksum_still_load_but_a_damaged_checksum_key_is_refused(model_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(model_file), framework="pt") as f:
        meta = dict(f.metadata())
    assert DIGEST_KEY in meta
    tensors = load_file(str(model_file))
    legacy = tmp_path / "legacy.safetensors"
    save_file(tensors, str(legacy), metadata={"lcmsr": meta["lcmsr"]})
    assert load_model(legacy).info.scale == 2       # files written before the checksum existed
    renamed = tmp_path / "renamed.safetensors"
    save_file(tensors, str(renamed), metadata={"lcmsr": meta["lcmsr"], "lcmsr_sha2v6": meta[DIGEST_KEY]})
    with pytest.raises(ModelFileError, match="unknown metadata key 'lcmsr_sha2v6'"):
        load_model(renamed)


@pytest.mark.parametrize("header", [b"[" * 100000 + b"]" * 100000,
                                    b'{"__metadata__":{"lcmsr":"' + b"[" * 100000 + b"]" * 100000 + b'"}}',
                                    b'{"__metadata__":[1]}',
                                    b'{"t":{"dtype":"F32","data_offsets":[0,0]}}'])
def test_hostile_headers_raise_the_loaders_error_not_a_raw_one(tmp_path, header):
    header += b" " * (-len(header) % 8)
    bad = tmp_path / "hostile.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelFileError, match="hostile.safetensors"):
        load_model(bad)
    with pytest.raises(ModelFileError, match="hostile.safetensors"):
        read_info(bad)


def test_settings_dialog_refuses_what_a_run_would_refuse(model_file, tmp_path):
    """add_model used to read only the header: a file with damaged weights was listed, then failed every run."""
    pytest.importorskip("qgis.core")
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0x10
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(bytes(data))
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))!r}]
        from qgis.core import QgsApplication
        app = QgsApplication([], True)
        app.initQgis()
        from lcmsr_qgis.ui.settings_dialog import SettingsDialog
        shown = []
        dlg = SettingsDialog(None, message_box=lambda title, text: shown.append(text))
        print("ACCEPTED" if dlg.add_model({str(bad)!r}) else "REFUSED", shown[-1] if shown else "")
        print("GOOD", dlg.add_model({str(model_file)!r}))
        sys.stdout.flush()
        os._exit(0)
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert "REFUSED" in proc.stdout and "do not match the checksum" in proc.stdout, proc.stdout + proc.stderr
    assert "GOOD True" in proc.stdout, proc.stdout + proc.stderr


def test_a_killed_runs_temp_file_is_removed_by_the_next_run_to_the_same_destination(tmp_path):
    pytest.importorskip("osgeo.gdal")
    import numpy as np

    from lcmsr import atomic
    from lcmsr.raster import io

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGKILL)
        child.wait()
        dead = tmp_path / f".out.tif.partial-{atomic.HOST_TAG}-{child.pid}-0badcafe"
        busy = tmp_path / f".out.tif.partial-{atomic.HOST_TAG}-{alive.pid}-0badcafe"
        other_host = tmp_path / f".out.tif.partial-ffffff-{child.pid}-0badcafe"
        for p in (dead, busy, other_host):
            p.write_bytes(b"half a GeoTIFF")
        spec = io.OutputSpec(width=4, height=3, data_type=io.gdal.GDT_Byte, fill=[None])
        with io.AtomicRaster(str(tmp_path / "out.tif"), spec) as w:
            w.write_rows(0, np.ones((1, 3, 4), np.uint8))
        names = sorted(p.name for p in tmp_path.iterdir())
        assert dead.name not in names                      # its process is gone: nobody will finish it
        assert busy.name in names and other_host.name in names   # a live writer, or another machine's
        assert "out.tif" in names
    finally:
        alive.kill()
        alive.wait()


def _tiny_raster(path):
    from osgeo import gdal

    import numpy as np

    ds = gdal.GetDriverByName("GTiff").Create(str(path), 40, 40, 3, gdal.GDT_Byte)
    ds.WriteArray(np.random.default_rng(0).integers(0, 255, (3, 40, 40)).astype(np.uint8))
    ds = None
    return path


def test_a_file_size_limit_gives_one_clear_line_and_no_gdal_noise_after_it(model_file, tmp_path):
    """GDAL used to print 'ERROR 1: …' lines after the error: the traceback kept the output open."""
    import resource

    pytest.importorskip("osgeo.gdal")
    src = _tiny_raster(tmp_path / "in.tif")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "lcmsr", "sr", str(src), str(out / "sr.tif"), "--model", str(model_file),
         "--device", "cpu", "--tile", "32", "--overlap", "4", "--quiet"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("lcmsr: error: writing the output"), proc.stderr
    assert "file-size limit" in lines[-1] and not any(line.startswith("ERROR") for line in lines), proc.stderr
    assert list(out.iterdir()) == []


def test_a_read_only_existing_output_is_refused_not_replaced(tmp_path):
    """The folder being writable let the rename replace a file its owner had made read-only."""
    pytest.importorskip("osgeo.gdal")
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lcmsr-ro-"))
    try:
        os.chmod(folder, 0o777)
        target = folder / "sr.tif"
        target.write_bytes(b"keep me")
        os.chmod(target, 0o444)
        code = ("from lcmsr.raster import io; from lcmsr.progress import Progress\n"
                f"io.check_destination({str(target)!r}, '/nonexistent/in.tif', 10, Progress())")
        # As root, permissions do not bind: the child drops its power to override them.
        from robustness_cases import _without_file_override

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              preexec_fn=_without_file_override, env=env, cwd=str(folder))
        assert proc.returncode != 0 and "exists and is read-only" in proc.stderr, proc.stderr
        assert target.read_bytes() == b"keep me"
    finally:
        os.chmod(folder, 0o755)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
