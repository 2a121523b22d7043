"""Noise schedule, consistency machinery and samplers (the *how many steps*, apart from the networks)."""
from .consistency import EMA, boundary_scalings, consistency_function, ct_loss, kd_loss
from .samplers import Sampler, make_sampler
from .schedule import NoiseSchedule, make_betas

__all__ = ["EMA", "NoiseSchedule", "Sampler", "boundary_scalings", "consistency_function", "ct_loss", "kd_loss",
           "make_betas", "make_sampler"]
