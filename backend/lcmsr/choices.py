"""Choices users make, defined once and torch-free: the CLI, the plugin and the backend read them here."""
from __future__ import annotations

from dataclasses import dataclass

PIXEL_LOSSES = ("l1", "l2")                    # training stages 1 and 3: the paper's L1, or L2 (favours PSNR)
PIXEL_LOSS_LABELS = {"l1": "L1 (the paper's)", "l2": "L2 (favours PSNR; the shipped model's recipe)"}

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
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")    # training: auto = bf16 on CUDA and on CPUs with native bf16

# Inference: the choices and defaults of SROptions, the `lcmsr sr` flags, the plugin's superresolve
# parameters and its settings.  Names in the plugin's enum order (its parameters take indices).
# "auto" is last so that the indices saved in Processing models and history (0 = fp32, 1 = bf16) keep
# their meaning; it is the default (lcmsr.runtime.resolve_precision decides, and the log says why).
PRECISION_LABELS = {
    "fp32": "fp32",
    "bf16": "bf16 (CUDA, or a CPU with native bf16; elsewhere fp32 with a warning)",
    "auto": "Auto (bf16 on a CPU with native bf16, about 2x faster; else fp32)",
}
PRECISIONS = tuple(PRECISION_LABELS)
OUTPUT_TYPE_LABELS = {"input": "Same as input", "float32": "Float32"}   # the SR raster's data type
OUTPUT_TYPES = tuple(OUTPUT_TYPE_LABELS)
# Devices a user picks from a list; "cuda:N" (a given GPU) is accepted wherever a device is typed.
DEVICE_LABELS = {"auto": "Auto (CUDA GPU if available, else CPU)", "cuda": "CUDA GPU", "cpu": "CPU"}
DEVICES = tuple(DEVICE_LABELS)
# tile 0 and batch 0: chosen on the CPU to fit memory_budget (GB the job may add to the process; lcmsr.memory),
# 256 and 8 on CUDA.
SR_DEFAULTS = {"tile": 0, "overlap": 32, "batch": 0, "memory_budget": 0.7, "device": "auto", "precision": "auto", "steps": 1,
               "sampler": "consistency", "seed": 0, "output_type": "input", "cog": False, "overviews": False}
# Where `lcmsr batch` and "Super-resolve many rasters" run their units (lcmsr.sr.executors), in the plugin's enum order.
EXECUTOR_LABELS = {"local": "Local (this machine)", "dask": "Dask cluster (at the address given, or a local one)"}
EXECUTORS = tuple(EXECUTOR_LABELS)
# Trust (issue 15): K one-step samples for the uncertainty raster (written only when asked), and the
# back-projection iterations that make degrade(SR) give back the input (0 = off; measured in the model cards).
SR_DEFAULTS.update({"samples": 4, "lr_consistency": 3})


@dataclass(frozen=True)
class Terms:
    """How an error message names the option the user should change: each face has its own words.
    ``names``: option -> its name (a CLI flag, a Processing parameter's label); ``setting``: how a value
    for it is written.  Options: bands, band_roles, ignore_domain, tile, batch, overlap, memory_budget, device (and cpu, a value)."""
    names: dict
    setting: str = "{name} {value}"

    def __getitem__(self, option: str) -> str:
        return self.names[option]

    def set(self, option: str, value) -> str:
        return self.setting.format(name=self.names[option], value=value)


CLI_TERMS = Terms({"bands": "--bands", "band_roles": "--band-roles", "ignore_domain": "--ignore-domain", "tile": "--tile", "batch": "--batch",
                   "overlap": "--overlap", "memory_budget": "--memory-budget", "device": "--device", "cpu": "cpu"})

# Model sizes (lcmsr.config.CONFIGS builds them), in the order the plugin offers them.
CONFIG_LABELS = {"tiny": "tiny (tests only)", "small": "small (CPU-friendly, shipped)",
                 "paper": "paper (authors' x4 sizes, GPU)"}
CONFIG_NAMES = tuple(CONFIG_LABELS)
