"""Scale out: ``torchrun --nproc_per_node=N -m lcmsr sr IN OUT --model M ...``.

The tiles of one raster are sharded over N processes with ``torch.distributed``
(NCCL between GPUs, gloo on the CPU).  Every process reads the same tiles in
the same order and so forms the same batches (a batch's composition decides
its numbers, so this is what makes the output identical to a single-process
run); batch ``i`` is computed by rank ``i % N``.  Ranks other than 0 send their
results to rank 0, which blends and writes exactly as a single process does.
Point-to-point sends block until rank 0 takes them, so no rank runs more than
one batch ahead and memory stays bounded on every rank.

A rank that fails sends its error in place of its next result, so rank 0 stops
with that message and removes its partial output; if rank 0 fails, torchrun
stops the others.  GPU out-of-memory still halves the batch (the batch's
results are the same tiles), but a tile that does not fit stops the job
(restarting with smaller tiles would need every rank to agree).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .progress import Progress

_HEADER = 7   # index, status, four dimensions, error length


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int


def world_from_env() -> World | None:
    """The torchrun process layout from the environment, or None for a plain (single-process) run."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        raise RuntimeError(f"WORLD_SIZE={size} is set but RANK is not: start sharded runs with torchrun") from None
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


def device_for(request: str, world: World) -> torch.device:
    """Each process takes its own GPU (its local rank) unless the CPU was asked for."""
    req = (request or "auto").strip().lower()
    if req == "cpu" or (req == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device '{request}' was requested but CUDA is not available in rank {world.rank}")
    if world.local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"rank {world.rank} has local rank {world.local_rank} but only "
                           f"{torch.cuda.device_count()} CUDA GPU(s) are visible: use --nproc_per_node "
                           f"{torch.cuda.device_count()} or fewer")
    return torch.device(f"cuda:{world.local_rank}")


class Exchange:
    """Batch ownership and the message protocol between the ranks of one sharded job.

    ``transport`` is anything with ``send(tensor, dst=)`` and ``recv(tensor, src=)``
    (blocking, in order per pair of ranks); by default ``torch.distributed`` on
    the initialised process group.
    """

    def __init__(self, rank: int, size: int, device: torch.device, transport=None):
        if transport is None:
            import torch.distributed as transport

            # NCCL moves CUDA tensors only; gloo moves CPU tensors.
            self.wire = device if transport.get_backend() == "nccl" else torch.device("cpu")
        else:
            self.wire = torch.device("cpu")
        self.dist = transport
        self.rank, self.size = rank, size
        self.last_sent = -1

    def next_owned(self) -> int:
        """The batch rank 0 will wait for next from this rank (an error message takes its place)."""
        i = self.last_sent + 1
        while self.owner(i) != self.rank:
            i += 1
        return i

    def owner(self, index: int) -> int:
        return index % self.size

    def send(self, index: int, batch: np.ndarray) -> None:
        """Send batch ``index``'s HR results [B, C, H, W] (float32) to rank 0."""
        t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.wire)
        self.dist.send(self._header(index, 0, tuple(t.shape)), dst=0)
        self.dist.send(t, dst=0)
        self.last_sent = index

    def send_error(self, index: int, message: str) -> None:
        data = message.encode("utf-8", "replace")[:4000]
        self.dist.send(self._header(index, 1, (0, 0, 0, 0), len(data)), dst=0)
        self.dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.wire), dst=0)

    def recv(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        """Rank 0: receive batch ``index`` of the given shape from its owner."""
        src = self.owner(index)
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.wire)
        self.dist.recv(header, src=src)
        got_index, status, *dims, length = (int(v) for v in header.cpu())
        if status != 0:
            buf = torch.empty(length, dtype=torch.uint8, device=self.wire)
            self.dist.recv(buf, src=src)
            raise RuntimeError(f"rank {src} failed: {bytes(buf.cpu().numpy()).decode('utf-8', 'replace')}")
        if got_index != index or tuple(dims) != tuple(shape):
            raise RuntimeError(f"rank {src} sent batch {got_index} of shape {tuple(dims)}, rank 0 expected batch "
                               f"{index} of shape {tuple(shape)}: the ranks disagree on the tiling (same "
                               f"input file, model and options on every rank?)")
        buf = torch.empty(shape, dtype=torch.float32, device=self.wire)
        self.dist.recv(buf, src=src)
        return buf.cpu().numpy()

    def _header(self, index, status, dims, length=0) -> torch.Tensor:
        return torch.tensor([index, status, *dims, length], dtype=torch.int64, device=self.wire)


def superresolve_distributed(src, dst, model_or_path, options, progress: Progress | None = None,
                             world: World | None = None):
    """One process of ``torchrun ... -m lcmsr sr``: initialise the process group, run the shard, clean up.

    Returns the :class:`~lcmsr.raster.pipeline.SRResult` on rank 0 and ``None`` on the others.
    """
    import torch.distributed as dist

    from .raster.pipeline import superresolve

    world = world or world_from_env()
    if world is None:
        raise RuntimeError("not started by torchrun (WORLD_SIZE is 1 or unset)")
    device = device_for(options.device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    try:
        exchange = Exchange(world.rank, world.size, device)
        if world.rank == 0:
            progress = progress or Progress()
            progress.info(f"sharded over {world.size} processes ({backend}); rank 0 blends and writes")
            return superresolve(src, dst, model_or_path, options, progress, exchange=exchange, device=device)
        try:
            superresolve(src, dst, model_or_path, options, Progress(), exchange=exchange, device=device)
        except BaseException as exc:
            exchange.send_error(exchange.next_owned(), f"{type(exc).__name__}: {exc}")
            raise
        return None
    finally:
        if own_group:
            dist.destroy_process_group()
