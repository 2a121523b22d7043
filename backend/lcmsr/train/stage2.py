"""Stage 2: CondNet + the latent consistency denoiser on a frozen stage-1 autoencoder.

Per step (METHOD.md): z = latent_scale * E(HR, LR↑) from the frozen encoder (its mean:
the KL weight of 1e-6 leaves a posterior far narrower than the latent's spread);
c = CondNet(LR↑); loss = CT(f_θ(x_t2, t2, c), stopgrad f_EMA(x_t1, t1, c)) +
kd_weight * MSE(c, z).  AdamW; the EMA of the denoiser is both the CT target and
the weights written to the model file.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from ..diffusion.consistency import EMA, ct_loss, kd_loss
from ..model import ModelInfo, build_model
from ..normalization import Normalization
from ..ops import upsample_bicubic
from ..paths import check_training
from ..progress import Progress
from ..train_options import PAPER_LR, TrainOptions
from . import checkpoint as ckpt
from .loop import STREAM_NOISE, Stage, TrainResult, run_training



class ConsistencyStage(Stage):
    name = "consistency"

    def __init__(self, stage1: ckpt.Checkpoint):
        """``stage1``: the finished stage-1 checkpoint (:func:`load_stage1`): frozen E and D, the latent
        scale, and the normalisation and config this stage continues."""
        self.stage1 = stage1
        self.base_normalization = Normalization.from_dict(stage1.state["run"]["normalization"])
        self.base_config = stage1.state["run"]["config"]

    def setup(self, config, normalization, sset):
        opts, ctx = self.opts, self.ctx
        s1 = self.stage1
        if sset.data_type != s1.state["run"]["data_type"]:
            raise ValueError(f"the training data is {sset.data_type} but the stage-1 autoencoder "
                             f"{s1.path} was trained on {s1.state['run']['data_type']}")
        self.config, self.normalization, self.sset = config, normalization, sset
        self.model = build_model(config).to(self.device)
        where = str(s1.path)
        ckpt.load_module("encoder", self.model.encoder, s1.tensors, where)
        ckpt.load_module("decoder", self.model.decoder, s1.tensors, where)
        with torch.no_grad():
            self.model.latent_scale.copy_(s1.tensors["latent_scale"])
        for frozen in (self.model.encoder, self.model.decoder):
            frozen.eval().requires_grad_(False)
        self.condnet_ddp = ctx.wrap(self.model.condnet)
        self.denoiser_ddp = ctx.wrap(self.model.denoiser)
        self.ema = EMA(self.model.denoiser, decay=config.consistency.ema_decay)
        paper_lr, paper_batch = PAPER_LR[self.name]
        lr = opts.lr if opts.lr is not None else paper_lr * opts.batch * ctx.world_size / paper_batch
        self.learning_rate = lr
        params = list(self.model.condnet.parameters()) + list(self.model.denoiser.parameters())
        self.opt = torch.optim.AdamW(params, lr=lr)
        self.noise_gen = self.generator("noise", STREAM_NOISE)

    def train_step(self, hr, lr, step):
        opts, cfg = self.opts, self.config
        self.model.condnet.train()
        self.model.denoiser.train()
        lr_up = upsample_bicubic(lr, opts.scale)
        with self.autocast():
            with torch.no_grad():
                z = self.model.encoder(hr, lr_up).mean.float() * self.model.latent_scale
            cond = self.condnet_ddp(lr_up)
            kd = kd_loss(cond, z)
            ct, stats = ct_loss(self.denoiser_ddp, self.ema.module, z, cond, opts.scale, tuple(hr.shape[-2:]),
                                self.model.schedule, cfg.consistency, step=step, total_steps=opts.iterations,
                                generator=self.noise_gen)
            loss = ct + cfg.consistency.kd_weight * kd
        value = self.guard(loss, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.update(self.model.denoiser)
        logs = {"ct": float(ct.detach()), "kd": float(kd.detach()), "gap": float(stats["gap"])}
        if "x0" in stats:
            logs["x0"] = stats["x0"]
        return value, logs

    @torch.no_grad()
    def sr(self, lr, hr, generator):
        """One-step SR with the EMA denoiser, as the model file will run it."""
        online = self.model.denoiser
        self.model.eval()
        self.model.denoiser = self.ema.module
        try:
            return self.model.sr(lr, steps=1, generator=generator)
        finally:
            self.model.denoiser = online

    def checkpoint(self):
        t = ckpt.module_tensors("condnet", self.model.condnet)
        t.update(ckpt.module_tensors("denoiser", self.model.denoiser))
        t.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_t, opt_meta = ckpt.flatten_optimizer("opt", self.opt)
        t.update(opt_t)
        return t, {"optimizer": opt_meta, "learning_rate": self.learning_rate}

    def restore(self, tensors, state, where):
        ckpt.load_module("condnet", self.model.condnet, tensors, where)
        ckpt.load_module("denoiser", self.model.denoiser, tensors, where)
        try:
            self.ema.load_state_dict({k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.")})
        except (RuntimeError, ValueError) as exc:
            raise ckpt.CheckpointError(f"checkpoint {where}: its EMA weights do not fit this model ({exc})") from None
        ckpt.restore_optimizer("opt", self.opt, tensors, state["optimizer"])

    def finish(self, run):
        if not self.ctx.is_main:
            return
        opts = self.opts
        s1 = self.stage1
        info = ModelInfo(scale=self.config.scale, bands=self.config.bands, band_names=list(self.sset.band_names),
                         normalization=self.normalization, config=self.config, data_type=self.sset.data_type,
                         training={
                             "steps": run.step, "stage1_steps": s1.step, "stage1": str(s1.path),
                             "data": [str(x) for x in opts.describe()["sources"]],
                             "val_data": [str(x) for x in opts.describe()["val_sources"]],
                             "bands": self.sset.bands, "patch": opts.patch, "batch": opts.batch,
                             "world_size": self.ctx.world_size, "lr": self.learning_rate, "seed": opts.seed,
                             "val_psnr": run.val_psnr, "bicubic_psnr": run.bicubic_psnr,
                             "stage1_val_psnr": s1.state.get("val_psnr"),
                             "seconds": run.seconds + s1.state.get("seconds", 0.0),
                             "latent_scale": float(self.model.latent_scale),
                             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        final = build_model(self.config, with_encoder=False, info=info)
        state = {k: v for k, v in self.model.state_dict().items() if not k.startswith(("encoder.", "denoiser."))}
        state.update({f"denoiser.{k}": v for k, v in self.ema.module.state_dict().items()})
        final.load_state_dict(state)
        from ..weights import save_model

        run.model_path = str(save_model(opts.out, final, info))
        self.progress.info(f"consistency: model written to {run.model_path}")


def load_stage1(path: str) -> ckpt.Checkpoint:
    s1 = ckpt.load_checkpoint(path)
    if s1.state.get("stage") != "autoencoder":
        raise ckpt.CheckpointError(f"{s1.path} is a '{s1.state.get('stage')}' checkpoint, not a stage-1 "
                                   f"autoencoder one")
    if not s1.state.get("stage_state", {}).get("latent_scale_measured"):
        raise ckpt.CheckpointError(f"{s1.path} is from step {s1.step} of an unfinished stage-1 run (its latent "
                                   f"scale is not measured yet): finish stage 1 and pass its final checkpoint")
    return s1


def train_consistency(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Stage 2 from ``opts.stage1``; writes the inference model file ``opts.out``."""
    if not opts.stage1:
        raise ValueError("stage 2 needs the stage-1 checkpoint (stage1 / --stage1)")
    if not opts.out:
        raise ValueError("stage 2 needs the path of the model file to write (out / --out)")
    check_training(opts, "consistency")   # an output may never be an input (lcmsr.paths)
    s1 = load_stage1(opts.stage1)
    run1, o1 = s1.state["run"], s1.state["options"]
    if opts.scale is not None and opts.scale != o1["scale"]:
        raise ValueError(f"--scale {opts.scale} differs from the stage-1 autoencoder's scale {o1['scale']} ({s1.path})")
    if opts.bands is not None and list(opts.bands) != list(run1["bands"]):
        raise ValueError(f"bands {list(opts.bands)} differ from the stage-1 bands {run1['bands']} ({s1.path})")
    opts = dataclasses.replace(opts, scale=o1["scale"], bands=list(run1["bands"]), config=o1["config"])
    return run_training(ConsistencyStage(s1), opts, progress)
