"""LCMSR: the networks bundled for training and inference.

Inference (the point of the method): x_T ~ N(0, I) at t = T-1 ->
z = f(x_T, T-1, CondNet(LR↑)) -> SR = D(LR, z / latent_scale).  One denoiser
evaluation, one decoder pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LATENT_FACTOR, ModelConfig
from .diffusion.consistency import consistency_function
from .diffusion.samplers import make_sampler
from .diffusion.schedule import NoiseSchedule
from .nn import CondNet, LatentDenoiser, ResidualEncoder, SRDecoder
from .nn.encoder import DiagonalGaussian
from .domain import DATA_TYPES, Domain
from .normalization import Normalization
from .normalizers import NORMALIZERS
from .ops import upsample_bicubic

# 2: the model's domain (what imagery it is for; lcmsr.domain.Domain).  Format 1 files still load,
# with an unknown domain.
FORMAT_VERSION = 2
MAX_NAME = 200   # characters of a band name


@dataclass
class ModelInfo:
    """What a model file says about itself (stored as JSON in the file's metadata)."""
    scale: int
    bands: int
    band_names: list[str]
    normalization: Normalization
    config: ModelConfig
    training: dict = field(default_factory=dict)
    data_type: str = "Byte"
    format_version: int = FORMAT_VERSION
    domain: Domain = field(default_factory=Domain)
    # The sampler that measured best on the model's validation split, by a stated rule
    # (scripts/choose_sampler.py): {"sampler", "steps", "rule", "why"}; None: the method's one step.
    default_sampler: dict | None = None
    # Peak memory one CPU model call adds, measured for this model (scripts/measure_working_memory.py --write):
    # {"fp32": [fixed bytes, bytes per HR pixel per image], "bf16": [...], "how": "..."}; None: lcmsr.memory's table.
    working_memory: dict | None = None

    @classmethod
    def default(cls, config: ModelConfig) -> "ModelInfo":
        return cls(scale=config.scale, bands=config.bands,
                   band_names=[f"band {i}" for i in range(1, config.bands + 1)],
                   normalization=Normalization.for_dtype("Byte", config.bands), config=config)

    def validate(self) -> None:
        """Every value consistent and sane (the config checks its own); ValueError naming the field."""
        for name in ("scale", "bands", "format_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r:.80}")
        if not isinstance(self.band_names, list) or not all(isinstance(n, str) and len(n) <= MAX_NAME
                                                                for n in self.band_names):
            raise ValueError(f"band_names must be a list of texts of at most {MAX_NAME} characters")
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"data_type must be one of {', '.join(DATA_TYPES)}, got {self.data_type!r:.80}")
        if not isinstance(self.training, dict):
            raise ValueError("training must be a mapping")
        if self.scale != self.config.scale or self.bands != self.config.bands:
            raise ValueError(f"model info says scale {self.scale} and {self.bands} bands but its config says "
                             f"scale {self.config.scale} and {self.config.bands} bands")
        if len(self.band_names) != self.bands:
            raise ValueError(f"model info has {len(self.band_names)} band names for {self.bands} bands")
        if self.normalization.bands != self.bands:
            raise ValueError(f"model info has a normalisation for {self.normalization.bands} bands "
                             f"but the model has {self.bands}")
        self.domain.validate(self.bands, self.scale)
        check_default_sampler(self.default_sampler)
        check_working_memory(self.working_memory)
        self.normalization.check_range(self.data_type, stretched=NORMALIZERS[self.domain.normalization].stretched)

    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "scale": self.scale, "bands": self.bands,
                "band_names": list(self.band_names), "normalization": self.normalization.to_dict(),
                "config": self.config.to_dict(), "training": dict(self.training), "data_type": self.data_type,
                "domain": self.domain.to_dict(),
                **({"default_sampler": dict(self.default_sampler)} if self.default_sampler is not None else {}),
                **({"working_memory": dict(self.working_memory)} if self.working_memory is not None else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelInfo":
        required = ("format_version", "scale", "bands", "band_names", "normalization", "config")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"model info lacks {', '.join(missing)}")
        if not isinstance(data["config"], dict):
            raise ValueError("config must be a mapping")
        try:
            config = ModelConfig.from_dict(data["config"])
        except ValueError as exc:
            raise ValueError(f"config: {exc}") from None
        # No conversions (int("4"), list("abc")): validate() refuses every value of the wrong type.
        info = cls(scale=data["scale"], bands=data["bands"], band_names=data["band_names"],
                   normalization=Normalization.from_dict(data["normalization"]), config=config,
                   training=data["training"] if data.get("training") is not None else {},
                   data_type=data.get("data_type", "Byte"), format_version=data["format_version"],
                   domain=Domain.from_dict(data["domain"]) if "domain" in data else Domain(),
                   default_sampler=data.get("default_sampler"), working_memory=data.get("working_memory"))
        info.validate()
        return info


