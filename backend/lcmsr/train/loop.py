"""The training loop both stages share: data, devices, DDP, bf16, checkpoints, exact resume,
validation, NaN guard and cancel.

A stage (:mod:`.stage1`, :mod:`.stage2`) is a :class:`Stage`: it owns its networks,
optimisers and losses and does one optimisation step in :meth:`Stage.train_step`.
Everything else — which patches, when to validate or save, how to resume — is here,
so the two stages cannot drift apart in those respects.

Exact resume: every source of randomness is an explicit generator whose state is
checkpointed per rank (the patch sampler's numpy generator, the stage's torch
generators, torch's global RNGs), validation uses generators of its own, and
checkpoints are written at step boundaries.  A run killed after step k and resumed
therefore computes bit-for-bit the steps k+1.. of an uninterrupted run on the
same hardware.
"""
from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, named_config
from ..runtime import resolve_precision
from ..normalization import Normalization
from ..ops import upsample_bicubic
from ..progress import Cancelled, Progress
from ..train_options import TrainOptions
from . import checkpoint as ckpt
from .data import PatchSampler, SourceSet, compute_normalization, validation_pairs
from .ddp import DistContext, init_distributed, rank_seed

# Seed streams (rank_seed's third argument): one independent generator per purpose.
STREAM_INIT, STREAM_DATA, STREAM_NOISE, STREAM_NORM, STREAM_VAL, STREAM_SCALE = range(6)


def pixel_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel |d| ("l1") or d² ("l2") in fp32, unreduced."""
    d = pred.float() - target.float()
    return d.abs() if kind == "l1" else d.pow(2)


# Options that define the run: resuming under different values would not be the same run.
_RUN_DEFINING = ("config", "overrides", "scale", "bands", "patch", "batch", "seed", "sources", "stage1",
                 "base_model")


@dataclass
class TrainResult:
    stage: str
    steps: int
    loss: float | None
    val_psnr: float | None
    bicubic_psnr: float | None
    checkpoint: str | None
    model_path: str | None
    seconds: float
    history: list[dict] = field(default_factory=list)
    latent_scale: float | None = None
    resumed_from: int | None = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_config(opts: TrainOptions, bands: int, base: dict | None = None) -> ModelConfig:
    """The named config (or ``base``, stage 2's stage-1 config) with ``opts.overrides`` applied."""
    cfg = ModelConfig.from_dict(base) if base is not None else named_config(opts.config, scale=opts.scale, bands=bands)
    if opts.overrides:
        cfg = ModelConfig.from_dict(_merge(cfg.to_dict(), opts.overrides, "config"))
    return cfg


def _merge(base: dict, changes: dict, where: str) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if key not in out:
            raise ValueError(f"{where} has no setting '{key}'")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"consistency.loss=pseudo_huber"`` -> ``{"consistency": {"loss": "pseudo_huber"}}`` (values JSON or str)."""
    if "=" not in text:
        raise ValueError(f"config override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


class Stage(abc.ABC):
    """One training stage: networks, optimisers and one optimisation step (stage1/2/3 implement it).

    A stage is a plain object constructed with what it starts from (stage 2: the stage-1
    checkpoint; stage 3: the model file) and handed to :func:`run_training`, which attaches
    the run (options, devices, progress) and calls :meth:`setup`.
    """

    name = "stage"
    export_final: str | None = None   # also write the final checkpoint here (stage 1's --out)
    # Stages that continue earlier work (2, 3) start from its normalisation and config.
    base_normalization: Normalization | None = None
    base_config: dict | None = None

    def attach(self, opts: TrainOptions, ctx: DistContext, progress: Progress) -> None:
        """The run this stage takes part in: called by the loop before :meth:`setup`."""
        self.opts, self.ctx, self.progress = opts, ctx, progress
        self.device = ctx.device
        self.bf16 = False
        self.generators: dict[str, torch.Generator] = {}

    # --- set by the loop before training -----------------------------------------------------
    @abc.abstractmethod
    def setup(self, config: ModelConfig, normalization: Normalization, sset: SourceSet) -> None:
        """Build the networks and optimisers on ``self.device``."""

    def load_lpips(self):
        """LPIPS (AlexNet) on this stage's device for a perceptual loss term, or None — with a
        warning on rank 0 — when the patch is too small for it or its weights are missing."""
        from ..metrics.lpips import MIN_LPIPS_SIZE, LPIPS

        warn = self.progress.warn if self.ctx.is_main else (lambda message: None)
        pixel = self.opts.pixel_loss.upper()
        if self.opts.patch < MIN_LPIPS_SIZE:
            warn(f"the HR patch {self.opts.patch} is smaller than the {MIN_LPIPS_SIZE} px LPIPS needs: "
                 f"training with {pixel} only")
            return None
        try:
            return LPIPS(net="alex").to(self.device)
        except (FileNotFoundError, ImportError, OSError, ValueError, RuntimeError) as exc:
            warn(f"LPIPS is not available ({exc}); training with {pixel} only")
            return None

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generator(self, name: str, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(rank_seed(self.opts.seed, self.ctx.rank, stream))
        self.generators[name] = g
        return g

    def guard(self, loss: torch.Tensor, step: int) -> float:
        """Global mean of the loss; raises :class:`TrainingDiverged` before a NaN reaches the weights."""
        value = float(self.ctx.mean(loss.detach().float().reshape(1)).item())
        if not math.isfinite(value):
            raise TrainingDiverged(f"{self.name}: the loss became {value} at step {step + 1}; "
                                   f"training stopped before applying that step")
        return value

    # --- the stage's work ---------------------------------------------------------------------
    @abc.abstractmethod
    def train_step(self, hr: torch.Tensor, lr: torch.Tensor, step: int) -> tuple[float, dict]:
        """One optimisation step on a model-space batch: (loss, logged values)."""

    @abc.abstractmethod
    def sr(self, lr: torch.Tensor, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What validation measures (model space)."""

    @abc.abstractmethod
    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors: weights, optimiser and EMA states; JSON-able state) of this stage."""

    @abc.abstractmethod
    def restore(self, tensors: dict[str, torch.Tensor], state: dict, where: str) -> None:
        """Load what :meth:`checkpoint` wrote; ``where`` names the file in error messages."""

    def finish(self, run: "Run") -> None:
        """After the last step (all ranks); rank 0 writes the stage's product."""


