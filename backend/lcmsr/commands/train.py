"""``lcmsr train-autoencoder`` (stage 1), ``lcmsr train-consistency`` (stage 2) and
``lcmsr train-decoder`` (optional stage 3: the decoder aligned with the one-step sampler).

They run alone or under ``torchrun --nproc_per_node=N -m lcmsr train-...`` (DDP).
Their options are generated from :class:`lcmsr.train_options.TrainOptions`: defaults, choices and
help are written there once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from ..train_options import TrainOptions, option, option_default, stage_options
from ._args import bands as _bands

# Fields the CLI spells its own way: positional sources, --val, --set, --resume/--resume-from, --no-lpips.
_SPECIAL = ("sources", "val_sources", "overrides", "resume", "lpips")
_FLAGS = {"base_model": "--model"}
_TYPES = {"bands": _bands}


def _add_options(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("sources", nargs="+", help=option("sources").metadata["help"] +
                   " (no GDAL needed for .npy: scripts/pack_training_data.py)")
    p.add_argument("--val", dest="val_sources", nargs="+", default=[], metavar="RASTER",
                   help=option("val_sources").metadata["help"].replace("val_every", "--val-every"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config value, e.g. consistency.loss=pseudo_huber (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir (start fresh if there is none)")
    p.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint (.json, .safetensors or a checkpoint directory)")
    hints = typing.get_type_hints(TrainOptions)
    for f in stage_options(stage):
        if f.name == "lpips":
            p.add_argument("--no-lpips", dest="lpips", action="store_false",
                           help="no perceptual (LPIPS) term: the pixel loss only")
        if f.name in _SPECIAL:
            continue
        meta, default = f.metadata, option_default(f.name, stage)
        required = stage in meta["required"]
        shown = "" if default is None or required else f" (default {default})"
        p.add_argument(_FLAGS.get(f.name, "--" + f.name.replace("_", "-")), dest=f.name, default=default,
                       type=_TYPES.get(f.name, _scalar(hints[f.name])), choices=meta["choices"], required=required,
                       help=meta["help"] + shown)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _scalar(hint):
    """int for ``int | None``, etc.; None (argparse's str) for strings."""
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k in (int, float)]
    return kinds[0] if kinds else None


def register(subparsers) -> None:
    p1 = subparsers.add_parser("train-autoencoder", help="stage 1: the residual autoencoder E/D",
                               description="Train the stage-1 residual autoencoder (encoder E(HR, LR↑), "
                                           "SR decoder D(LR, z)).")
    _add_options(p1, "autoencoder")
    p1.set_defaults(func=run_autoencoder)

    p2 = subparsers.add_parser("train-consistency", help="stage 2: CondNet + latent consistency denoiser",
                               description="Train CondNet and the consistency denoiser on a frozen stage-1 "
                                           "autoencoder and write the inference model file.")
    _add_options(p2, "consistency")
    p2.set_defaults(func=run_consistency)

    p3 = subparsers.add_parser("train-decoder", help="stage 3 (optional): align the decoder with one-step sampling",
                               description="Fine-tune the decoder of a finished model file on the latents its "
                                           "one-step sampler produces (CondNet and denoiser frozen) and write "
                                           "a new model file.  Not in the paper: it closes the gap between the "
                                           "true latent stage 1 decodes and the sampled one inference decodes.")
    _add_options(p3, "decoder")
    p3.set_defaults(func=run_decoder)
    for p in (p1, p2, p3):
        # The training loop handles its own signals (a checkpoint on SIGTERM); lcmsr.cli leaves them alone.
        p.set_defaults(paths=io_paths, stop_on_signals=False)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli)."""
    from ..paths import training_paths

    outputs, inputs, folder = training_paths(options_from_args(args), args.command.split("-", 1)[1])
    return outputs + [("the checkpoint folder", folder)], inputs


def options_from_args(args) -> TrainOptions:
    from ..train.loop import parse_override

    overrides: dict = {}
    for text in args.overrides:
        overrides = _merge_free(overrides, parse_override(text))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions) if hasattr(args, f.name)}
    given.update(overrides=overrides, resume=args.resume_from or args.resume)
    return TrainOptions(**given)


def _merge_free(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_free(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _run(args, train) -> int:
    from ..progress import Progress, TqdmProgress
    from ..runtime import world_from_env

    opts = options_from_args(args)
    world = world_from_env()
    main = world is None or world.is_main
    progress = TqdmProgress(desc=args.command, disable=args.quiet or not main) if main else Progress()
    try:
        result = train(opts, progress)
    finally:
        if isinstance(progress, TqdmProgress):
            progress.close()
    if main:
        summary = {"stage": result.stage, "steps": result.steps, "loss": result.loss, "val_psnr": result.val_psnr,
                   "bicubic_psnr": result.bicubic_psnr, "checkpoint": result.checkpoint,
                   "model": result.model_path, "latent_scale": result.latent_scale,
                   "seconds": round(result.seconds, 1)}
        print(json.dumps(summary))
    return 0


def run_autoencoder(args) -> int:
    from ..train.stage1 import train_autoencoder

    return _run(args, train_autoencoder)


def run_consistency(args) -> int:
    from ..train.stage2 import train_consistency

    return _run(args, train_consistency)


def run_decoder(args) -> int:
    from ..train.stage3 import train_decoder

    return _run(args, train_decoder)
