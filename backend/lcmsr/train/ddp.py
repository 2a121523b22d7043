"""Multi-GPU / multi-node training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m lcmsr train-...`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed`
joins the group through ``env://`` (NCCL on CUDA, Gloo on the CPU).  Without
those variables everything here degrades to a single process, so the same
training code runs alone, on one GPU or on many.

Each rank draws its own patches (seeds derived from ``(seed, rank)``), gradients
are averaged by DDP, and only rank 0 writes checkpoints, the model file and logs.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..runtime import device_for, resolve_device, world_from_env


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    device_reason: str = ""
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DDP when distributed; otherwise unchanged."""
        if not self.distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, output_device=ids[0] if ids else None)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduced mean of a small tensor (losses, flags): every rank gets the same value."""
        if not self.distributed:
            return values
        v = values.detach().clone().to(self._comm_device())
        dist.all_reduce(v, op=dist.ReduceOp.SUM)
        return (v / self.world_size).to(values.device)

    def gather_object(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank (JSON-able states)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """Independent, reproducible 63-bit seeds per (run seed, rank, stream)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(stream)]).generate_state(1, np.uint64)[0]) >> 1


def init_distributed(device_request: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one and pick this rank's device (lcmsr.runtime)."""
    world = world_from_env()
    if world is None:
        choice = resolve_device(device_request)
        return DistContext(device=choice.device, device_reason=choice.reason)
    rank, size, local_rank = world.rank, world.size, world.local_rank
    choice = device_for(device_request, world)
    device, reason = choice.device, choice.reason
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    reason = f"{reason}, {'NCCL' if backend == 'nccl' else 'Gloo'} process group"
    initialized = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=size,
                                timeout=datetime.timedelta(minutes=30), **kwargs)
        initialized = True
    return DistContext(rank=rank, world_size=size, local_rank=local_rank, device=device,
                       device_reason=reason, initialized_here=initialized)
