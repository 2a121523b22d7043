"""Stage 3 (optional, not in the paper): align the decoder with the one-step sampler.

Stage 1 trains the decoder on the *true* latent E(HR, LR↑); at inference it receives
the one-step latent f(x_T, T-1, CondNet(LR↑)), which a briefly trained stage 2 only
approximates.  The mismatch costs PSNR (seen with the CPU-trained default model:
the stage-1 ceiling was near bicubic, the one-step output 2 dB below it).  This stage
freezes CondNet and the denoiser of a finished model file and fine-tunes the decoder
on exactly what inference feeds it:

    ẑ = f(x_T, T-1, CondNet(LR↑)), x_T ~ N(0, I)      (no gradient)
    loss = pixel(D(LR, ẑ / scale), HR) + lpips_weight · LPIPS(D(LR, ẑ / scale), HR)

with Adam and a cosine learning-rate decay over the run (a function of the step, so
resume stays exact).  The product is a model file like stage 2's, with the new
decoder and a record of this stage in its training metadata; the sampler, the
latent space and the multi-step baselines are unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..config import LATENT_FACTOR
from ..model import ModelInfo
from ..ops import upsample_bicubic
from ..paths import check_training
from ..progress import Progress
from ..train_options import DECODER_LR, TrainOptions
from . import checkpoint as ckpt
from .loop import STREAM_NOISE, Stage, TrainResult, pixel_loss, run_training



class DecoderAlignStage(Stage):
    name = "decoder"

    def __init__(self, base, base_path: str):
        """``base``: the loaded model file (an LCMSR) whose decoder is tuned; ``base_path`` names it."""
        self.base, self.base_path = base, str(base_path)
        self.base_normalization = base.info.normalization
        self.base_config = base.info.config.to_dict()

    def setup(self, config, normalization, sset):
        opts, ctx = self.opts, self.ctx
        info: ModelInfo = self.base.info
        if sset.data_type != info.data_type:
            raise ValueError(f"the training data is {sset.data_type} but the model {self.base_path} was trained "
                             f"on {info.data_type}")
        self.config, self.normalization, self.sset = config, normalization, sset
        self.model = self.base.to(self.device)
        for frozen in (self.model.condnet, self.model.denoiser):
            frozen.eval().requires_grad_(False)
        self.decoder_ddp = ctx.wrap(self.model.decoder)
        self.lpips = self.load_lpips() if opts.lpips and opts.lpips_weight > 0 else None
        self.learning_rate = opts.lr if opts.lr is not None else DECODER_LR
        self.opt = torch.optim.Adam(self.model.decoder.parameters(), lr=self.learning_rate)
        self.noise_gen = self.generator("noise", STREAM_NOISE)

    def _lr_at(self, step: int) -> float:
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(step, self.opts.iterations)
                                                          / self.opts.iterations))

    def train_step(self, hr, lr, step):
        opts, model = self.opts, self.model
        model.decoder.train()
        with self.autocast():
            with torch.no_grad():
                cond = model.condnet(upsample_bicubic(lr, opts.scale))
                shape = (hr.shape[0], model.config.latent_channels, hr.shape[-2] // LATENT_FACTOR,
                         hr.shape[-1] // LATENT_FACTOR)
                x_t = torch.randn(shape, generator=self.noise_gen, device=self.device, dtype=cond.dtype)
                z = model.consistency(x_t, model.schedule.num_timesteps - 1, cond, tuple(hr.shape[-2:]))
            out = self.decoder_ddp(lr, z / model.latent_scale.to(z.dtype))
            pix = pixel_loss(opts.pixel_loss, out, hr).mean()
            loss = pix
            logs = {opts.pixel_loss: float(pix.detach())}
            if self.lpips is not None:
                p = self.lpips(hr, out).float().mean()
                loss = loss + opts.lpips_weight * p
                logs["lpips"] = float(p.detach())
        value = self.guard(loss, step)
        for group in self.opt.param_groups:
            group["lr"] = self._lr_at(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return value, logs

    @torch.no_grad()
    def sr(self, lr, hr, generator):
        """One-step SR, as the model file will run it."""
        self.model.eval()
        return self.model.sr(lr, steps=1, generator=generator)

    def checkpoint(self):
        t = ckpt.module_tensors("decoder", self.model.decoder)
        opt_t, opt_meta = ckpt.flatten_optimizer("opt", self.opt)
        t.update(opt_t)
        return t, {"optimizer": opt_meta, "learning_rate": self.learning_rate}

    def restore(self, tensors, state, where):
        ckpt.load_module("decoder", self.model.decoder, tensors, where)
        ckpt.restore_optimizer("opt", self.opt, tensors, state["optimizer"])

    def finish(self, run):
        if not self.ctx.is_main:
            return
        from ..weights import save_model

        opts = self.opts
        info = self.model.info
        training = dict(info.training)
        training["decoder_alignment"] = {
            "steps": run.step, "base_model": self.base_path, "pixel_loss": opts.pixel_loss,
            "lpips_weight": opts.lpips_weight if self.lpips is not None else 0.0, "patch": opts.patch,
            "batch": opts.batch, "lr": self.learning_rate, "seed": opts.seed,
            "data": [str(x) for x in opts.describe()["sources"]], "val_psnr": run.val_psnr,
            "bicubic_psnr": run.bicubic_psnr, "seconds": run.seconds,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        training["seconds"] = float(training.get("seconds", 0.0)) + run.seconds
        new_info = dataclasses.replace(info, training=training)
        self.model.info = new_info
        run.model_path = str(save_model(opts.out, self.model, new_info))  # save_model copies to the CPU
        self.progress.info(f"decoder: model written to {run.model_path}")


def train_decoder(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Stage 3 on ``opts.base_model``; writes the aligned model file ``opts.out``."""
    from ..weights import load_model

    if not opts.base_model:
        raise ValueError("decoder alignment needs the model file to start from (base_model / --model)")
    if not opts.out:
        raise ValueError("decoder alignment needs the path of the model file to write (out / --out)")
    if opts.overrides:
        raise ValueError("decoder alignment keeps the model's config: config overrides (--set) do not apply")
    check_training(opts, "decoder")   # an output may never be an input (lcmsr.paths)
    base = load_model(opts.base_model)
    info = base.info
    if opts.scale is not None and opts.scale != info.scale:
        raise ValueError(f"--scale {opts.scale} differs from the model's scale {info.scale} ({opts.base_model})")
    if opts.bands is not None and len(opts.bands) != info.bands:
        raise ValueError(f"{len(opts.bands)} band(s) selected but the model {opts.base_model} has {info.bands}")
    opts = dataclasses.replace(opts, scale=info.scale, config=info.config.name)
    return run_training(DecoderAlignStage(base, opts.base_model), opts, progress)
