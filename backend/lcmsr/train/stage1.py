"""Stage 1: the residual autoencoder — encoder E(HR, LR↑), SR decoder D(LR, z).

Loss (LDM's autoencoder loss, METHOD.md): per-pixel L1 (or L2, ``pixel_loss``) + LPIPS, weighted by a learned
log-variance ``nll = rec / exp(logvar) + logvar``, summed over pixels and averaged over
the batch; KL to N(0, I) with weight ``config.consistency.kl_weight`` (1e-6);
optionally from ``gan_start`` a PatchGAN hinge term whose weight is
``disc_weight * ||∇_last nll|| / ||∇_last g||`` (the adaptive weight).  Adam β=(0.5, 0.9).
At the end ``latent_scale = 1/std(z)`` is measured on E(HR, LR↑) of a batch (the
authors measured it on E(HR, HR) by mistake, METHOD.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..model import build_model
from ..nn.discriminator import PatchDiscriminator, hinge_d_loss
from ..ops import upsample_bicubic
from ..paths import check_training
from ..progress import Progress
from ..train_options import PAPER_LR, TrainOptions
from . import checkpoint as ckpt
from .data import PatchSampler
from .ddp import rank_seed
from .loop import STREAM_NOISE, STREAM_SCALE, Stage, TrainResult, pixel_loss, run_training



class _Autoencoder(nn.Module):
    """E and D plus the learned log-variance, as one module so DDP averages all their gradients."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.logvar = nn.Parameter(torch.zeros(()))

    def forward(self, hr, lr, lr_up, generator):
        post = self.encoder(hr, lr_up)
        z = post.sample(generator)
        return self.decoder(lr, z), post.mean, post.logvar


def _kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) || N(0, I)), summed over the latent, averaged over the batch."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=(1, 2, 3)).mean()


