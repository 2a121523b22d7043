"""DistributedDataParallel under torchrun: 2 CPU processes, Gloo, both stages through the CLI."""
import json
import os
import subprocess
import sys

import pytest

from _train_helpers import write_texture_tif
from lcmsr.train import checkpoint as ckpt


def torchrun(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lcmsr", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd, env=env)


@pytest.mark.slow
def test_two_process_gloo_training_writes_checkpoints_and_model(tmp_path):
    pytest.importorskip("osgeo.gdal")
    path = write_texture_tif(tmp_path / "train.tif")
    common = ["--config", "tiny", "--patch", "32", "--batch", "2", "--device", "cpu", "--lr", "1e-3",
              "--quiet", "--checkpoint-every", "2"]
    p = torchrun("train-autoencoder", path, *common, "--iterations", "4", "--no-lpips", "--gan-start", "2",
                 "--checkpoint-dir", str(tmp_path / "ae"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    ck = ckpt.load_checkpoint(tmp_path / "ae")
    assert ck.step == 4 and ck.state["world_size"] == 2
    ranks = ck.state["ranks"]
    assert len(ranks) == 2 and ranks[0]["sampler"] != ranks[1]["sampler"]  # each rank its own patches
    assert len([line for line in p.stdout.splitlines() if line.startswith("{")]) == 1  # only rank 0 reports

    p = torchrun("train-consistency", path, *common, "--iterations", "3", "--stage1", str(tmp_path / "ae"),
                 "--checkpoint-dir", str(tmp_path / "cm"), "--out", str(tmp_path / "m.safetensors"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["steps"] == 3 and os.path.exists(tmp_path / "m.safetensors")
    assert ckpt.load_checkpoint(tmp_path / "cm").state["world_size"] == 2
