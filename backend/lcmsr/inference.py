"""Fast inference around ``LCMSR.sr``: the same numbers, less overhead.

Single-step SR of a tile is a few hundred small kernels, so on a GPU launch
overhead and memory layout dominate, not arithmetic (see docs/PERFORMANCE.md).
:class:`Inference` wraps a model with the options that address that:

* ``channels_last`` — NHWC weights and inputs: cuDNN / oneDNN convolutions
  without layout transposes.
* ``precision="bf16"`` — autocast to bfloat16 (tensor cores on CUDA; on CPUs
  with AVX512-BF16 / AMX oneDNN runs bf16 convolutions natively).  Results differ
  from fp32 only by bf16 rounding.
* ``compile`` — ``torch.compile`` of the three networks (CondNet, denoiser,
  decoder), cached per model, so a QGIS session compiles once.  Where it is
  unavailable or fails (no C++ compiler, no Triton, an unsupported op) the job
  says so through ``progress.warn`` and continues eagerly.
* ``cuda_graphs`` — CUDA only: each fixed batch/tile shape is captured once as
  a CUDA graph and replayed, which removes the per-kernel launch cost that
  dominates one step.  Only used when the noise of every draw is given (the
  pipeline's position noise), because a graph replays the same random numbers.
* ``pin_memory`` — page-locked host buffers so host->device copies are
  asynchronous DMA.

No GDAL, no QGIS; torch >= 2.1 APIs only.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch

from .choices import PRECISIONS
from .runtime import is_oom, resolve_precision
from .progress import Progress

_COMPILED_PARTS = ("condnet", "denoiser", "decoder")
_MAX_GRAPHS = 4   # captured shapes kept per runner (OOM back-off makes new ones)


@dataclass
class InferenceOptions:
    precision: str = "fp32"               # "fp32" | "bf16" (autocast) | "auto" (lcmsr.runtime.resolve_precision)
    channels_last: bool | None = None     # None: on the CPU (1.3x there); not on CUDA (0.93-0.96x on an H200)
    compile: bool = False                 # torch.compile, eager fallback on failure
    cuda_graphs: bool = False             # CUDA only; ignored (said once) elsewhere
    pin_memory: bool = True               # CUDA only

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")


# model -> (proxy with compiled parts | None when compiling failed before)
_COMPILE_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can be tried here, and if not, why (one sentence)."""
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
            return False, "torch.compile is not supported on this Python/platform"
    except Exception as exc:  # a broken install must not stop inference
        return False, f"torch.compile cannot be imported ({exc})"
    return True, ""


def _compiled_proxy(model: torch.nn.Module):
    """A shallow copy of ``model`` whose CondNet, denoiser and decoder are compiled (weights shared).

    The caller's model object is not modified, so the plain path stays available
    (and is what the fallback uses).
    """
    proxy = copy.copy(model)
    proxy._modules = dict(model._modules)   # copy.copy shares the dict: replacing a part would leak back
    for name in _COMPILED_PARTS:
        part = model._modules.get(name)
        if part is not None:
            proxy._modules[name] = torch.compile(part, dynamic=False)
    return proxy