class AutoencoderStage(Stage):
    name = "autoencoder"

    def setup(self, config, normalization, sset):
        opts, ctx = self.opts, self.ctx
        self.config, self.normalization, self.sset = config, normalization, sset
        self.model = build_model(config).to(self.device)
        self.net = _Autoencoder(self.model.encoder, self.model.decoder).to(self.device)
        self.net_ddp = ctx.wrap(self.net)
        self.lpips = self.load_lpips() if opts.lpips else None
        # LDM's linear scaling of the learning rate with the total batch.
        paper_lr, paper_batch = PAPER_LR[self.name]
        lr = opts.lr if opts.lr is not None else paper_lr * opts.batch * ctx.world_size / paper_batch
        self.learning_rate = lr
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.9))
        self.disc = self.disc_ddp = self.opt_disc = None
        if opts.gan_start is not None:
            self.disc = PatchDiscriminator(config.bands).to(self.device)
            self.disc_ddp = ctx.wrap(self.disc)
            self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9))
        self.posterior_gen = self.generator("posterior", STREAM_NOISE)
        self.latent_scale_measured = False
        self.export_final = opts.out

    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        last = self.model.decoder.tail.weight
        g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        w = torch.norm(g_nll) / (torch.norm(g_adv) + 1e-4)
        return torch.clamp(w, 0.0, 1e4).detach() * self.opts.disc_weight

    def train_step(self, hr, lr, step):
        opts = self.opts
        gan = self.disc is not None and step >= opts.gan_start
        lr_up = upsample_bicubic(lr, opts.scale)
        self.net.train()
        with self.autocast():
            rec, mean, logvar = self.net_ddp(hr, lr, lr_up, self.posterior_gen)
            rec_loss = pixel_loss(opts.pixel_loss, rec, hr)
            p_loss = None
            if self.lpips is not None:
                p_loss = self.lpips(hr, rec).float()
                rec_loss = rec_loss + opts.lpips_weight * p_loss.view(-1, 1, 1, 1)
            nll = (rec_loss / torch.exp(self.net.logvar) + self.net.logvar).sum() / hr.shape[0]
            kl = _kl(mean, logvar)
            loss = nll + self.config.consistency.kl_weight * kl
            logs = {"l1": float((hr.float() - rec.float()).detach().abs().mean()), "kl": float(kl.detach()),
                    "logvar": float(self.net.logvar.detach())}
            if p_loss is not None:
                logs["lpips"] = float(p_loss.detach().mean())
            if gan:
                self.disc.requires_grad_(False)  # the generator term must not train D
                g_loss = -self.disc(rec).float().mean()
                d_weight = self._adaptive_weight(nll, g_loss)
                loss = loss + d_weight * g_loss
                logs.update(g_loss=float(g_loss.detach()), d_weight=float(d_weight))
        value = self.guard(loss, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if gan:
            self.disc.requires_grad_(True)
            with self.autocast():
                # Real and decoded in one forward: DDP allows one forward per backward.
                logits = self.disc_ddp(torch.cat([hr, rec.detach()], dim=0)).float()
                d_loss = hinge_d_loss(logits[: hr.shape[0]], logits[hr.shape[0]:])
            self.guard(d_loss, step)
            self.opt_disc.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_disc.step()
            logs["d_loss"] = float(d_loss.detach())
        return value, logs

    @torch.no_grad()
    def sr(self, lr, hr, generator):
        """Reconstruction with the true latent, D(LR, E(HR, LR↑).mean): the ceiling stage 2 aims at."""
        self.net.eval()
        lr_up = upsample_bicubic(lr, self.opts.scale)
        return self.model.decoder(lr, self.model.encoder(hr, lr_up).mean)

    def checkpoint(self):
        t = ckpt.module_tensors("encoder", self.model.encoder)
        t.update(ckpt.module_tensors("decoder", self.model.decoder))
        t["latent_scale"] = self.model.latent_scale.detach().reshape(())
        t["logvar"] = self.net.logvar.detach()
        opt_t, opt_meta = ckpt.flatten_optimizer("opt", self.opt)
        t.update(opt_t)
        state = {"optimizer": opt_meta, "latent_scale_measured": self.latent_scale_measured,
                 "learning_rate": self.learning_rate, "lpips": self.lpips is not None}
        if self.disc is not None:
            t.update(ckpt.module_tensors("disc", self.disc))
            d_t, d_meta = ckpt.flatten_optimizer("opt_disc", self.opt_disc)
            t.update(d_t)
            state["optimizer_disc"] = d_meta
        return t, state

    def restore(self, tensors, state, where):
        ckpt.load_module("encoder", self.model.encoder, tensors, where)
        ckpt.load_module("decoder", self.model.decoder, tensors, where)
        with torch.no_grad():
            self.model.latent_scale.copy_(tensors["latent_scale"])
            self.net.logvar.copy_(tensors["logvar"])
        ckpt.restore_optimizer("opt", self.opt, tensors, state["optimizer"])
        self.latent_scale_measured = bool(state.get("latent_scale_measured", False))
        if self.disc is not None:
            if "optimizer_disc" not in state:
                raise ckpt.CheckpointError(f"checkpoint {where} has no discriminator but --gan-start is set")
            ckpt.load_module("disc", self.disc, tensors, where)
            ckpt.restore_optimizer("opt_disc", self.opt_disc, tensors, state["optimizer_disc"])

    @torch.no_grad()
    def finish(self, run):
        """latent_scale = 1/std(z) of E(HR, LR↑) on a fixed batch (same on every rank)."""
        opts = self.opts
        sampler = PatchSampler(self.sset, opts.scale, opts.patch, self.normalization,
                               seed=rank_seed(opts.seed, 0, STREAM_SCALE), multiple=self.config.hr_multiple)
        n = max(opts.batch, 8)
        total = total_sq = count = 0.0
        self.net.eval()
        for start in range(0, n, opts.batch):
            hr, lr = sampler.sample(min(opts.batch, n - start))
            hr, lr = hr.to(self.device), lr.to(self.device)
            z = self.model.encoder(hr, upsample_bicubic(lr, opts.scale)).mean.double()
            total += float(z.sum())
            total_sq += float(z.pow(2).sum())
            count += z.numel()
        var = total_sq / count - (total / count) ** 2
        std = max(var, 1e-12) ** 0.5
        self.model.latent_scale.fill_(1.0 / std)
        self.latent_scale_measured = True
        run.latent_scale = 1.0 / std
        if self.ctx.is_main:
            self.progress.info(f"autoencoder: latent std {std:.4g} -> latent_scale {1.0 / std:.4g}")


def train_autoencoder(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Stage 1.  The result's ``checkpoint`` (and ``opts.out`` if set) is what stage 2 starts from."""
    check_training(opts, "autoencoder")   # an output may never be an input (lcmsr.paths)
    return run_training(AutoencoderStage(), opts, progress)
