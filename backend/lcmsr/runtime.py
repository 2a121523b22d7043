"""The runtime, shared by training and inference: which device runs and why (never a silent fallback),
which precision, the process world of a ``torchrun`` job, and what counts as running out of memory.

One place for each decision: :func:`resolve_device`, :func:`resolve_precision`, :func:`world_from_env`
with :func:`device_for` (a rank's device), :func:`is_oom` / :func:`is_cpu_alloc_failure`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says why."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str          # one sentence for logs and the diagnostics view
    fallback: bool       # True when "auto" wanted a GPU but had to use the CPU


def _cuda_unavailable_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    try:
        n = torch.cuda.device_count()
    except Exception as exc:  # driver problems surface here
        return f"the CUDA driver could not be queried ({exc})"
    if n == 0:
        return "no CUDA GPU is visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)"
    return "CUDA is not available"


def resolve_device(request: str | None = "auto") -> DeviceChoice:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a device and a reason.

    "auto" takes the first CUDA GPU when there is one and otherwise the CPU, with
    ``fallback=True`` and the reason; an explicit CUDA request that cannot be met
    raises :class:`DeviceError` naming why.
    """
    req = (request or "auto").strip().lower()
    if req == "cpu":
        return DeviceChoice(torch.device("cpu"), "CPU requested", False)
    if req == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda:0")
            return DeviceChoice(dev, f"CUDA GPU found: {torch.cuda.get_device_name(dev)}", False)
        return DeviceChoice(torch.device("cpu"), f"running on the CPU: {_cuda_unavailable_reason()}", True)
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{request}' was requested but {_cuda_unavailable_reason()}")
        index = 0 if req == "cuda" else req.split(":", 1)[1]
        try:
            index = int(index)
        except ValueError:
            raise DeviceError(f"device '{request}' is not of the form cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"device '{request}' does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible")
        dev = torch.device(f"cuda:{index}")
        return DeviceChoice(dev, f"CUDA GPU requested: {torch.cuda.get_device_name(dev)}", False)
    raise DeviceError(f"unknown device '{request}': use auto, cpu, cuda or cuda:N")


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), and how we know.

    oneDNN runs bf16 convolutions at about twice the fp32 rate on such CPUs; elsewhere bf16 is
    emulated and slower than fp32, so it must not be chosen there.  Read from the kernel's CPU
    flags (Linux); other systems say "unknown" and keep fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
                    if found:
                        return True, f"the CPU has native bf16 ({', '.join(found)})"
                    return False, "the CPU has no native bf16 (no avx512_bf16/amx_bf16 flag)"
    except OSError:
        pass
    return False, "native bf16 support of this CPU is unknown"


def resolve_precision(request: str | None, device: torch.device) -> tuple[str, str]:
    """Turn "auto" | "fp32" | "bf16" into the precision that runs on ``device``, and why (one clause).

    The one place the inference precision is decided (docs/PERFORMANCE.md has the measurements):

    * "auto" on a CPU with native bf16 (AVX512-BF16 / AMX): bf16 autocast (with channels_last, which
      lcmsr.inference uses everywhere), measured about 2x plain fp32 on the shipped models, its output
      within bf16 rounding of fp32's (tests/backend/test_precision_auto.py, on real pixels);
    * "auto" on other CPUs: fp32 — bf16 would be emulated there, slower than fp32;
    * "auto" on CUDA: bf16 autocast — measured on an H200 (scripts/gpu_check.py, docs/gpu/gpu_check_h200.json),
      shipped models, batch 8 of 256² LR tiles: 1.05-1.08x fp32's speed with two thirds of its GPU
      memory (3.1-3.2 GiB against 4.6-4.7), output within 1e-3 of fp32's on average in model space;
    * "bf16" on a CPU without native bf16 falls back to fp32 (the reason says so; the caller warns).
    """
    req = (request or "auto").strip().lower()
    if req not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision '{request}': use auto, fp32 or bf16")
    if req == "fp32":
        return "fp32", "fp32 requested"
    if device.type not in ("cuda", "cpu"):
        return "fp32", f"bf16 is not used on {device.type}"
    if device.type == "cuda":
        if req == "bf16":
            return "bf16", "bf16 requested"
        return "bf16", "auto: bf16 on CUDA (as fast as fp32 or faster, with two thirds of its GPU memory)"
    native, why = cpu_native_bf16()
    if req == "bf16":
        return ("bf16", f"bf16 requested and {why}") if native else ("fp32", f"bf16 requested but {why}: using fp32")
    return ("bf16", f"auto: {why}, bf16 runs about 2x fp32") if native else ("fp32", f"auto: {why}")


# ---------------------------------------------------------------- the process world (torchrun)

@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World | None:
    """The ``torchrun`` process layout from the environment, or None for a plain (single-process) run."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        raise RuntimeError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number") from None
    if size <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise RuntimeError(f"WORLD_SIZE={size} is set but RANK/LOCAL_RANK are not numbers: start "
                           f"multi-process runs with torchrun") from None
    return World(rank, size, local_rank)


def device_for(request: str | None, world: World) -> DeviceChoice:
    """A rank's device: its own GPU (its local rank) unless the CPU was asked for or there is no GPU."""
    req = (request or "auto").strip().lower()
    if req == "cpu" or (req == "auto" and not torch.cuda.is_available()):
        why = "CPU requested" if req == "cpu" else f"running on the CPU: {_cuda_unavailable_reason()}"
        return DeviceChoice(torch.device("cpu"), f"rank {world.rank}/{world.size}: {why}", req != "cpu")
    if not torch.cuda.is_available():
        resolve_device(request)   # raises the plain-language DeviceError
    if world.local_rank >= torch.cuda.device_count():
        raise DeviceError(f"rank {world.rank} has local rank {world.local_rank} but only "
                          f"{torch.cuda.device_count()} CUDA GPU(s) are visible on this node: use "
                          f"--nproc_per_node {torch.cuda.device_count()} or fewer")
    dev = torch.device(f"cuda:{world.local_rank}")
    return DeviceChoice(dev, f"rank {world.rank}/{world.size}: CUDA GPU {world.local_rank} "
                             f"({torch.cuda.get_device_name(dev)})", False)


# ---------------------------------------------------------------- out of memory

_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def is_oom(exc: BaseException) -> bool:
    """A GPU (or torch allocator) out-of-memory error: the caller may retry with less."""
    return isinstance(exc, _OOM) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def is_cpu_alloc_failure(exc: BaseException) -> bool:
    """Host memory ran out: torch's "DefaultCPUAllocator: can't allocate memory", numpy's MemoryError."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
