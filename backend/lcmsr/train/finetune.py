"""Fine-tuning a finished model on the user's own imagery (``lcmsr finetune``, ``lcmsr:finetune``).

A model file holds what inference runs -- the SR decoder D, CondNet and the consistency denoiser
(the EMA weights) -- but not the stage-1 encoder E(HR, LR↑), which only training needs.  So the
two stages are continued from the file's weights without the true latent, each on exactly what
inference computes:

1. **decoder phase** (the autoencoder's half the file holds), ``decoder_steps`` steps: CondNet and the
   denoiser frozen, D trained on the latents inference feeds it -- the one-step latent
   ẑ = f(x_T, T-1, CondNet(LR↑)) and the faithful (CondNet) latent c;
2. **consistency phase**, the remaining steps: D frozen, CondNet and the denoiser trained through it.

The loss of a step is ``½ [pixel(D(LR, ẑ/s), HR) + w · LPIPS(D(LR, ẑ/s), HR)] + ½ pixel(D(LR, c/s), HR)``:
the one-step output keeps its perceptual term (it is the sampler that draws detail), the faithful
output stays a regression (it never invents detail).  Adam in each phase, its learning rate decayed
on a cosine within the phase (a function of the step, so a resume is exact); no EMA (a few hundred
steps would not move a 0.9999 EMA).  Why the decoder first and briefly (``decoder_share`` 0.25 of the
budget): its step is the cheaper one and it adapts the pixel detail to the new imagery at once; the
longer second phase then moves the latents -- CondNet sees the new sensor's LR statistics -- through
a decoder that already fits the data.  The latent scale and the normalisation stay the base model's,
so the new file takes exactly the inputs the base took.

LR patches are made by the project's degradation (:func:`lcmsr.train.data.make_lr`, as ``lcmsr
degrade``), or read from true co-registered LR rasters (``lr_sources``).  A band-wise model
(domain "input_percentile") is fine-tuned on every band of every raster, each stretched by its own
1-99 % range as inference stretches it.  ``minutes`` plans the steps from a timed trial of each phase;
the plan is written in the checkpoints, so a resumed run finishes the same plan.  The new model's
domain is the base's, widened by what the data showed (pixel sizes, data types, band kinds), and its
training record names the base model (file name and SHA-256), the data and the time spent.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch

from ..config import LATENT_FACTOR
from ..domain import ROLES, Domain
from ..normalizers import NORMALIZERS
from ..model import ModelInfo
from ..ops import upsample_bicubic
from ..paths import check_training, training_paths
from ..progress import Progress
from ..train_options import FINETUNE, FINETUNE_LR, FINETUNE_MINUTES, TrainOptions
from . import checkpoint as ckpt
from .data import (PairSampler, PairSource, PatchSampler, SourceSet, StretchedBand, describe_source,
                   open_source)
from .loop import STREAM_DATA, STREAM_NOISE, Stage, TrainResult, pixel_loss, run_training
from .ddp import init_distributed, rank_seed

PHASES = ("decoder", "consistency")


def resolve_model(name: str) -> str:
    """A model file path, or the name of a bundled or registered model (with or without .safetensors)."""
    from ..catalog import model_paths

    if os.path.exists(name):
        return name
    wanted = os.path.basename(name)
    known = model_paths()
    for path in known:
        base = os.path.basename(path)
        if wanted in (base, os.path.splitext(base)[0]):
            return path
    names = ", ".join(os.path.splitext(os.path.basename(p))[0] for p in known) or "none"
    raise FileNotFoundError(f"model '{name}' is neither a file nor a bundled or registered model "
                            f"(known: {names})")


def is_bandwise(info: ModelInfo) -> bool:
    return info.domain.bandwise or (info.bands == 1 and NORMALIZERS[info.domain.normalization].stretched)


# --- data -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
    sources: list                # Source objects the loop samples from
    val_sources: list
    bands: list[int]             # of the prepared sources (band-wise: [1])
    data_types: list[str]        # of the rasters as the user has them
    lr_gsd_m: list[float]        # LR pixel sizes seen (metres)
    roles: list[str]             # band kinds seen (known ones)
    files: list[str]


def _facts(item):
    """InputFacts of a raster path (None for arrays or where GDAL is missing)."""
    if not isinstance(item, (str, os.PathLike)) or os.fspath(item).lower().endswith(".npy"):
        return None
    try:
        from ..raster.facts import input_facts
    except ImportError:
        return None
    return input_facts(os.fspath(item))


def _stretch_range(item, source, band: int) -> tuple[float, float]:
    """The 1-99 % range inference measures of ``band`` (lcmsr.raster.facts.band_ranges, or the same
    percentiles of an array's valid values)."""
    if isinstance(item, (str, os.PathLike)) and not os.fspath(item).lower().endswith(".npy"):
        from ..raster.facts import band_ranges

        lo, hi, _, _ = band_ranges(os.fspath(item), [band])[0]
        return lo, hi
    import numpy as np

    from ..normalizers import robust_range

    data, valid = source.read(0, 0, source.width, source.height, [band])
    values = data[valid]
    if values.size == 0:
        raise ValueError(f"{source.name}: band {band} has no valid pixel")
    step = max(1, values.size // 1_000_000)
    return robust_range(np.asarray(values[::step]))


def prepare_data(opts: TrainOptions, info: ModelInfo, progress: Progress) -> Prepared:
    """The training (and validation) sources as the model sees them: bands matched to the model by role,
    band-wise models on every band stretched as at inference, true LR paired with its HR."""
    from ..domain import plan_bands

    if opts.lr_sources and len(opts.lr_sources) != len(opts.sources):
        raise ValueError(f"{len(opts.lr_sources)} LR raster(s) for {len(opts.sources)} HR raster(s): give one "
                         f"co-registered LR raster per HR raster, in the same order")
    domain, scale = info.domain, info.scale
    bandwise = is_bandwise(info)
    out = Prepared([], [], [], [], [], [], [])
    chosen: list[int] | None = None

    def add(items, lr_items, into, record: bool):
        nonlocal chosen
        for i, item in enumerate(items):
            hr = open_source(item, i)
            lr_item = lr_items[i] if lr_items else None
            lr = open_source(lr_item, i) if lr_item is not None else None
            facts = _facts(item)
            lr_facts = _facts(lr_item) if lr_item is not None else None
            roles = facts.roles if facts else [None] * hr.count
            if bandwise:
                bands = list(opts.bands) if opts.bands else hr.default_bands
                hr.check_bands(bands)
                for b in bands:
                    # The model works in the stretch of its *input*: the LR band's range when there is one.
                    lo, hi = _stretch_range(lr_item, lr, b) if lr is not None else _stretch_range(item, hr, b)
                    s_hr = StretchedBand(hr, b, lo, hi, roles[b - 1])
                    into.append(PairSource(s_hr, StretchedBand(lr, b, lo, hi, roles[b - 1]), scale)
                                if lr is not None else s_hr)
                used = bands
            else:
                if hr.data_type != info.data_type:
                    raise ValueError(f"{hr.name} is {hr.data_type} but the model takes {info.data_type} (its value "
                                     f"range is fixed): fine-tune a model made for {hr.data_type} data")
                if facts is not None:
                    used, why, warnings = plan_bands(domain, info.bands, facts, opts.bands)
                    for w in warnings:
                        progress.warn(w)
                    if record:
                        progress.info(f"{os.path.basename(hr.name)}: {why}")
                else:
                    used = list(opts.bands) if opts.bands else hr.default_bands[:info.bands]
                    if len(used) != info.bands:
                        raise ValueError(f"{hr.name}: the model takes {info.bands} band(s) but {len(used)} are "
                                         f"selected: choose {info.bands} with bands")
                if chosen is not None and used != chosen:
                    raise ValueError(f"{hr.name}: bands {used} match the model's roles, but bands {chosen} did in "
                                     f"the earlier rasters: give the bands in the model's order explicitly")
                chosen = used
                into.append(PairSource(hr, lr, scale) if lr is not None else hr)
            if record:
                out.files.append(describe_source(item, i) + (f" (LR {describe_source(lr_item, i)})" if lr_item else ""))
                raw = facts.data_type if facts else hr.data_type
                if raw not in out.data_types:
                    out.data_types.append(raw)
                gsd = (lr_facts.gsd_m if lr_facts and lr_facts.gsd_m else
                       facts.gsd_m * scale if facts and facts.gsd_m else None)
                if gsd:
                    out.lr_gsd_m.append(gsd)
                for b in used:
                    r = roles[b - 1]
                    if r and r in ROLES and r not in out.roles:
                        out.roles.append(r)

    add(opts.sources, opts.lr_sources, out.sources, record=True)
    add(opts.val_sources, [], out.val_sources, record=False)
    out.bands = [1] if bandwise else chosen
    return out


def finetuned_domain(base: Domain, scale: int, data: Prepared, base_name: str) -> Domain:
    """The base model's domain widened by what the fine-tuning data showed: its LR pixel sizes, its data
    types (band-wise models, which stretch every input) and its band kinds (band-wise: trained_roles)."""
    d = copy.deepcopy(base)
    if not d.known:
        return d
    if data.lr_gsd_m:
        lo, hi = min(data.lr_gsd_m), max(data.lr_gsd_m)
        if d.lr_gsd_m:
            lo, hi = min(lo, d.lr_gsd_m[0]), max(hi, d.lr_gsd_m[1])
        lo, hi = max(lo, 1e-4), min(hi, 1e6)
        d.lr_gsd_m = [lo, hi]
        d.hr_gsd_m = [lo / scale, hi / scale]
    if NORMALIZERS[d.normalization].stretched:   # any type of the family is stretched alike
        d.data_types = d.data_types + [t for t in data.data_types if t not in d.data_types]
    if d.bandwise:
        seen = set(d.trained_roles) | set(data.roles)
        d.trained_roles = [r for r in ROLES if r in seen]
    lo_px, hi_px = (min(data.lr_gsd_m), max(data.lr_gsd_m)) if data.lr_gsd_m else (None, None)
    sizes = ("" if lo_px is None else f", LR pixels {lo_px:.3g} m" if lo_px == hi_px else
             f", LR pixels {lo_px:.3g}-{hi_px:.3g} m")
    names = ", ".join(os.path.basename(f) for f in data.files[:6]) + (" ..." if len(data.files) > 6 else "")
    note = f"Fine-tuned from {base_name} on {len(data.files)} raster(s) ({names}){sizes}."
    base_notes = d.notes.strip()
    if base_notes and not base_notes.endswith("."):
        base_notes += "."
    d.notes = (base_notes + " " + note).strip()[-2000:]
    return d


# --- the stage --------------------------------------------------------------------------------

class FinetuneStage(Stage):
    name = FINETUNE

    def __init__(self, base, base_path: str, base_sha256: str, prepared: Prepared, pace: dict | None = None,
                 budget_s: float | None = None):
        """``base``: the loaded model (an LCMSR without encoder) whose weights both phases start from;
        ``pace`` (seconds per step of each phase, from the timed trial) and ``budget_s`` (the seconds the
        loop may spend): a minutes budget, re-planned once at the phase boundary (:meth:`planned_steps`)."""
        self.base, self.base_path, self.base_sha256, self.prepared = base, str(base_path), base_sha256, prepared
        self.pace, self.budget_s, self.prior = pace, budget_s, 0.0
        self.base_normalization = base.info.normalization
        self.base_config = base.info.config.to_dict()

    def setup(self, config, normalization, sset):
        opts = self.opts
        if self.ctx.distributed:
            raise ValueError("fine-tuning runs in one process: start it without torchrun")
        self.config, self.normalization, self.sset = config, normalization, sset
        self.model = self.base.to(self.device)
        self.decoder_steps = int(opts.decoder_steps)
        self.lpips = self.load_lpips() if opts.lpips and opts.lpips_weight > 0 else None
        self.learning_rates = {"decoder": opts.lr if opts.lr is not None else FINETUNE_LR["decoder"],
                               "consistency": opts.lr if opts.lr is not None else FINETUNE_LR["generator"]}
        m = self.model
        self.opts_by_phase = {
            "decoder": torch.optim.Adam(m.decoder.parameters(), lr=self.learning_rates["decoder"]),
            "consistency": torch.optim.Adam(list(m.condnet.parameters()) + list(m.denoiser.parameters()),
                                            lr=self.learning_rates["consistency"])}
        self.noise_gen = self.generator("noise", STREAM_NOISE)
        self.started = time.monotonic()   # this session's time (run.seconds holds the earlier sessions')

    def make_sampler(self, sset, normalization, seed, multiple):
        cls = PairSampler if all(isinstance(s, PairSource) for s in sset.sources) else PatchSampler
        return cls(sset, self.opts.scale, self.opts.patch, normalization, seed=seed, multiple=multiple)

    def elapsed(self) -> float:
        """Seconds this fine-tuning's loop has run, earlier sessions included."""
        return self.prior + time.monotonic() - self.started

    def planned_steps(self, step: int, iterations: int) -> int:
        """On a minutes budget, at the first consistency step: the steps left re-planned from the decoder
        phase's real pace (the trial's pace of the consistency phase scaled by real / trial decoder pace),
        so a machine busier or idler than during the trial still ends near the budget.  Decided before the
        phase's first step, so its cosine schedule and a resume after it are exact."""
        if self.pace is None or self.budget_s is None or step != self.decoder_steps or self.decoder_steps == 0:
            return iterations
        spent = self.elapsed()
        factor = (spent / self.decoder_steps) / self.pace["decoder"]
        left = self.budget_s * 0.97 - spent   # writing the model and the last checkpoint: about 3 %
        steps = max(1, int(left / (self.pace["consistency"] * factor)))
        self.pace = None   # once
        if self.ctx.is_main:
            self.progress.info(f"finetune: the decoder phase ran at {factor:.2f}x the trial's time per step: "
                               f"{steps} consistency steps fill the {left:.0f} s left (planned "
                               f"{iterations - self.decoder_steps})")
        return self.decoder_steps + steps

    def phase(self, step: int) -> str:
        return "decoder" if step < self.decoder_steps else "consistency"

    def _lr_at(self, step: int) -> tuple[str, float]:
        phase = self.phase(step)
        first, length = (0, self.decoder_steps) if phase == "decoder" else \
            (self.decoder_steps, self.opts.iterations - self.decoder_steps)
        frac = (step - first) / max(1, length)
        return phase, self.learning_rates[phase] * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))

    def train_step(self, hr, lr, step):
        opts, m = self.opts, self.model
        phase, rate = self._lr_at(step)
        train_decoder = phase == "decoder"
        m.decoder.train(train_decoder).requires_grad_(train_decoder)
        for net in (m.condnet, m.denoiser):
            net.train(not train_decoder).requires_grad_(not train_decoder)
        scale = m.latent_scale
        with self.autocast():
            with torch.set_grad_enabled(not train_decoder):
                cond = m.condnet(upsample_bicubic(lr, opts.scale))
                shape = (hr.shape[0], m.config.latent_channels, hr.shape[-2] // LATENT_FACTOR,
                         hr.shape[-1] // LATENT_FACTOR)
                x_t = torch.randn(shape, generator=self.noise_gen, device=self.device, dtype=cond.dtype)
                z = m.consistency(x_t, m.schedule.num_timesteps - 1, cond, tuple(hr.shape[-2:]))
            one_step = m.decoder(lr, z / scale.to(z.dtype))
            faithful = m.decoder(lr, cond / scale.to(cond.dtype))
            pix1 = pixel_loss(opts.pixel_loss, one_step, hr).mean()
            pix0 = pixel_loss(opts.pixel_loss, faithful, hr).mean()
            loss1 = pix1
            logs = {"one_step": float(pix1.detach()), "faithful": float(pix0.detach()),
                    "phase": 0.0 if train_decoder else 1.0}
            if self.lpips is not None:
                p = self.lpips(hr, one_step).float().mean()
                loss1 = loss1 + opts.lpips_weight * p
                logs["lpips"] = float(p.detach())
            loss = 0.5 * (loss1 + pix0)
        value = self.guard(loss, step)
        opt = self.opts_by_phase[phase]
        for group in opt.param_groups:
            group["lr"] = rate
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return value, logs

    @torch.no_grad()
    def sr(self, lr, hr, generator):
        """One-step SR, as the model file will run it."""
        self.model.eval()
        return self.model.sr(lr, steps=1, generator=generator)

    def checkpoint(self):
        m = self.model
        t = ckpt.module_tensors("decoder", m.decoder)
        t.update(ckpt.module_tensors("condnet", m.condnet))
        t.update(ckpt.module_tensors("denoiser", m.denoiser))
        state = {"learning_rates": self.learning_rates, "decoder_steps": self.decoder_steps,
                 "base_model": os.path.basename(self.base_path), "base_sha256": self.base_sha256,
                 "elapsed": self.elapsed(), "pace": self.pace, "budget_s": self.budget_s}
        for phase, opt in self.opts_by_phase.items():
            opt_t, opt_meta = ckpt.flatten_optimizer(f"opt_{phase}", opt)
            t.update(opt_t)
            state[f"optimizer_{phase}"] = opt_meta
        return t, state

    def restore(self, tensors, state, where):
        if state.get("base_sha256") != self.base_sha256:
            raise ckpt.CheckpointError(f"checkpoint {where} continues a fine-tuning of another model "
                                       f"({state.get('base_model')}), not of {os.path.basename(self.base_path)}")
        for prefix in ("decoder", "condnet", "denoiser"):
            ckpt.load_module(prefix, getattr(self.model, prefix), tensors, where)
        for phase, opt in self.opts_by_phase.items():
            ckpt.restore_optimizer(f"opt_{phase}", opt, tensors, state[f"optimizer_{phase}"])
        self.prior = float(state.get("elapsed") or 0.0)
        pace, budget = state.get("pace"), state.get("budget_s")
        if isinstance(pace, dict) and isinstance(budget, (int, float)):   # a re-plan still to come
            self.pace, self.budget_s = {k: float(pace[k]) for k in PHASES}, float(budget)

    def finish(self, run):
        from ..weights import STORAGE_DTYPES, save_model

        opts, info = self.opts, self.model.info
        base_name = os.path.basename(self.base_path)
        training = dict(info.training)
        seconds = self.elapsed()
        record = {
            "base_model": base_name, "base_sha256": self.base_sha256, "steps": run.step,
            "decoder_steps": min(self.decoder_steps, run.step),
            "consistency_steps": max(0, run.step - self.decoder_steps),
            "minutes_budget": opts.minutes, "seconds": round(seconds, 1),
            "data": self.prepared.files, "lr_data": "true LR rasters" if opts.lr_sources else
            "made from the HR by the project's degradation (antialiased bicubic)",
            "val_data": [describe_source(s, i) for i, s in enumerate(opts.val_sources)],
            "patch": opts.patch, "batch": opts.batch, "learning_rates": self.learning_rates,
            "pixel_loss": opts.pixel_loss, "lpips_weight": opts.lpips_weight if self.lpips is not None else 0.0,
            "seed": opts.seed, "device": str(self.device), "val_psnr": run.val_psnr,
            "bicubic_psnr": run.bicubic_psnr, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        training["finetunes"] = list(training.get("finetunes") or []) + [record]
        training["seconds"] = float(training.get("seconds", 0.0) or 0.0) + seconds
        new_info = dataclasses.replace(info, training=training,
                                       domain=finetuned_domain(info.domain, info.scale, self.prepared, base_name))
        new_info.validate()
        self.model.info = new_info
        storage = training.get("storage") if training.get("storage") in STORAGE_DTYPES else "fp32"
        run.model_path = str(save_model(opts.out, self.model, new_info, storage=storage))
        self.progress.info(f"finetune: model written to {run.model_path}")


# --- planning ---------------------------------------------------------------------------------

def _checkpoint_plan(opts: TrainOptions, folder: str) -> dict | None:
    """The options of the checkpoint a resume would continue (None: none, a fresh start)."""
    if not opts.resume:
        return None
    where = folder if opts.resume is True or opts.resume == "auto" else opts.resume
    path = Path(where)
    if path.is_dir():
        found = ckpt.list_checkpoints(path)
        if not found:
            return None
        path = found[-1]
    elif path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        options = doc["state"]["options"]
        return {"iterations": int(options["iterations"]), "decoder_steps": int(options["decoder_steps"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None   # the loop's own checks say what is wrong with it


def _timed_plan(stage_args, opts: TrainOptions, sset: SourceSet, progress: Progress,
                started: float) -> tuple[int, int, dict, float]:
    """(iterations, decoder_steps, pace, seconds left) that fill ``opts.minutes``: a throwaway copy of the model trains three
    steps of each phase (after one warm-up step; their median is the pace), and the budget left is split
    by ``decoder_share``."""
    base, base_path, sha, prepared = stage_args
    probe = FinetuneStage(copy.deepcopy(base), base_path, sha, prepared)
    trial = dataclasses.replace(opts, iterations=8, decoder_steps=4)
    ctx = init_distributed(opts.device)
    try:
        if ctx.distributed:
            raise ValueError("fine-tuning runs in one process: start it without torchrun")
        probe.attach(trial, ctx, Progress())
        from ..runtime import resolve_precision

        probe.bf16 = resolve_precision(trial.precision, ctx.device)[0] == "bf16"
        probe.setup(probe.base.config, probe.base_normalization, sset)
        sampler = probe.make_sampler(sset, probe.base_normalization, rank_seed(opts.seed, 0, STREAM_DATA),
                                     probe.base.config.hr_multiple)
        pace = {}
        for phase, first in (("decoder", 0), ("consistency", 4)):
            times = []
            for k in range(4):
                hr, lr = sampler.sample(opts.batch)
                t0 = time.monotonic()
                probe.train_step(hr.to(ctx.device), lr.to(ctx.device), first + k)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                times.append(time.monotonic() - t0)
            pace[phase] = sorted(times[1:])[1]   # the median after a warm-up step: robust to a busy machine
    finally:
        ctx.close()
    # What the loop adds: validation, checkpoints and writing the model, about 5 % of the time.
    budget = max(0.0, opts.minutes * 60.0 - (time.monotonic() - started)) * 0.95
    dec = int(budget * opts.decoder_share / pace["decoder"])
    gen = int(budget * (1.0 - opts.decoder_share) / pace["consistency"])
    if dec + gen == 0:
        dec, gen = (1, 0) if opts.decoder_share > 0 else (0, 1)
    progress.info(f"finetune: {opts.minutes:g} min -> {dec} decoder steps ({pace['decoder']:.2f} s each) and "
                  f"{gen} consistency steps ({pace['consistency']:.2f} s each) of {opts.batch} x {opts.patch} px")
    return dec + gen, dec, pace, budget / 0.95


def finetune(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Fine-tune ``opts.base_model`` (a file, or a bundled or registered model's name) on ``opts.sources``
    and write ``opts.out``.  ``minutes`` or ``iterations`` is the budget (``minutes`` by default)."""
    from ..catalog import file_sha256
    from ..weights import load_model

    started = time.monotonic()
    progress = progress or Progress()
    if not opts.base_model:
        raise ValueError("fine-tuning needs the model to start from (base_model / --from)")
    if not opts.out:
        raise ValueError("fine-tuning needs the path of the model file to write (out / --out)")
    if opts.minutes is not None and opts.iterations is not None:
        raise ValueError("give the budget as minutes or as iterations, not both")
    if not opts.sources:
        raise ValueError("no training rasters given")
    base_path = resolve_model(os.fspath(opts.base_model))
    opts = dataclasses.replace(opts, base_model=base_path)
    folder = training_paths(opts, FINETUNE)[2]
    opts = dataclasses.replace(opts, checkpoint_dir=folder)
    check_training(opts, FINETUNE)   # an output may never be an input (lcmsr.paths)
    base = load_model(base_path)
    info = base.info
    if opts.bands is not None and not is_bandwise(info) and len(opts.bands) != info.bands:
        raise ValueError(f"{len(opts.bands)} band(s) selected but the model {base_path} takes {info.bands}")
    sha = file_sha256(base_path)
    progress.info(f"finetune: from {base_path} ({info.domain.summary()}), sha256 {sha[:12]}")
    prepared = prepare_data(opts, info, progress)
    opts = dataclasses.replace(opts, scale=info.scale, bands=prepared.bands).for_stage(FINETUNE)
    run_opts = dataclasses.replace(opts, sources=prepared.sources, val_sources=prepared.val_sources)

    plan = _checkpoint_plan(opts, folder)
    pace = budget_s = None
    if plan is not None:
        iterations, decoder_steps = plan["iterations"], plan["decoder_steps"]
        progress.info(f"finetune: resuming the plan of {folder}: {decoder_steps} decoder + "
                      f"{iterations - decoder_steps} consistency steps")
    elif opts.iterations is not None:
        iterations = opts.iterations
        decoder_steps = int(round(opts.decoder_share * iterations))
    else:
        minutes = opts.minutes if opts.minutes is not None else FINETUNE_MINUTES
        run_opts = dataclasses.replace(run_opts, minutes=minutes)
        sset = SourceSet.open(run_opts.sources, run_opts.bands)
        iterations, decoder_steps, pace, budget_s = _timed_plan((base, base_path, sha, prepared), run_opts, sset,
                                                                progress, started)
    run_opts = dataclasses.replace(run_opts, iterations=iterations, decoder_steps=decoder_steps)
    return run_training(FinetuneStage(base, base_path, sha, prepared, pace, budget_s), run_opts, progress)
