"""Samplers: one file each, listed once in :data:`lcmsr.choices.SAMPLERS` (torch-free, so the CLI and
the plugin list them without torch); :func:`make_sampler` imports a sampler's class when one is made.
The protocol every sampler implements is :class:`.base.Sampler`."""
from __future__ import annotations

import importlib

from ...choices import SAMPLERS, canonical_sampler
from ..schedule import NoiseSchedule
from .base import Sampler


def make_sampler(name: str, schedule: NoiseSchedule, steps: int = 1) -> Sampler:
    """The sampler registered as ``name`` (or an alias), for ``steps`` steps; unknown names are an error."""
    module, cls, _label = SAMPLERS[canonical_sampler(name)]
    return getattr(importlib.import_module(module), cls)(schedule, steps)


__all__ = ["Sampler", "make_sampler"]
