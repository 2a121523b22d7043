"""Choices users make, defined once and torch-free: the CLI, the plugin and the backend read them here."""
from __future__ import annotations

# The samplers, one line each: name -> (module, class, label).  This file stays torch-free (the CLI and
# the plugin list names and labels from it); lcmsr.diffusion.make_sampler imports the class when one is
# made.  The order is the plugin's enum order.  A new sampler is a module implementing
# lcmsr.diffusion.samplers.base.Sampler plus one line here (docs/DESIGN.md, "Adding a sampler").
SAMPLERS = {
    "consistency": ("lcmsr.diffusion.samplers.consistency", "ConsistencySampler",
                    "Consistency (the method: one step, draws plausible detail)"),
    "faithful": ("lcmsr.diffusion.samplers.faithful", "FaithfulSampler",
                 "Faithful (regression latent, no noise: never invents detail)"),
    "ddim": ("lcmsr.diffusion.samplers.ddim", "DDIMSampler", "DDIM (multi-step diffusion baseline)"),
    "ddpm": ("lcmsr.diffusion.samplers.ddpm", "DDPMSampler", "DDPM (multi-step diffusion baseline, slow)"),
}
SAMPLER_NAMES = tuple(SAMPLERS)
SAMPLER_ALIASES = {"condnet": "faithful"}   # the name before it was offered to users
SAMPLER_LABELS = {name: label for name, (_module, _cls, label) in SAMPLERS.items()}


def canonical_sampler(name: str) -> str:
    """The sampler's registered name (aliases resolved); unknown names are an error."""
    canonical = SAMPLER_ALIASES.get(name, name)
    if canonical not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}': use one of {', '.join(SAMPLERS)}")
    return canonical

SCALES = (2, 3, 4, 8)                          # SR factors a model can have
PRECISIONS = ("fp32", "bf16")                  # inference: bf16 autocast on CUDA (on the CPU with cpu_bf16)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")    # training: auto = bf16 on CUDA and on CPUs with native bf16
OUTPUT_TYPES = ("input", "float32")            # the SR raster's data type: the input's, or Float32
