"""Consistency function, consistency-training (CT) and distillation (KD) losses, EMA.

f(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t, c) with the LCM boundary scalings
(s = timestep_scaling * t / T):  c_skip = sigma_data^2 / (s^2 + sigma_data^2),
c_out = s / sqrt(s^2 + sigma_data^2), so f(x, 0) = x exactly.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConsistencyConfig
from ..nn.blocks import gaussian_noise
from .schedule import NoiseSchedule


def boundary_scalings(t: torch.Tensor, num_timesteps: int, opts: ConsistencyConfig):
    s = opts.timestep_scaling * torch.as_tensor(t).double() / num_timesteps
    sd2 = opts.sigma_data ** 2
    c_skip = sd2 / (s ** 2 + sd2)
    c_out = s / torch.sqrt(s ** 2 + sd2)
    return c_skip, c_out


def consistency_function(denoiser: nn.Module, x_t: torch.Tensor, t, cond: torch.Tensor, scale, out_size,
                         opts: ConsistencyConfig, num_timesteps: int) -> torch.Tensor:
    """f(x_t, t) for a batch; ``t`` is a scalar or [B] tensor of integer timesteps."""
    t = torch.as_tensor(t, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    c_skip, c_out = boundary_scalings(t, num_timesteps, opts)
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    c_skip = c_skip.to(device=x_t.device, dtype=torch.float32).reshape(shape)
    c_out = c_out.to(device=x_t.device, dtype=torch.float32).reshape(shape)
    x0 = denoiser(x_t, t, cond, scale, out_size)
    return c_skip * x_t + c_out * x0


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=gdev).to(device)


def gap_at(step: int, total_steps: int | None, opts: ConsistencyConfig) -> int:
    """The timestep gap t2 - t1.  With the curriculum on, it halves in equal stages of training
    from ``gap`` down to ``gap_min`` (iCT's doubling of the discretisation, in DDPM timesteps)."""
    if not opts.gap_curriculum or not total_steps:
        return opts.gap
    stages = int(math.floor(math.log2(max(opts.gap / max(opts.gap_min, 1), 1.0)))) + 1
    stage = min(stages - 1, int(step) * stages // int(total_steps))
    return max(opts.gap_min, opts.gap // (2 ** stage))


def sample_timesteps(n: int, schedule: NoiseSchedule, opts: ConsistencyConfig, generator=None,
                     device="cpu") -> torch.Tensor:
    """t2 for a batch: uniform over [0, T) (paper) or lognormal noise levels (iCT)."""
    if opts.timestep_sampling == "uniform":
        return _randint(schedule.num_timesteps, n, generator, device)
    normal = gaussian_noise((n,), generator, device)
    sigma = torch.exp(opts.lognormal_mean + opts.lognormal_std * normal)
    return schedule.timestep_for_sigma(sigma).to(device)


def ct_loss(denoiser: nn.Module, target_denoiser: nn.Module | None, z0: torch.Tensor, cond: torch.Tensor,
            scale, out_size, schedule: NoiseSchedule, opts: ConsistencyConfig, *, step: int = 0,
            total_steps: int | None = None, generator: torch.Generator | None = None):
    """Consistency-training loss on clean (scaled) latents ``z0``; returns (loss, stats).

    The *same* noise gives x_t2 and x_t1 (t1 = max(t2 - gap, 0)); the target
    f_target(x_t1, t1) is computed without gradient by ``target_denoiser`` (the EMA)
    or, when ``opts.ema_target`` is False or no target is given, by the online
    network itself.  With ``opts.x0_weight`` > 0 the loss also regresses f_θ(x_t2, t2)
    on ``z0`` itself (reported as ``stats["x0"]``).
    """
    b = z0.shape[0]
    T = schedule.num_timesteps
    gap = gap_at(step, total_steps, opts)
    t2 = sample_timesteps(b, schedule, opts, generator, z0.device)
    t1 = (t2 - gap).clamp_min(0)
    noise = gaussian_noise(z0.shape, generator, z0.device, z0.dtype)
    x_t2 = schedule.q_sample(z0, t2, noise)
    x_t1 = schedule.q_sample(z0, t1, noise)
    pred = consistency_function(denoiser, x_t2, t2, cond, scale, out_size, opts, T)
    target_net = target_denoiser if (opts.ema_target and target_denoiser is not None) else denoiser
    with torch.no_grad():
        target = consistency_function(target_net, x_t1, t1, cond.detach(), scale, out_size, opts, T).detach()
    diff = (pred.float() - target.float()).reshape(b, -1)
    if opts.loss == "pseudo_huber":
        c = opts.huber_c if opts.huber_c is not None else 0.00054 * math.sqrt(diff.shape[1])
        loss = (torch.sqrt(diff.pow(2).sum(dim=1) + c * c) - c).mean()
    else:
        loss = diff.pow(2).mean()
    stats = {"gap": gap, "t2_mean": float(t2.float().mean())}
    if opts.x0_weight > 0:
        x0 = (pred.float() - z0.detach().float()).pow(2).mean()
        loss = loss + opts.x0_weight * x0
        stats["x0"] = float(x0.detach())
    return loss, stats


def kd_loss(cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSE(CondNet(LR↑), z): the frozen stage-1 encoder teaches CondNet the (scaled) latent."""
    return F.mse_loss(cond.float(), z.detach().float())


class EMA:
    """Exponential moving average of a module with warm-up decay min(decay, (1+n)/(10+n)).

    ``module`` holds the averaged copy (the CT target and the weights that ship).
    ``state_dict()`` is flat tensors only (``shadow.<name>`` and ``num_updates``)
    so it can go straight into a .safetensors checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"shadow.{k}": v.detach().clone() for k, v in self.module.state_dict().items()}
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "num_updates" not in state:
            raise ValueError("EMA state has no 'num_updates' entry")
        shadow = {k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")}
        self.module.load_state_dict(shadow, strict=True)
        self.num_updates = int(state["num_updates"])

    def to(self, device) -> "EMA":
        self.module.to(device)
        return self
