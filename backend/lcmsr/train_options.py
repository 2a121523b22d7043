"""Every training option once: its default, its help and its choices (torch-free).

:class:`TrainOptions` is what the stages of :mod:`lcmsr.train` take.  The CLI's
``train-autoencoder`` / ``train-consistency`` / ``train-decoder`` options and the
plugin's training parameters are generated from its fields, so a default, a
choice or a help text is written here and nowhere else.  A field's metadata:

* ``help``: one line (the CLI's help, the plugin's label);
* ``choices`` and ``minimum``: what :meth:`TrainOptions.check` accepts;
* ``stages``: the stages that take the option (default: all three), ``required``: those that need it;
* ``per_stage``: defaults that differ by stage; the field's own default is then
  None, "the stage's", filled in by :meth:`TrainOptions.for_stage`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .choices import CONFIG_NAMES, PIXEL_LOSSES, SCALES, TRAIN_PRECISIONS

STAGES = ("autoencoder", "consistency", "decoder")
# Fine-tuning (lcmsr.train.finetune) continues a finished model file on the user's imagery: it takes the
# options that describe data, budget and checkpoints, not those that build a model (config, scale, stage1).
FINETUNE = "finetune"
ALL_STAGES = STAGES + (FINETUNE,)
FINETUNE_MINUTES = 10.0   # the budget when neither minutes nor iterations is given

# The learning rate when none is given: the paper's at its batch, scaled linearly with the total batch
# (LDM's rule); stage 3 (not in the paper) decays its own from DECODER_LR on a cosine.
PAPER_LR = {"autoencoder": (3.6e-5, 8), "consistency": (1.6e-4, 16)}   # stage: (lr, at this total batch)
DECODER_LR = 1e-4
FINETUNE_LR = {"decoder": 1e-4, "generator": 5e-5}


def _option(default=None, help="", *, factory=None, choices=None, minimum=None, stages=ALL_STAGES, required=(),
            per_stage=None):
    meta = {"help": help, "choices": choices, "minimum": minimum, "stages": stages, "required": required,
            "per_stage": per_stage or {}}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    sources: list = _option(factory=list, help="training rasters or images (anything GDAL reads), or (C, H, W) "
                                               "arrays / .npy files")
    val_sources: list = _option(factory=list, help="validation rasters: PSNR against bicubic is logged every "
                                                   "val_every steps")
    scale: int | None = _option(None, "SR factor (stages 2 and 3: the one they start from)", choices=SCALES,
                                stages=STAGES, per_stage={"autoencoder": 4})
    bands: list[int] | None = _option(None, "1-based bands to train on, e.g. 1,2,3 (default: all but alpha)")
    patch: int | None = _option(None, "HR patch side in pixels", minimum=16,
                                per_stage={"autoencoder": 256, "consistency": 256, "decoder": 256, FINETUNE: 128})
    iterations: int | None = _option(None, "optimisation steps", minimum=1,
                                     per_stage={"autoencoder": 1000, "consistency": 1000, "decoder": 1000})
    batch: int | None = _option(None, "patches per step (and per process under torchrun)", minimum=1,
                                per_stage={"autoencoder": 8, "consistency": 16, "decoder": 8, FINETUNE: 4})
    lr: float | None = _option(None, "learning rate (default: the paper's at its batch, scaled with the total "
                                     "batch; stage 3: 1e-4 decayed on a cosine)", minimum=0.0)
    seed: int = _option(0, "random seed", minimum=0)
    checkpoint_dir: str | None = _option(None, "checkpoint folder (default: checkpoints/<stage>)")
    checkpoint_every: int | None = _option(None, "steps between checkpoints", minimum=1,
                                           per_stage={"autoencoder": 500, "consistency": 500, "decoder": 500,
                                                      FINETUNE: 50})
    keep_checkpoints: int = _option(1, "checkpoints kept in the folder", minimum=1)
    val_every: int | None = _option(None, "steps between validations", minimum=1,
                                    per_stage={"autoencoder": 500, "consistency": 500, "decoder": 500, FINETUNE: 100})
    val_crop: int = _option(256, "side of the validation crops in HR pixels", minimum=16)
    val_max_crops: int = _option(4, "validation crops per raster", minimum=1)
    resume: bool | str = _option(False, "continue from a checkpoint: True for the newest in checkpoint_dir "
                                        "(fresh if there is none), or its path")
    device: str = _option("auto", "auto | cpu | cuda | cuda:N (under torchrun: the local GPU)")
    precision: str = _option("auto", "auto = bf16 autocast on CUDA and on CPUs with native bf16, else fp32",
                             choices=TRAIN_PRECISIONS)
    config: str | None = _option(None, "model size (stages 2 and 3: the one they start from)", choices=CONFIG_NAMES,
                                 stages=STAGES, per_stage={"autoencoder": "small"})
    overrides: dict = _option(factory=dict, help="config changes, e.g. {'consistency': {'loss': 'pseudo_huber'}}",
                              stages=STAGES)
    out: str | None = _option(None, "the product: stage 1 also writes its final checkpoint here; stages 2 and "
                                    "3 and fine-tuning write the model file (.safetensors)",
                            required=("consistency", "decoder", FINETUNE))
    log_every: int = _option(50, "steps between loss log entries", minimum=1)
    # stage 2: the stage-1 checkpoint (its normalisation, band names and config come with it)
    stage1: str | None = _option(None, "stage-1 checkpoint (directory, .json or .safetensors)",
                                 stages=("consistency",), required=("consistency",))
    # stage 3: the model file whose decoder is tuned to its one-step latents
    # stage 3 and fine-tuning: the model file to start from (fine-tuning: also a bundled or registered
    # model's name, lcmsr.catalog)
    base_model: str | None = _option(None, "the model file to start from (.safetensors)",
                                     stages=("decoder", FINETUNE), required=("decoder", FINETUNE))
    # stages 1 and 3 and fine-tuning: the reconstruction loss
    lpips: bool = _option(True, "add the perceptual (LPIPS) term", stages=("autoencoder", "decoder", FINETUNE))
    lpips_weight: float | None = _option(None, "weight of LPIPS next to the pixel loss (lower favours PSNR)",
                                         minimum=0.0, stages=("autoencoder", "decoder", FINETUNE),
                                         per_stage={"autoencoder": 1.0, "decoder": 0.1, FINETUNE: 0.05})
    pixel_loss: str | None = _option(None, "per-pixel loss: l1 (the paper's) or l2 (favours PSNR)",
                                     choices=PIXEL_LOSSES, stages=("autoencoder", "decoder", FINETUNE),
                                     per_stage={"autoencoder": "l1", "decoder": "l2", FINETUNE: "l2"})
    # stage 1: the PatchGAN hinge discriminator
    gan_start: int | None = _option(None, "step at which the PatchGAN discriminator switches on (default: never)",
                                    minimum=0, stages=("autoencoder",))
    disc_weight: float = _option(0.5, "factor on the adaptive weight of the GAN term", minimum=0.0,
                                 stages=("autoencoder",))

    # fine-tuning only
    minutes: float | None = _option(None, f"time budget in minutes instead of iterations: the steps are planned "
                                          f"from a timed trial of each phase (default {FINETUNE_MINUTES:g} when "
                                          f"iterations is not given either)", minimum=0.1, stages=(FINETUNE,))
    lr_sources: list = _option(factory=list, help="true LR rasters co-registered with the HR sources, one per "
                                                  "source in the same order (default: LR made from the HR by "
                                                  "the project's degradation)", stages=(FINETUNE,))
    decoder_share: float = _option(0.25, "share of the budget spent on the decoder (the autoencoder stage) "
                                         "before CondNet and the denoiser (the consistency stage)",
                                   minimum=0.0, stages=(FINETUNE,))
    # the plan: decoder phase steps, written by lcmsr.train.finetune and kept by a resume (no face sets it)
    decoder_steps: int | None = _option(None, "steps of the decoder phase (planned)", minimum=0, stages=())

    def for_stage(self, stage: str) -> "TrainOptions":
        """These options with the stage's defaults in place of None, checked."""
        fill = {f.name: f.metadata["per_stage"][stage] for f in dataclasses.fields(self)
                if getattr(self, f.name) is None and stage in f.metadata["per_stage"]}
        opts = dataclasses.replace(self, **fill)
        opts.check()
        return opts

    def check(self) -> None:
        """A one-line ValueError for the first value outside its field's choices or range."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, bool):
                continue
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise ValueError(f"{f.name} must be at least {meta['minimum']}, got {value}")
        if self.decoder_share > 1.0:
            raise ValueError(f"decoder_share must be at most 1, got {self.decoder_share}")

    def describe(self) -> dict:
        """JSON-able record of the options (arrays become short descriptions)."""
        from .train.data import describe_source

        # Not dataclasses.asdict: it would deep-copy every training array at each checkpoint.
        lists = ("sources", "val_sources", "lr_sources")
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in lists}
        d = json.loads(json.dumps(d))
        for name in lists:
            d[name] = [describe_source(s, i) for i, s in enumerate(getattr(self, name))]
        return d


def option(name: str) -> dataclasses.Field:
    """The field ``name`` of :class:`TrainOptions` (its metadata says help, choices, minimum, stages)."""
    return {f.name: f for f in dataclasses.fields(TrainOptions)}[name]


def option_default(name: str, stage: str):
    """The default of option ``name`` for ``stage`` (what the CLI and the plugin show)."""
    f = option(name)
    if stage in f.metadata["per_stage"]:
        return f.metadata["per_stage"][stage]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def stage_options(stage: str) -> list[dataclasses.Field]:
    """The fields ``stage`` takes, in declaration order."""
    return [f for f in dataclasses.fields(TrainOptions) if stage in f.metadata["stages"]]
