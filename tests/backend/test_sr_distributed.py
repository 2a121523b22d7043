"""Sharded SR (torchrun): the same output as one process, whatever rank computes which batch."""
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from test_raster_standin import StandInModel, read_raster, textured, write_raster

from lcmsr.distributed_sr import Exchange, World, device_for, world_from_env  # noqa: E402
from lcmsr.raster.pipeline import SROptions, superresolve  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class QueueTransport:
    """torch.distributed's blocking send/recv between threads of one process."""

    def __init__(self, rank, boxes):
        self.rank, self.boxes = rank, boxes

    def send(self, tensor, dst):
        self.boxes[(self.rank, dst)].put(tensor.clone())

    def recv(self, tensor, src):
        tensor.copy_(self.boxes[(src, self.rank)].get(timeout=60))


class FailingStandIn(StandInModel):
    def sr(self, lr, *args, **kw):
        raise RuntimeError("injected failure on rank 1")


def _sharded(src, dst, opts, models):
    size = len(models)
    boxes = {(a, b): queue.Queue() for a in range(size) for b in range(size)}
    errors = {}

    def rank_main(rank):
        ex = Exchange(rank, size, torch.device("cpu"), transport=QueueTransport(rank, boxes))
        try:
            superresolve(src, dst, models[rank], opts, exchange=ex, device="cpu")
        except BaseException as exc:
            errors[rank] = exc
            if rank:
                ex.send_error(ex.next_owned(), f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=rank_main, args=(r,)) for r in range(1, size)]
    for w in workers:
        w.start()
    rank_main(0)
    for w in workers:
        w.join(timeout=60)
    return errors


def test_sharded_batches_give_the_single_process_output(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(70, 90).round().astype(np.uint8), nodata=0)
    opts = SROptions(tile=32, overlap=8, batch=2, output_type="float32")
    alone = StandInModel(scale=2, noise_weight=0.2)
    single = superresolve(src, tmp_path / "single.tif", alone, opts)
    models = [StandInModel(scale=2, noise_weight=0.2) for _ in range(3)]
    errors = _sharded(src, str(tmp_path / "sharded.tif"), opts, models)
    assert not errors, errors
    np.testing.assert_array_equal(read_raster(tmp_path / "sharded.tif"), read_raster(single.path))
    # Every rank did a share of the work, rank 0 included.
    calls = [len(m.batches) for m in models]
    assert all(c > 0 for c in calls) and sum(calls) == len(alone.batches)


def test_a_failing_rank_stops_rank_0_with_its_message_and_no_output(tmp_path):
    src = write_raster(tmp_path / "in.tif", textured(70, 90).round().astype(np.uint8))
    opts = SROptions(tile=32, overlap=8, batch=2)
    errors = _sharded(src, str(tmp_path / "out.tif"), opts, [StandInModel(scale=2), FailingStandIn(scale=2)])
    assert "rank 1 failed" in str(errors[0]) and "injected failure" in str(errors[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_world_from_env_and_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(1, 2, 1)
    assert device_for("cpu", World(1, 2, 1)) == torch.device("cpu")
    monkeypatch.delenv("RANK")
    with pytest.raises(RuntimeError, match="torchrun"):
        world_from_env()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo_equal_one_process(tmp_path):
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(0)
    model = build_model(tiny_config(scale=2, bands=3), with_encoder=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # not the zero-initialised output layers of a fresh model
    path = save_model(tmp_path / "tiny.safetensors", model)
    src = write_raster(tmp_path / "in.tif", textured(40, 72).round().astype(np.uint8))
    common = [src, "--model", str(path), "--tile", "32", "--overlap", "8", "--batch", "1", "--device", "cpu",
              "--output-type", "float32", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "backend"))
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "lcmsr", "sr", common[0], str(tmp_path / "one.tif"), *common[1:]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0",
                          "-m", "lcmsr", "sr", common[0], str(tmp_path / "two.tif"), *common[1:]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_raster(tmp_path / "one.tif"), read_raster(tmp_path / "two.tif")
    assert a.shape == (3, 80, 144)
    np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "one.tif", "tiny.safetensors", "two.tif"]