class Inference:
    """``Inference(model, device, options, progress).sr(lr, ...)`` == ``model.sr(lr, ...)``, faster.

    ``lr`` may live on the host (it is copied through pinned memory) or on the
    device; the result is float32 on the device.  The model is moved to
    ``device`` and, with ``channels_last``, its weights are converted to that
    layout in place (values unchanged; plain ``model.sr`` keeps working).
    """

    def __init__(self, model, device: torch.device | str, options: InferenceOptions | None = None,
                 progress: Progress | None = None):
        self.options = options or InferenceOptions()
        self.options.validate()
        self.device = torch.device(device)
        self.progress = progress or Progress()
        self.precision = self.options.precision
        if self.precision == "auto":
            self.precision = resolve_precision("auto", self.device)[0]
        self.model = model
        cuda = self.device.type == "cuda"
        # Measured: oneDNN gains 1.3x from NHWC on the CPU; cuDNN on an H200 lost 4-7 % with it at batch 8 of
        # 256² tiles (scripts/gpu_check.py, docs/gpu/gpu_check_h200.json), so CUDA keeps the default layout.
        cl = self.options.channels_last
        self.channels_last = (self.device.type == "cpu") if cl is None else cl
        if isinstance(model, torch.nn.Module):
            model.to(self.device)
            model.eval()
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
        self.pin = bool(self.options.pin_memory and cuda)
        self.graphs_enabled = bool(self.options.cuda_graphs and cuda)
        if self.options.cuda_graphs and not cuda:
            self.progress.info("CUDA graphs apply to CUDA devices only: not used on the CPU")
        self._graphs: dict[tuple, _Graph] = {}
        self._runner = model
        if self.options.compile:
            self._runner = self._compiled(model)

    # -- compile ---------------------------------------------------------------
    def _compiled(self, model):
        if not isinstance(model, torch.nn.Module) or not all(
                isinstance(getattr(model, n, None), torch.nn.Module) for n in _COMPILED_PARTS):
            self.progress.warn("torch.compile skipped: the model has no CondNet/denoiser/decoder to compile")
            return model
        ok, why = compile_available()
        if not ok:
            self.progress.warn(f"torch.compile unavailable ({why}): running eagerly")
            return model
        cached = _COMPILE_CACHE.get(model, False)
        if cached is None:
            self.progress.warn("torch.compile failed for this model earlier: running eagerly")
            return model
        if cached is False:
            cached = _compiled_proxy(model)
            _COMPILE_CACHE[model] = cached
        return cached

    def _call(self, fn_model, lr, steps, sampler, generator, noise, repeats=1):
        extra = {"repeats": repeats} if repeats > 1 else {}   # models without the option run plain calls
        return fn_model.sr(lr, steps=steps, sampler=sampler, generator=generator, noise=noise, **extra)

    def _autocast(self):
        if self.precision == "bf16":
            # Captured graphs must not reuse autocast's cast-weight cache across replays.
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                  cache_enabled=not self.graphs_enabled)
        return torch.autocast(device_type=self.device.type, enabled=False)

    # -- transfers ----------------------------------------------------------------
    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        if x.device == self.device:
            out = x
        elif self.pin and x.device.type == "cpu":
            out = x.pin_memory().to(self.device, non_blocking=True)
        else:
            out = x.to(self.device)
        if self.channels_last and out.ndim == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    # -- the call -------------------------------------------------------------------
    @torch.no_grad()
    def sr(self, lr: torch.Tensor, steps: int = 1, sampler: str = "consistency",
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           repeats: int = 1) -> torch.Tensor:
        """Model-space LR [B, C, h, w] -> model-space SR [B, C, h*s, w*s] (float32, on the device,
        channels_last strides when that option is on); ``repeats`` samples of each image: see ``LCMSR.sr``."""
        x = self.to_device(lr)
        if noise is not None:
            noise = noise.to(self.device, non_blocking=self.pin)
        if self.graphs_enabled and self._graphable(steps, sampler, noise):
            y = self._graphed(x, steps, sampler, noise, repeats)
            if y is not None:
                return y
        with self._autocast():
            if self._runner is not self.model:
                try:
                    y = self._call(self._runner, x, steps, sampler, generator, noise, repeats)
                except Exception as exc:
                    if is_oom(exc):
                        raise
                    self._compile_failed(exc)
                    y = self._call(self.model, x, steps, sampler, generator, noise, repeats)
            else:
                y = self._call(self.model, x, steps, sampler, generator, noise, repeats)
        # Not .contiguous(): a channels_last result converted here would cost one more batch of HR
        # pixels; callers index it per tile as it is.
        return y.float()

    def _compile_failed(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        self.progress.warn(f"torch.compile failed ({type(exc).__name__}: {first}): running eagerly")
        if isinstance(self.model, torch.nn.Module):
            _COMPILE_CACHE[self.model] = None
        self._runner = self.model

    # -- CUDA graphs ----------------------------------------------------------------
    def _graphable(self, steps, sampler, noise) -> bool:
        # A graph replays the same random numbers: every noise field the sampler draws must be given.
        needed = self.model.noise_draws(steps, sampler)
        if needed == 0:
            return True
        if noise is None:
            return False
        return (noise.ndim == 5 and noise.shape[0] >= needed) or (noise.ndim == 4 and needed == 1)

    def _graphed(self, x, steps, sampler, noise, repeats=1):
        key = (tuple(x.shape), None if noise is None else tuple(noise.shape), steps, sampler, repeats)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            try:
                graph = _Graph(lambda a, n: self._call(self._runner, a, steps, sampler, None, n, repeats),
                               x, noise, self._autocast)
            except Exception as exc:
                if is_oom(exc):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self.progress.warn(f"CUDA graph capture failed ({type(exc).__name__}: {first}): "
                                   f"running without CUDA graphs")
                self.graphs_enabled = False
                self._graphs.clear()
                return None
            self._graphs[key] = graph
        return graph.run(x, noise)


class _Graph:
    """One captured ``sr`` call for fixed input/noise shapes (static buffers, replayed)."""

    def __init__(self, fn, x: torch.Tensor, noise: torch.Tensor | None, autocast):
        self.x = x.clone()
        self.noise = None if noise is None else noise.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        # Warm-up on a side stream (cuDNN autotuning, lazy allocations, compilation) before capture.
        with torch.cuda.stream(side), autocast():
            for _ in range(2):
                fn(self.x, self.noise)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast():
            self.y = fn(self.x, self.noise).float()

    def run(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        self.x.copy_(x)
        if noise is not None:
            self.noise.copy_(noise)
        self.graph.replay()
        return self.y.clone()   # the static output is overwritten by the next replay