WORKING_MEMORY_PRECISIONS = ("fp32", "bf16")
MAX_FIXED_BYTES, MAX_BYTES_PER_PIXEL = 1e11, 1e6


def check_working_memory(value) -> None:
    """A model file's ``working_memory`` is untrusted input: None, or fp32/bf16 pairs of sane numbers and a text."""
    if value is None:
        return
    if not isinstance(value, dict) or not set(value) <= {*WORKING_MEMORY_PRECISIONS, "how"} or \
            not set(value) & set(WORKING_MEMORY_PRECISIONS):
        raise ValueError(f"working_memory must be an object with {' and/or '.join(WORKING_MEMORY_PRECISIONS)} "
                         f"figures and an optional 'how'")
    for key in WORKING_MEMORY_PRECISIONS:
        pair = value.get(key)
        if pair is None:
            continue
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
                or not 0 <= pair[0] <= MAX_FIXED_BYTES or not 1 <= pair[1] <= MAX_BYTES_PER_PIXEL):
            raise ValueError(f"working_memory.{key} must be [fixed bytes 0..{MAX_FIXED_BYTES:g}, bytes per HR "
                             f"pixel 1..{MAX_BYTES_PER_PIXEL:g}]")
    if not isinstance(value.get("how", ""), str) or len(value.get("how", "")) > MAX_SAMPLER_TEXT:
        raise ValueError(f"working_memory.how must be a text of at most {MAX_SAMPLER_TEXT} characters")


DEFAULT_SAMPLER_KEYS = {"sampler": str, "steps": int, "rule": str, "why": str}
MAX_SAMPLER_TEXT = 2000


def check_default_sampler(value) -> None:
    """A model file's ``default_sampler`` is untrusted input: None, or exactly the keys of
    :data:`DEFAULT_SAMPLER_KEYS` with their types, a known sampler, steps it accepts (consistency 1-4,
    others 1-1000) and texts of at most :data:`MAX_SAMPLER_TEXT` characters; ValueError otherwise."""
    from .choices import SAMPLER_NAMES

    if value is None:
        return
    if not isinstance(value, dict) or set(value) != set(DEFAULT_SAMPLER_KEYS):
        raise ValueError(f"default_sampler must be an object with the keys {', '.join(DEFAULT_SAMPLER_KEYS)}")
    for key, kind in DEFAULT_SAMPLER_KEYS.items():
        if not isinstance(value[key], kind) or isinstance(value[key], bool):
            raise ValueError(f"default_sampler.{key} must be a {kind.__name__}")
    if value["sampler"] not in SAMPLER_NAMES:
        raise ValueError(f"default_sampler.sampler must be one of {', '.join(SAMPLER_NAMES)}, "
                         f"got {value['sampler'][:40]!r}")
    top = 4 if value["sampler"] == "consistency" else 1000
    if not 1 <= value["steps"] <= top:
        raise ValueError(f"default_sampler.steps must be 1..{top} for {value['sampler']}, got {value['steps']}")
    if value["sampler"] == "faithful" and value["steps"] != 1:
        raise ValueError("default_sampler.steps must be 1 for the faithful sampler (it takes no steps)")
    for key in ("rule", "why"):
        if len(value[key]) > MAX_SAMPLER_TEXT:
            raise ValueError(f"default_sampler.{key} is longer than {MAX_SAMPLER_TEXT} characters")


