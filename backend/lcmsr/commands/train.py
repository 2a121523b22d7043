"""``lcmsr train-autoencoder`` (stage 1), ``lcmsr train-consistency`` (stage 2) and
``lcmsr train-decoder`` (optional stage 3: the decoder aligned with the one-step sampler).

Both run alone or under ``torchrun --nproc_per_node=N -m lcmsr train-...`` (DDP).
"""
from __future__ import annotations

import argparse
import json

from ..choices import SCALES, TRAIN_PRECISIONS
from ._args import bands as _bands


def _common(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("sources", nargs="+", help="training rasters or images (anything GDAL reads), or (C, H, W) "
                   ".npy arrays (no GDAL needed: scripts/pack_training_data.py)")
    p.add_argument("--val", nargs="+", default=[], metavar="RASTER",
                   help="validation rasters: PSNR vs bicubic is logged every --val-every steps")
    p.add_argument("--config", default="small", help="model size: tiny | small | paper (default small)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config value, e.g. consistency.loss=pseudo_huber (repeatable)")
    p.add_argument("--bands", type=_bands, default=None, help="1-based bands to train on, e.g. 1,2,3 "
                   "(default: all but alpha)")
    p.add_argument("--scale", type=int, default=None, choices=SCALES,
                   help="SR factor (stage 1 default 4; stage 2 takes the stage-1 value)")
    p.add_argument("--patch", type=int, default=256, help="HR patch side in pixels (default 256)")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="patches per step and process")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the paper's for this stage)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: the local GPU)")
    p.add_argument("--precision", default="auto", choices=TRAIN_PRECISIONS,
                   help="auto = bf16 autocast on CUDA, fp32 on the CPU")
    p.add_argument("--checkpoint-dir", default=None, help=f"default checkpoints/{stage}")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", type=int, default=1)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir (start fresh if there is none)")
    p.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint (.json, .safetensors or a checkpoint directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p1 = subparsers.add_parser("train-autoencoder", help="stage 1: the residual autoencoder E/D",
                               description="Train the stage-1 residual autoencoder (encoder E(HR, LR↑), "
                                           "SR decoder D(LR, z)).")
    _common(p1, "autoencoder")
    p1.add_argument("--out", default=None, help="also write the finished autoencoder here (X.safetensors + X.json)")
    p1.add_argument("--no-lpips", action="store_true", help="L1 only, no perceptual loss")
    p1.add_argument("--lpips-weight", type=float, default=1.0,
                    help="weight of LPIPS against L1 (paper: 1.0; lower favours PSNR over perceptual sharpness)")
    _pixel_loss(p1)
    p1.add_argument("--gan-start", type=int, default=None, metavar="STEP",
                    help="switch the PatchGAN discriminator on at this step (default: off)")
    p1.set_defaults(func=run_autoencoder)

    p2 = subparsers.add_parser("train-consistency", help="stage 2: CondNet + latent consistency denoiser",
                               description="Train CondNet and the consistency denoiser on a frozen stage-1 "
                                           "autoencoder and write the inference model file.")
    _common(p2, "consistency")
    p2.add_argument("--stage1", required=True, help="stage-1 checkpoint (directory, .json or .safetensors)")
    p2.add_argument("--out", required=True, help="the model file to write (.safetensors)")
    p2.set_defaults(func=run_consistency)

    p3 = subparsers.add_parser("train-decoder", help="stage 3 (optional): align the decoder with one-step sampling",
                               description="Fine-tune the decoder of a finished model file on the latents its "
                                           "one-step sampler produces (CondNet and denoiser frozen) and write "
                                           "a new model file.  Not in the paper: it closes the gap between the "
                                           "true latent stage 1 decodes and the sampled one inference decodes.")
    _common(p3, "decoder")
    p3.add_argument("--model", dest="base_model", required=True, help="the model file to start from (.safetensors)")
    p3.add_argument("--out", required=True, help="the model file to write (.safetensors)")
    p3.add_argument("--no-lpips", action="store_true", help="pixel loss only, no perceptual loss")
    p3.add_argument("--lpips-weight", type=float, default=0.1, help="weight of LPIPS next to the pixel loss "
                    "(default 0.1)")
    _pixel_loss(p3, default="l2")
    p3.set_defaults(func=run_decoder)


def _pixel_loss(p: argparse.ArgumentParser, default: str = "l1") -> None:
    p.add_argument("--pixel-loss", choices=("l1", "l2"), default=default,
                   help=f"per-pixel loss: l1 (the paper's) or l2 (favours PSNR); default {default}")


def options_from_args(args):
    from ..train.loop import TrainOptions, parse_override

    overrides: dict = {}
    for text in args.overrides:
        change = parse_override(text)
        overrides = _merge_free(overrides, change)
    return TrainOptions(
        sources=list(args.sources), val_sources=list(args.val), scale=args.scale, bands=args.bands,
        patch=args.patch, iterations=args.iterations, batch=args.batch, lr=args.lr, seed=args.seed,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, val_every=args.val_every, log_every=args.log_every,
        resume=args.resume_from or args.resume, device=args.device, precision=args.precision, config=args.config,
        overrides=overrides, out=args.out, stage1=getattr(args, "stage1", None),
        lpips=not getattr(args, "no_lpips", False), lpips_weight=getattr(args, "lpips_weight", 1.0),
        gan_start=getattr(args, "gan_start", None), pixel_loss=getattr(args, "pixel_loss", "l1"),
        base_model=getattr(args, "base_model", None))


def _merge_free(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_free(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _run(args, train) -> int:
    import os

    from ..progress import Progress, TqdmProgress

    opts = options_from_args(args)
    main = int(os.environ.get("RANK", "0")) == 0
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
