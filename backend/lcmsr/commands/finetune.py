"""``lcmsr finetune --from MODEL --out NEW [--minutes M | --iterations N] HR...``: fine-tune a finished model
on the user's own imagery (:mod:`lcmsr.train.finetune`).

MODEL is a model file or the name of a bundled or registered model (``lcmsr info`` lists them).  The
options are generated from :class:`lcmsr.train_options.TrainOptions` (the fields the "finetune" stage
takes), as ``train-*``'s are: defaults, choices and help are written there once.
"""
from __future__ import annotations

import typing

from ..train_options import (FINETUNE, FINETUNE_LR, FINETUNE_MINUTES, TrainOptions, option, option_default,
                             stage_options)
from .train import _TYPES, _scalar   # the same argument types as train-*

# Fields spelled their own way: positional sources, --from, --val, --lr-rasters, the budget group, --resume.
_HELP = {"lr": f"learning rate at the start of each phase, decayed to 0 on a cosine within it (default "
              f"{FINETUNE_LR['decoder']:g} for the decoder, {FINETUNE_LR['generator']:g} for CondNet and the "
              f"denoiser)",
         "batch": "patches per step"}
_SPECIAL = ("sources", "val_sources", "lr_sources", "base_model", "minutes", "iterations", "resume", "lpips",
            "out")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model on your own imagery",
        description="Continue a bundled, registered or trained model on your own HR rasters and write a new "
                    "model file: the decoder first (a quarter of the budget by default), then CondNet and the "
                    "consistency denoiser, all from the model's weights.  LR is made from the HR by the "
                    "project's degradation, or read from co-registered LR rasters (--lr-rasters).  Resumable: "
                    "rerun the same command with --resume.")
    p.add_argument("sources", nargs="+", metavar="HR", help=option("sources").metadata["help"])
    p.add_argument("--from", dest="base_model", required=True, metavar="MODEL",
                   help="the model to start from: a .safetensors file, or a bundled or registered model's name "
                        "(e.g. lcmsr_x4_rgb_small)")
    p.add_argument("--out", required=True, metavar="NEW", help="the model file to write (.safetensors)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, metavar="M",
                        help=option("minutes").metadata["help"])
    budget.add_argument("--iterations", type=int, default=None, metavar="N",
                        help="optimisation steps instead of minutes (a quarter in the decoder phase by default)")
    p.add_argument("--lr-rasters", dest="lr_sources", nargs="+", default=[], metavar="LR",
                   help=option("lr_sources").metadata["help"])
    p.add_argument("--val", dest="val_sources", nargs="+", default=[], metavar="RASTER",
                   help=option("val_sources").metadata["help"].replace("val_every", "--val-every"))
    p.add_argument("--resume", action="store_true",
                   help="continue the plan and weights of the newest checkpoint in the checkpoint folder "
                        "(start fresh if there is none)")
    p.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint (.json, .safetensors or a checkpoint directory)")
    p.add_argument("--no-lpips", dest="lpips", action="store_false",
                   help="no perceptual (LPIPS) term on the one-step output: the pixel loss only")
    hints = typing.get_type_hints(TrainOptions)
    for f in stage_options(FINETUNE):
        if f.name in _SPECIAL:
            continue
        meta, default = f.metadata, option_default(f.name, FINETUNE)
        shown = "" if default is None or f.name in _HELP else f" (default {default})"
        if f.name == "checkpoint_dir":
            shown = " (default: NEW without .safetensors, plus _checkpoints)"
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                       type=_TYPES.get(f.name, _scalar(hints[f.name])), choices=meta["choices"],
                       help=_HELP.get(f.name, meta["help"]) + shown)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # The training loop handles its own signals (a checkpoint on SIGTERM); lcmsr.cli leaves them alone.
    p.set_defaults(func=run, paths=io_paths, stop_on_signals=False)


def options_from_args(args) -> TrainOptions:
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions) if hasattr(args, f.name)}
    given.update(resume=args.resume_from or args.resume)
    if args.minutes is None and args.iterations is None:
        given["minutes"] = FINETUNE_MINUTES
    return TrainOptions(**given)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli)."""
    from ..paths import training_paths

    outputs, inputs, folder = training_paths(options_from_args(args), FINETUNE)
    return outputs + [("the checkpoint folder", folder)], inputs


def run(args) -> int:
    import json

    from ..progress import TqdmProgress
    from ..train.finetune import finetune

    opts = options_from_args(args)
    progress = TqdmProgress(desc="finetune", disable=args.quiet)
    try:
        result = finetune(opts, progress)
    finally:
        progress.close()
    print(json.dumps({"stage": result.stage, "steps": result.steps, "loss": result.loss,
                      "val_psnr": result.val_psnr, "bicubic_psnr": result.bicubic_psnr,
                      "checkpoint": result.checkpoint, "model": result.model_path,
                      "seconds": round(result.seconds, 1)}))
    return 0