class LCMSR(nn.Module):
    def __init__(self, config: ModelConfig, info: ModelInfo | None = None, with_encoder: bool = True):
        super().__init__()
        self.config = config
        c = config
        self.encoder = ResidualEncoder(c.bands, c.latent_channels, c.encoder) if with_encoder else None
        self.decoder = SRDecoder(c.bands, c.scale, c.latent_channels, c.decoder)
        self.condnet = CondNet(c.bands, c.latent_channels, c.condnet)
        self.denoiser = LatentDenoiser(c.latent_channels, c.latent_channels, c.denoiser)
        # 1/std(z) of the stage-1 latent ("scale_by_std"); diffusion works on z * latent_scale.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.schedule = NoiseSchedule(c.schedule)
        self.info = info if info is not None else ModelInfo.default(config)
        self.info.validate()

    # ---- geometry -------------------------------------------------------------------------
    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def bands(self) -> int:
        return self.config.bands

    @property
    def lr_multiple(self) -> int:
        """LR sizes that need no padding are multiples of this (HR must be a multiple of
        8 x 2^(UNet downsamples))."""
        return self.config.lr_multiple

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        m = self.lr_multiple
        return -(-h // m) * m, -(-w // m) * m

    def latent_shape(self, h: int, w: int) -> tuple[int, int, int]:
        """(latent channels, H/8, W/8) of the padded LR input of size h x w."""
        hp, wp = self.padded_size(h, w)
        return (self.config.latent_channels, hp * self.scale // LATENT_FACTOR, wp * self.scale // LATENT_FACTOR)

    def noise_draws(self, steps: int = 1, sampler: str = "consistency") -> int:
        """Latent-shaped noise fields one ``sr`` call consumes; pass ``noise`` of shape
        [draws, B, *latent_shape] to fix them all (a 4-D ``noise`` fixes only x_T)."""
        return make_sampler(sampler, self.schedule, steps).noise_draws

    # ---- pieces the training code uses -----------------------------------------------------
    def encode(self, hr: torch.Tensor, lr_up: torch.Tensor) -> DiagonalGaussian:
        if self.encoder is None:
            raise RuntimeError("this is an inference-only model: it has no residual encoder")
        return self.encoder(hr, lr_up)

    def decode(self, lr: torch.Tensor, z_scaled: torch.Tensor) -> torch.Tensor:
        """D(LR, z / latent_scale) for a latent in diffusion (scaled) units."""
        return self.decoder(lr, z_scaled / self.latent_scale.to(z_scaled.dtype))

    def condition(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.condnet(lr_up)

    def consistency(self, x_t: torch.Tensor, t, cond: torch.Tensor, out_size, denoiser: nn.Module | None = None):
        """f(x_t, t) with this model's denoiser (or another, e.g. the EMA copy)."""
        return consistency_function(denoiser or self.denoiser, x_t, t, cond, self.scale, out_size,
                                    self.config.consistency, self.schedule.num_timesteps)

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def sr(self, lr: torch.Tensor, steps: int = 1, sampler: str = "consistency",
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           repeats: int = 1) -> torch.Tensor:
        """Model-space LR [B, C, h, w] -> model-space SR [B, C, h*s, w*s].

        ``repeats`` > 1: that many samples of every image, [repeats * B, ...] sample-major, with CondNet run
        once per image (it is about half a step's cost); ``noise`` then holds repeats * B fields."""
        if lr.ndim != 4 or lr.shape[1] != self.bands:
            raise ValueError(f"expected an LR tensor of shape [B, {self.bands}, h, w], got {tuple(lr.shape)}")
        runner = make_sampler(sampler, self.schedule, steps)
        h, w = lr.shape[-2:]
        s = self.scale
        hp, wp = self.padded_size(h, w)
        x = lr
        if (hp, wp) != (h, w):
            # Replicate padding: reflect fails for inputs smaller than the pad.
            x = F.pad(lr, (0, wp - w, 0, hp - h), mode="replicate")
        cond = self.condnet(upsample_bicubic(x, s))
        if repeats > 1:
            x, cond = x.repeat(repeats, 1, 1, 1), cond.repeat(repeats, 1, 1, 1)
        out_size = (hp * s, wp * s)
        z = runner.sample(lambda x_t, t: self.consistency(x_t, t, cond, out_size), cond, noise, generator)
        out = self.decode(x, z)
        return out[:, :, : h * s, : w * s].to(lr.dtype)


def build_model(config: ModelConfig, with_encoder: bool = True, info: ModelInfo | None = None) -> LCMSR:
    """A model with random weights (encoder included for training unless ``with_encoder`` is False)."""
    return LCMSR(config, info=info, with_encoder=with_encoder)


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
