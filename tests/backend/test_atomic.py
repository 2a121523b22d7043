"""lcmsr.atomic: the one atomic-write helper behind rasters, model files, checkpoints, reports and scripts."""
import os
import subprocess
import sys

import pytest

from lcmsr import atomic
from lcmsr.atomic import AtomicPath


def test_success_replaces_the_destination_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "model.bin"
    dst.write_bytes(b"old")
    with AtomicPath(dst, fsync=True) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)        # same folder: os.replace is a rename
        assert os.path.basename(tmp).startswith(f".model.bin.partial-{atomic.HOST_TAG}-{os.getpid()}-")
        assert not os.path.exists(tmp)                       # the writer creates it, with the umask
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert dst.read_bytes() == b"old"                    # nothing visible before the end
    assert dst.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_any_failure_removes_the_temp_and_keeps_the_old_file(tmp_path):
    dst = tmp_path / "report.html"
    dst.write_text("old")
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with AtomicPath(dst) as tmp:
                with open(tmp, "w") as f:
                    f.write("half")
                raise exc
        assert dst.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(FileNotFoundError):
        with AtomicPath(tmp_path / "never.txt"):
            pass  # a writer that wrote nothing is an error, not an empty file
    assert not (tmp_path / "never.txt").exists()


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with AtomicPath(tmp_path / "a.txt") as tmp:
            with open(tmp, "w") as f:
                f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_killed_writers_temp_is_swept_but_not_a_live_or_foreign_one(tmp_path):
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".step-000100.json.partial-{atomic.HOST_TAG}-{dead_proc.pid}-0badcafe"
        live = tmp_path / f".step-000200.json.partial-{atomic.HOST_TAG}-{live_proc.pid}-0badcafe"
        foreign = tmp_path / f".step-000100.json.partial-ffffff-{dead_proc.pid}-0badcafe"
        user = tmp_path / "notes.partial-x"
        for p in (dead, live, foreign, user):
            p.write_text("x")
        with AtomicPath(tmp_path / "step-000300.json") as tmp:
            with open(tmp, "w") as f:
                f.write("{}")
        names = {p.name for p in tmp_path.iterdir()}
        assert dead.name not in names
        assert {live.name, foreign.name, user.name, "step-000300.json"} <= names
    finally:
        live_proc.kill()
        live_proc.wait()
