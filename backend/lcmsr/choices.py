"""Choices users make, defined once and torch-free: the CLI, the plugin and the backend read them here."""
from __future__ import annotations

PIXEL_LOSSES = ("l1", "l2")                    # training stages 1 and 3: the paper's L1, or L2 (favours PSNR)
PIXEL_LOSS_LABELS = {"l1": "L1 (the paper's)", "l2": "L2 (favours PSNR; the shipped model's recipe)"}

# "faithful": the CondNet regression latent, no noise -- the choice that never invents detail.
SAMPLER_NAMES = ("consistency", "faithful", "ddim", "ddpm")
SAMPLER_ALIASES = {"condnet": "faithful"}   # the name before it was offered to users
SAMPLER_LABELS = {
    "consistency": "Consistency (the method: one step, draws plausible detail)",
    "faithful": "Faithful (regression latent, no noise: never invents detail)",
    "ddim": "DDIM (multi-step diffusion baseline)",
    "ddpm": "DDPM (multi-step diffusion baseline, slow)",
}


def canonical_sampler(name: str) -> str:
    """The sampler's name in SAMPLER_NAMES (aliases resolved); unknown names are an error."""
    name = SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler '{name}': use one of {', '.join(SAMPLER_NAMES)}")
    return name

SCALES = (2, 3, 4, 8)                          # SR factors a model can have
PRECISIONS = ("fp32", "bf16")                  # inference: bf16 autocast on CUDA (on the CPU with cpu_bf16)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")    # training: auto = bf16 on CUDA and on CPUs with native bf16
OUTPUT_TYPES = ("input", "float32")            # the SR raster's data type: the input's, or Float32
