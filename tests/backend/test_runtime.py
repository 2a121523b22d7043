"""lcmsr.runtime: one place for the process world, a rank's device and what counts as out of memory,
shared by training (train/ddp.py) and inference."""
import pytest
import torch

from lcmsr.runtime import World, device_for, is_cpu_alloc_failure, is_oom, resolve_precision, world_from_env


def test_world_from_env_and_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(1, 2, 1) and not World(1, 2, 1).is_main
    choice = device_for("cpu", World(1, 2, 1))
    assert choice.device == torch.device("cpu") and "rank 1/2" in choice.reason
    monkeypatch.delenv("RANK")
    with pytest.raises(RuntimeError, match="torchrun"):
        world_from_env()


def test_training_and_inference_take_one_precision_rule():
    """train/loop.py asks resolve_precision as the SR pipeline does (its own copy of the rule is gone)."""
    import inspect

    import lcmsr.train.loop as loop

    assert "resolve_precision(opts.precision" in inspect.getsource(loop)
    assert resolve_precision("fp32", torch.device("cpu"))[0] == "fp32"
    assert resolve_precision("auto", torch.device("meta"))[0] == "fp32"


def test_out_of_memory_kinds():
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert is_cpu_alloc_failure(MemoryError()) and is_cpu_alloc_failure(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))


def test_lcmsr_sr_under_torchrun_points_to_units_in_one_line(tmp_path):
    """Sharding one raster over torchrun ranks is retired: the CLI says what to use instead."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "-m", "lcmsr", "sr", "in.tif", str(tmp_path / "out.tif")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lcmsr batch" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.tif").exists()
