"""Issue 16, training folders: one training per checkpoint folder, damaged checkpoints skipped with a
warning, a file given as the folder refused up front, SIGTERM/SIGINT end with a resumable checkpoint."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lcmsr.progress import Cancelled, Progress
from lcmsr.train import TrainOptions, train_autoencoder
from lcmsr.train import checkpoint as ckpt
from _train_helpers import texture

torch.set_num_threads(1)
SOURCES = [texture(64, 64, 0), texture(48, 80, 1)]


def options(folder, **kw):
    base = dict(sources=SOURCES, scale=4, patch=32, iterations=4, batch=2, lr=1e-3, config="tiny",
                checkpoint_dir=str(folder), checkpoint_every=2, keep_checkpoints=3, val_every=1000, log_every=1,
                device="cpu", lpips=False, seed=3)
    base.update(kw)
    return TrainOptions(**base)


class Warnings(Progress):
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def test_a_second_and_a_third_training_on_a_locked_folder_are_refused(tmp_path):
    folder = tmp_path / "ck"
    with ckpt.FolderLock(folder):   # what a running training holds
        for _ in range(2):
            with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint folder {folder} is in use by another "
                                                             rf"training \(process {os.getpid()} on "):
                train_autoencoder(options(folder))
        assert ckpt.list_checkpoints(folder) == []
    assert train_autoencoder(options(folder)).steps == 4   # released: the folder is usable again


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    folder = tmp_path / "ck"
    code = f"from lcmsr.train import checkpoint as c; import time; l = c.FolderLock({str(folder)!r}).__enter__(); " \
           f"print('locked', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.CheckpointError, match=rf"in use by another training \(process {proc.pid} on"):
            ckpt.FolderLock(folder).__enter__()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with ckpt.FolderLock(folder):
        pass


def test_a_file_as_the_checkpoint_folder_is_refused_before_training(tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    seen = []

    class Steps(Progress):
        def report(self, fraction, message=""):
            seen.append(message)
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint folder {f} is a file, not a folder"):
        train_autoencoder(options(f), Steps())
    assert not seen and f.read_text() == "x"


@pytest.mark.parametrize("damage", ['{"format": "lcmsr-train-checkpoint", "step": 4, "tensors": 3}', "[1, 2",
                                    "null", '{"format": "lcmsr-train-checkpoint", "step": 4, "tensors": '
                                            '{"file": "step-00000004.safetensors", "bytes": 1, "sha256": "x"}}',
                                    "TRUNCATE"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, damage):
    folder = tmp_path / "ck"
    train_autoencoder(options(folder))
    newest = folder / "step-00000004.json"
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["step-00000002.json", newest.name]
    newest.write_text(newest.read_text()[:200] if damage == "TRUNCATE" else damage)
    progress = Warnings()
    r = train_autoencoder(options(folder, iterations=5, resume=True), progress)
    assert r.resumed_from == 2 and r.steps == 5
    assert len(progress.warnings) == 1 and "step-00000004.json" in progress.warnings[0]
    assert "resuming from the newest good one step-00000002.json" in progress.warnings[0]


def test_a_checkpoint_missing_what_resume_needs_is_skipped_too(tmp_path):
    folder = tmp_path / "ck"
    train_autoencoder(options(folder))
    newest = folder / "step-00000004.json"
    doc = json.loads(newest.read_text())
    del doc["state"]["ranks"]
    newest.write_text(json.dumps(doc))
    progress = Warnings()
    assert train_autoencoder(options(folder, iterations=5, resume=True), progress).resumed_from == 2
    assert "per-process states are missing" in progress.warnings[0]


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_training_with_a_resumable_checkpoint(tmp_path, sig):
    np.save(tmp_path / "a.npy", SOURCES[0])
    folder = tmp_path / "ck"
    script = textwrap.dedent(f"""
        import numpy as np, torch, sys
        torch.set_num_threads(1)
        from lcmsr.progress import Progress
        from lcmsr.train import TrainOptions, train_autoencoder
        class Say(Progress):
            def report(self, fraction, message=""):
                print(message, flush=True)
            def info(self, message):
                print(message, flush=True)
        train_autoencoder(TrainOptions(sources=[np.load({str(tmp_path / 'a.npy')!r})], scale=4, patch=32,
                          iterations=100000, batch=2, lr=1e-3, config="tiny", checkpoint_dir={str(folder)!r},
                          checkpoint_every=100000, val_every=100000, log_every=1, device="cpu", lpips=False), Say())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"stopped by {sig.name} at step" in out and "resumable checkpoint" in out, out + err
    assert "Cancelled" in err and err.count("\n") < 40   # the API raises Cancelled; the CLI prints it as one line
    (saved,) = ckpt.list_checkpoints(folder)
    step = ckpt.load_checkpoint(saved).step
    assert step >= 3
    r = train_autoencoder(TrainOptions(sources=[np.load(tmp_path / "a.npy")], scale=4, patch=32, iterations=step + 1,
                                       batch=2, lr=1e-3, config="tiny", checkpoint_dir=str(folder),
                                       checkpoint_every=100000, val_every=100000, log_every=1, device="cpu",
                                       lpips=False, resume=True))
    assert r.resumed_from == step