@dataclass
class Run:
    """What the loop knows; handed to :meth:`Stage.finish`."""
    opts: TrainOptions
    ctx: DistContext
    config: ModelConfig
    normalization: Normalization
    sset: SourceSet
    step: int = 0
    history: list = field(default_factory=list)
    val_psnr: float | None = None
    bicubic_psnr: float | None = None
    seconds: float = 0.0
    checkpoint: str | None = None
    model_path: str | None = None
    latent_scale: float | None = None
    extra: dict = field(default_factory=dict)

    def state_json(self) -> dict:
        return {"normalization": self.normalization.to_dict(), "data_type": self.sset.data_type,
                "band_names": self.sset.band_names, "bands": self.sset.bands, "config": self.config.to_dict()}


def _finite_or_none(v):
    return v if v is None or math.isfinite(v) else None


def run_training(stage: Stage, opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Train ``stage`` under ``opts`` (from its ``base_normalization`` and ``base_config`` where it has them)."""
    progress = progress or Progress()
    opts = opts.for_stage(stage.name)  # the stage's defaults filled in, every value checked
    ctx = init_distributed(opts.device)
    try:
        # One training per checkpoint folder (the lock), and SIGTERM/SIGINT end it with a checkpoint.
        with (ckpt.FolderLock(checkpoint_dir(opts, stage)) if ctx.is_main else contextlib.nullcontext()), \
                _StopOnSignals() as stop:
            return _run(stage, opts, progress if ctx.is_main else _Quiet(progress), ctx, stop)
    finally:
        ctx.close()


def checkpoint_dir(opts: TrainOptions, stage: "Stage") -> Path:
    return Path(opts.checkpoint_dir or os.path.join("checkpoints", stage.name))


class _StopOnSignals:
    """While training runs in the main thread, SIGTERM and SIGINT ask it to stop at the next step
    boundary, where it writes a resumable checkpoint and says so; a second signal interrupts at once."""

    def __init__(self):
        self.name: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # QGIS trains in a worker thread
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class _Quiet(Progress):
    """Ranks other than 0 stay silent but still see a cancel."""

    def __init__(self, parent: Progress):
        self.parent = parent

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def cancelled(self) -> bool:
        return self.parent.cancelled()


def _run(stage: Stage, opts, progress, ctx: DistContext, stop: _StopOnSignals) -> TrainResult:
    t_start = time.monotonic()
    stage.attach(opts, ctx, progress)
    normalization = stage.base_normalization
    ckdir = checkpoint_dir(opts, stage)
    if ctx.is_main:
        progress.info(f"{stage.name}: {ctx.device_reason}" if ctx.device_reason else f"{stage.name}: {ctx.device}")

    resume_ck = _find_resume(opts, ckdir, progress)
    sset = SourceSet.open(opts.sources, opts.bands)
    if resume_ck is not None:
        _check_same_run(resume_ck, opts, stage.name, ctx)
        normalization = Normalization.from_dict(resume_ck.state["run"]["normalization"])
    elif normalization is None:
        normalization = compute_normalization(sset, np.random.default_rng(rank_seed(opts.seed, 0, STREAM_NORM)))
    config = build_config(opts, len(sset.bands), stage.base_config)
    if normalization.bands != len(sset.bands):
        raise ValueError(f"the normalisation has {normalization.bands} band(s) but {len(sset.bands)} band(s) "
                         f"are selected from the training sources")
    run = Run(opts, ctx, config, normalization, sset)

    # The same rule as inference (lcmsr.runtime): bf16 autocast on CUDA and on CPUs with native bf16.
    precision, why = resolve_precision(opts.precision, ctx.device)
    stage.bf16 = precision == "bf16"
    if ctx.is_main:
        progress.info(f"{stage.name}: {'bf16 autocast' if stage.bf16 else 'fp32'} ({why})")

    torch.manual_seed(rank_seed(opts.seed, 0, STREAM_INIT))  # identical initial weights on every rank
    stage.setup(config, normalization, sset)
    sampler = PatchSampler(sset, opts.scale, opts.patch, normalization,
                           seed=rank_seed(opts.seed, ctx.rank, STREAM_DATA), multiple=config.hr_multiple)
    if sampler.skipped and ctx.is_main:
        progress.warn(f"sources smaller than the {opts.patch} px patch are not used: {', '.join(sampler.skipped)}")
    val = []
    if opts.val_sources and ctx.is_main:
        vset = SourceSet.open(opts.val_sources, sset.bands, what="validation")
        if vset.data_type != sset.data_type:
            raise ValueError(f"validation data type {vset.data_type} differs from the training data type "
                             f"{sset.data_type}")
        val = validation_pairs(vset, opts.scale, opts.val_crop, normalization, opts.val_max_crops,
                               multiple=config.hr_multiple)
        vset_bic = [_psnr(upsample_bicubic(lr, opts.scale), hr, opts.scale) for hr, lr in val]
        run.bicubic_psnr = float(np.mean(vset_bic))

    start = 0
    if resume_ck is not None:
        start = _restore(resume_ck, stage, sampler, run, ctx)
        if ctx.is_main:
            progress.info(f"{stage.name}: resumed from step {start} ({resume_ck.path})")
    run.step = start
    seconds_before = run.seconds

    def save(step: int, export: str | None = None) -> None:
        ranks = ctx.gather_object({"sampler": sampler.state_dict(), "rng": ckpt.rng_state(stage.generators)})
        if not ctx.is_main:
            return
        run.seconds = seconds_before + time.monotonic() - t_start
        tensors, stage_state = stage.checkpoint()
        state = {"stage": stage.name, "world_size": ctx.world_size, "options": opts.describe(),
                 "run": run.state_json(), "ranks": ranks, "stage_state": stage_state,
                 "history": run.history, "val_psnr": _finite_or_none(run.val_psnr),
                 "bicubic_psnr": _finite_or_none(run.bicubic_psnr), "seconds": run.seconds}
        run.checkpoint = str(ckpt.save_checkpoint(ckdir, step, tensors, state, opts.keep_checkpoints))
        if export:
            js = ckpt.write_checkpoint(export, step, tensors, state)
            run.model_path = run.model_path or str(js.with_suffix(".safetensors"))

    losses: list[float] = []
    window: dict[str, list[float]] = {}
    step = start
    try:
        while step < opts.iterations:
            if _cancel_requested(progress, ctx, stop):
                save(step)
                why = f"stopped by {stop.name}" if stop.name else "cancelled"
                if ctx.is_main:
                    progress.info(f"{stage.name}: {why} at step {step}; resumable checkpoint {run.checkpoint} "
                                  f"(resume from it to continue)")
                raise Cancelled(f"training {why} at step {step}; resume from {ckdir}")
            hr, lr = sampler.sample(opts.batch)
            hr, lr = hr.to(ctx.device, non_blocking=True), lr.to(ctx.device, non_blocking=True)
            loss, logs = stage.train_step(hr, lr, step)
            step += 1
            run.step = step
            losses.append(loss)
            for k, v in logs.items():
                window.setdefault(k, []).append(float(v))
            if step % opts.log_every == 0 or step == opts.iterations:
                entry = {"step": step, "loss": float(np.mean(losses[-opts.log_every:]))}
                entry.update({k: float(np.mean(v)) for k, v in window.items()})
                run.history.append({k: _finite_or_none(v) for k, v in entry.items()})
                window.clear()
            if val and (step % opts.val_every == 0 or step == opts.iterations):
                run.val_psnr = _validate(stage, val, opts)
                run.history.append({"step": step, "val_psnr": run.val_psnr, "bicubic_psnr": run.bicubic_psnr})
                progress.info(f"{stage.name} step {step}: val PSNR {run.val_psnr:.2f} dB "
                              f"(bicubic {run.bicubic_psnr:.2f} dB)")
            msg = f"step {step}/{opts.iterations} loss {loss:.4g}"
            if run.val_psnr is not None:
                msg += f" val {run.val_psnr:.2f} dB"
            progress.report(step / opts.iterations, msg)
            if step % opts.checkpoint_every == 0 and step < opts.iterations:
                save(step)
    except TrainingDiverged as exc:
        last = ckpt.list_checkpoints(ckdir)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"{exc}; {where}") from None
    stage.finish(run)
    save(step, stage.export_final)
    ctx.barrier()
    run.seconds = seconds_before + time.monotonic() - t_start
    return TrainResult(stage=stage.name, steps=step, loss=losses[-1] if losses else None, val_psnr=run.val_psnr,
                       bicubic_psnr=run.bicubic_psnr, checkpoint=run.checkpoint, model_path=run.model_path,
                       seconds=run.seconds, history=run.history, latent_scale=run.latent_scale,
                       resumed_from=start if resume_ck is not None else None)


def _cancel_requested(progress: Progress, ctx: DistContext, stop: _StopOnSignals) -> bool:
    flag = 1.0 if progress.cancelled() or stop.name else 0.0
    if ctx.distributed:  # every rank must stop at the same step or the collectives hang
        flag = float(ctx.mean(torch.tensor([flag], device=ctx.device)).item())
    return flag > 0


def _psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> float:
    from ..metrics.psnr_ssim import psnr

    return psnr(sr.float().cpu(), hr.float().cpu(), data_range=2.0, border=scale)


def _validate(stage: Stage, pairs, opts: TrainOptions) -> float:
    g = torch.Generator(device=stage.device)
    g.manual_seed(rank_seed(opts.seed, 0, STREAM_VAL))  # same noise at every validation
    values = []
    for hr, lr in pairs:
        with stage.autocast():
            sr = stage.sr(lr.to(stage.device), hr.to(stage.device), g)
        values.append(_psnr(sr, hr, opts.scale))
    return float(np.mean(values))


def _find_resume(opts: TrainOptions, ckdir: Path, progress: Progress):
    if not opts.resume:
        return None
    if opts.resume is True or opts.resume == "auto":
        if not ckpt.list_checkpoints(ckdir):
            progress.info(f"no checkpoint in {ckdir} to resume from; starting from step 0")
            return None
        return ckpt.load_checkpoint(ckdir, warn=progress.warn, check=_resume_problem)
    return ckpt.load_checkpoint(opts.resume, warn=progress.warn, check=_resume_problem)


def _resume_problem(state: dict) -> str:
    """What a resume needs from a checkpoint's state and this one lacks ('' when it has it all)."""
    if not (isinstance(state.get("run"), dict) and isinstance(state["run"].get("normalization"), dict)
            and isinstance(state.get("options"), dict) and isinstance(state.get("stage"), str)):
        return "its training state is missing or malformed"
    if not (isinstance(state.get("ranks"), list) and state["ranks"] and all(
            isinstance(r, dict) and isinstance(r.get("sampler"), dict) and isinstance(r.get("rng"), dict)
            for r in state["ranks"])):
        return "its per-process states are missing or malformed"
    return ""


def _check_same_run(ck: ckpt.Checkpoint, opts: TrainOptions, stage_name: str, ctx: DistContext) -> None:
    st = ck.state
    if st.get("stage") != stage_name:
        raise ckpt.CheckpointError(f"checkpoint {ck.path} is a '{st.get('stage')}' checkpoint, not '{stage_name}'")
    old, new = st["options"], json.loads(json.dumps(opts.describe()))
    differ = [k for k in _RUN_DEFINING if old.get(k) != new.get(k)]
    if differ:
        listed = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ckpt.CheckpointError(f"cannot resume from {ck.path}: the run was made with other options ({listed}); "
                                   f"use the same options or a new checkpoint directory")


def _restore(ck: ckpt.Checkpoint, stage: Stage, sampler: PatchSampler, run: Run, ctx: DistContext) -> int:
    st = ck.state
    stage.restore(ck.tensors, st.get("stage_state", {}), str(ck.path))
    ranks = st["ranks"]
    if len(ranks) == ctx.world_size:
        sampler.load_state_dict(ranks[ctx.rank]["sampler"])
        ckpt.restore_rng(ranks[ctx.rank]["rng"], stage.generators)
    else:
        # Fresh per-rank data seeds that also depend on the step, so no rank replays its first patches.
        sampler.rng = np.random.default_rng(rank_seed(run.opts.seed + ck.step, ctx.rank, STREAM_DATA))
        if ctx.is_main:
            stage.progress.warn(f"the checkpoint was written by {len(ranks)} process(es) and this run has "
                                f"{ctx.world_size}: data order after resume differs from the original run")
    run.history = list(st.get("history", []))
    run.val_psnr = st.get("val_psnr")
    run.seconds = float(st.get("seconds", 0.0))
    return ck.step
