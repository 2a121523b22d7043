"""Model configurations: every size, weight and schedule of the method is a value here.

``paper_config`` reproduces the authors' x4 architecture (CondNet 6.1 M, UNet
18.4 M, decoder 6.4 M parameters at RGB x4); ``small_config`` is the shipped
CPU-friendly model; ``tiny_config`` exists for tests.  All three come from the
same network code, so what is learned on one carries to the others.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .choices import CONFIG_NAMES, SCALES  # noqa: F401  (used below, and re-exported)

LATENT_FACTOR = 8  # the latent grid is always HR/8, whatever the SR scale

# Sane bounds of every config value, checked whenever a config is made (a model file's JSON included, so a
# crafted file cannot ask for a 16 GB network or divide by zero).  The paper config's largest values
# (256 channels, 4 levels, 12 blocks per group, 1000 timesteps) lie far inside them.
MAX_CHANNELS = 4096     # any layer's width, base_channels x channel_mults included
MAX_LEVELS = 8          # entries of channel_mults / level_widths
MAX_BLOCKS = 32         # blocks repeated in one stage or group (the worst config builds on meta in ~2 s)
MAX_BANDS = 64
MAX_LATENT_CHANNELS = 64
MAX_TIMESTEPS = 10_000
MAX_FACTOR = 1e6        # loss weights, scalings, sigma_data and the like


@dataclass
class EncoderConfig:
    """LDM "Encoder" shape: used by the residual encoder E and by CondNet."""
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 2
    mid_res_blocks: int = 2          # the middle of the encoder: residual blocks, no attention
    norm_groups: int = 32


@dataclass
class DecoderConfig:
    """SR decoder D(LR, z): a latent branch steering an IMDN-style SR branch."""
    latent_width: int = 128          # conv latent -> latent_width, then `mid_res_blocks` residual blocks
    mid_res_blocks: int = 2
    level_widths: list[int] = field(default_factory=lambda: [64, 64, 64, 64])  # one per distillation group
    level_res_blocks: int = 2
    features: int = 64               # SR-branch width (head C -> features)
    blocks_per_group: int = 12       # information distillation blocks per group
    distill_rate: float = 0.25
    cca_reduction: int = 16          # contrast-aware channel attention bottleneck
    norm_groups: int = 32
    # How latent features (at HR/8) reach the LR grid: "nearest" as in the paper, or "bilinear", which
    # avoids the 8-pixel blocks an imperfect latent leaves in the output (seen with the CPU-trained model).
    latent_resize: str = "nearest"


@dataclass
class DenoiserConfig:
    """LDM-style UNet on the latent grid, predicting x0."""
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [3])  # 3 = the 1/8 level of the latent
    head_channels: int = 32
    embed_mult: int = 4              # embedding width = embed_mult * base_channels
    norm_groups: int = 32
    dropout: float = 0.0


@dataclass
class ScheduleConfig:
    """LDM "linear" schedule: beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2."""
    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0155


@dataclass
class ConsistencyConfig:
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0   # s = timestep_scaling * t / T in the boundary scalings
    gap: int = 250                   # t1 = max(t2 - gap, 0)
    loss: str = "l2"                 # "l2" (paper) | "pseudo_huber" (iCT)
    huber_c: float | None = None     # None: iCT's 0.00054 * sqrt(latent dimension)
    timestep_sampling: str = "uniform"  # "uniform" (paper) | "lognormal" (iCT)
    lognormal_mean: float = -1.1
    lognormal_std: float = 2.0
    gap_curriculum: bool = False     # iCT-style: the gap halves in stages from `gap` down to `gap_min`
    gap_min: int = 10
    ema_target: bool = True          # False: stop-grad of the online network is the target (iCT)
    ema_decay: float = 0.9999
    kd_weight: float = 1.0
    kl_weight: float = 1e-6
    # Weight of an auxiliary x0 regression MSE(f_θ(x_t2, t2), z) next to the CT term (CTM's denoising
    # regulariser; not in the paper, which is x0_weight = 0).  It teaches the one-step map the posterior
    # mean from the first steps, where CT alone has to bootstrap t = T-1 from t = 0 through the EMA target.
    x0_weight: float = 0.0


@dataclass
class ModelConfig:
    bands: int = 3
    scale: int = 4
    latent_channels: int = 4
    name: str = "paper"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    condnet: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _check_fields(self, "")   # types and bounds first: the rules below assume them
        if self.scale not in SCALES:
            raise ValueError(f"scale {self.scale} is not supported: use one of {', '.join(map(str, SCALES))}")
        if self.bands < 1:
            raise ValueError(f"bands must be at least 1, got {self.bands}")
        for label, enc in (("encoder", self.encoder), ("condnet", self.condnet)):
            if 2 ** (len(enc.channel_mults) - 1) != LATENT_FACTOR:
                raise ValueError(f"{label}.channel_mults must have 4 entries (3 downsamples to HR/8), "
                                 f"got {enc.channel_mults}")
        if len(self.decoder.level_widths) < 1:
            raise ValueError("decoder.level_widths needs at least one level")
        if not 0.0 < self.decoder.distill_rate < 1.0:
            raise ValueError(f"decoder.distill_rate must be in (0, 1), got {self.decoder.distill_rate}")
        if self.consistency.loss not in ("l2", "pseudo_huber"):
            raise ValueError(f"consistency.loss must be 'l2' or 'pseudo_huber', got {self.consistency.loss!r}")
        if self.consistency.timestep_sampling not in ("uniform", "lognormal"):
            raise ValueError("consistency.timestep_sampling must be 'uniform' or 'lognormal', "
                             f"got {self.consistency.timestep_sampling!r}")
        if self.consistency.x0_weight < 0:
            raise ValueError(f"consistency.x0_weight must be at least 0, got {self.consistency.x0_weight}")
        if not 0 < self.consistency.gap < self.schedule.timesteps:
            raise ValueError(f"consistency.gap must be in (0, {self.schedule.timesteps}), got {self.consistency.gap}")
        if not 1 <= self.consistency.gap_min < self.schedule.timesteps:
            raise ValueError(f"consistency.gap_min must be in [1, {self.schedule.timesteps}), "
                             f"got {self.consistency.gap_min}")
        d = self.denoiser
        for level in d.attention_levels:
            if not 0 <= level < len(d.channel_mults):
                raise ValueError(f"denoiser.attention_levels has level {level}, but there are "
                                 f"{len(d.channel_mults)} levels")
        for label, base, mults in (("encoder", self.encoder.base_channels, self.encoder.channel_mults),
                                   ("condnet", self.condnet.base_channels, self.condnet.channel_mults),
                                   ("denoiser", d.base_channels, d.channel_mults)):
            if base * max(mults) > MAX_CHANNELS:
                raise ValueError(f"{label}.base_channels x channel_mults reaches {base * max(mults)} channels, "
                                 f"more than {MAX_CHANNELS}")
        if d.embed_mult * d.base_channels > MAX_CHANNELS:
            raise ValueError(f"denoiser.embed_mult x base_channels is {d.embed_mult * d.base_channels}, "
                             f"more than {MAX_CHANNELS}")
        # The last step's signal level must stay a float32 number (DDIM/DDPM divide by it).
        s = self.schedule
        root = [s.beta_start ** 0.5 + (s.beta_end ** 0.5 - s.beta_start ** 0.5) * i / (s.timesteps - 1)
                for i in range(s.timesteps)]
        if sum(math.log1p(-r * r) for r in root) < math.log(1e-30):
            raise ValueError(f"schedule (timesteps {s.timesteps}, betas {s.beta_start}..{s.beta_end}) leaves "
                             "no signal at the last step")

    @property
    def hr_multiple(self) -> int:
        """HR sizes the networks accept unpadded: latent HR/8, then the UNet halves it per level."""
        return LATENT_FACTOR * 2 ** (len(self.denoiser.channel_mults) - 1)

    @property
    def lr_multiple(self) -> int:
        from math import gcd

        return self.hr_multiple // gcd(self.hr_multiple, self.scale)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        data = dict(data)
        nested = {"encoder": EncoderConfig, "condnet": EncoderConfig, "decoder": DecoderConfig,
                  "denoiser": DenoiserConfig, "schedule": ScheduleConfig, "consistency": ConsistencyConfig}
        kwargs = {}
        for key, value in data.items():
            if key in nested:
                kwargs[key] = dataclass_from_dict(nested[key], value, key)
            else:
                kwargs[key] = value
        return dataclass_from_dict(cls, kwargs, "model config")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


_COUNT = ("int", 0, MAX_BLOCKS)
_WIDTH = ("int", 1, MAX_CHANNELS)
_MULTS = ("ints", 1, MAX_CHANNELS, 1, MAX_LEVELS)      # items in [1, MAX_CHANNELS], 1..MAX_LEVELS of them
_WEIGHT = ("float", 0.0, MAX_FACTOR)
# Every field of every config: (kind, min, max[, min items, max items]); bounds inclusive unless "open"
# (then exclusive).  Kinds: int, float (finite; an int is accepted), bool, str (a choice when bounds
# are a tuple), ints (a list of ints), float? (a float or null).
_FIELDS = {
    "EncoderConfig": dict(base_channels=_WIDTH, channel_mults=_MULTS, num_res_blocks=_COUNT, mid_res_blocks=_COUNT,
                          norm_groups=_WIDTH),
    "DecoderConfig": dict(latent_width=_WIDTH, mid_res_blocks=_COUNT, level_widths=_MULTS, level_res_blocks=_COUNT,
                          features=("int", 2, MAX_CHANNELS), blocks_per_group=_COUNT,
                          distill_rate=("open", 0.0, 1.0), cca_reduction=_WIDTH, norm_groups=_WIDTH,
                          latent_resize=("str", ("nearest", "bilinear"))),
    "DenoiserConfig": dict(base_channels=("int", 2, MAX_CHANNELS), channel_mults=_MULTS,
                           num_res_blocks=("int", 1, MAX_BLOCKS),
                           attention_levels=("ints", 0, MAX_LEVELS - 1, 0, MAX_LEVELS), head_channels=_WIDTH,
                           embed_mult=("int", 1, 64), norm_groups=_WIDTH, dropout=("float", 0.0, 0.99)),
    "ScheduleConfig": dict(timesteps=("int", 2, MAX_TIMESTEPS), beta_start=("open", 0.0, 1.0),
                           beta_end=("open", 0.0, 1.0)),
    "ConsistencyConfig": dict(sigma_data=("float", 1e-3, 1e3), timestep_scaling=("float", 1e-3, MAX_FACTOR),
                              gap=("int", 1, MAX_TIMESTEPS), loss=("str", ("l2", "pseudo_huber")),
                              huber_c=("float?", 1e-12, MAX_FACTOR),
                              timestep_sampling=("str", ("uniform", "lognormal")),
                              lognormal_mean=("float", -100.0, 100.0), lognormal_std=("float", 1e-3, 100.0),
                              gap_curriculum=("bool",), gap_min=("int", 1, MAX_TIMESTEPS), ema_target=("bool",),
                              ema_decay=("float", 0.0, 1.0), kd_weight=_WEIGHT, kl_weight=_WEIGHT,
                              x0_weight=_WEIGHT),
    "ModelConfig": dict(bands=("int", 1, MAX_BANDS), scale=("int", min(SCALES), max(SCALES)),
                        latent_channels=("int", 1, MAX_LATENT_CHANNELS), name=("str", 64)),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_value(label: str, value, spec) -> None:
    kind, *bounds = spec
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be true or false, got {value!r:.80}")
        return
    if kind == "str":
        if isinstance(bounds[0], tuple):
            if value not in bounds[0]:
                raise ValueError(f"{label} must be one of {', '.join(bounds[0])}, got {value!r:.80}")
        elif not isinstance(value, str) or len(value) > bounds[0]:
            raise ValueError(f"{label} must be a text of at most {bounds[0]} characters")
        return
    if kind == "ints":
        lo, hi, fewest, most = bounds
        if not (isinstance(value, list) and fewest <= len(value) <= most and all(_is_int(v) for v in value)
                and all(lo <= v <= hi for v in value)):
            raise ValueError(f"{label} must be a list of {fewest} to {most} whole numbers from {lo} to {hi}, "
                             f"got {value!r:.80}")
        return
    if kind == "float?" and value is None:
        return
    lo, hi = bounds
    if kind == "int":
        ok = _is_int(value) and lo <= value <= hi
        what = f"a whole number from {lo} to {hi}"
    else:
        ok = (_is_int(value) or (isinstance(value, float) and math.isfinite(value))) and (
            lo < value < hi if kind == "open" else lo <= value <= hi)
        what = f"a number {'between' if kind == 'open' else 'from'} {lo:g} {'and' if kind == 'open' else 'to'} {hi:g}"
    if not ok:
        raise ValueError(f"{label} must be {what}, got {value!r:.80}")


def _check_fields(config, prefix: str) -> None:
    """Every value's type and bounds (``_FIELDS``), nested configs included."""
    spec = _FIELDS[type(config).__name__]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in spec:
            _check_value(prefix + f.name, value, spec[f.name])
        elif not (dataclasses.is_dataclass(value) and type(value).__name__ in _FIELDS):
            raise ValueError(f"{prefix}{f.name} must be a mapping of settings")   # a nested config
        else:
            _check_fields(value, f"{prefix}{f.name}.")


def dataclass_from_dict(cls, data, label):
    """``cls(**data)``, a ValueError naming ``label`` for what is not a mapping or a key that is not a field."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{label} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{label} has unknown key(s): {', '.join(unknown)}")
    return cls(**data)


def paper_config(scale: int = 4, bands: int = 3) -> ModelConfig:
    """The authors' x4 sizes (applied at any scale and band count)."""
    return ModelConfig(bands=bands, scale=scale, name="paper")


def small_config(scale: int = 4, bands: int = 3) -> ModelConfig:
    """The shipped model: same structure, reduced widths and distillation depth so a
    1024x1024 output super-resolves on a 2-core CPU in a few seconds (measured: about
    2 s at x4 and x8, 3-4 s at x2 and x3).  The SR branch runs on the LR grid, so its
    cost per output pixel grows as 1/scale^2: x2 and x3 get a lighter SR branch."""
    features, blocks = {2: (32, 2), 3: (48, 2)}.get(scale, (48, 3))
    return ModelConfig(
        bands=bands, scale=scale, name="small",
        encoder=EncoderConfig(base_channels=32, channel_mults=[1, 2, 2, 4], num_res_blocks=1, mid_res_blocks=1),
        condnet=EncoderConfig(base_channels=24, channel_mults=[1, 2, 4, 4], num_res_blocks=1, mid_res_blocks=1,
                              norm_groups=8),
        decoder=DecoderConfig(latent_width=64, mid_res_blocks=1, level_widths=[features] * 4,
                              level_res_blocks=1, features=features, blocks_per_group=blocks, norm_groups=16),
        denoiser=DenoiserConfig(base_channels=32, channel_mults=[1, 2, 2, 4], num_res_blocks=1,
                                attention_levels=[3], head_channels=32),
    )


def tiny_config(scale: int = 4, bands: int = 3) -> ModelConfig:
    """For tests: a forward + backward of a 32x32 HR patch well under a second."""
    return ModelConfig(
        bands=bands, scale=scale, name="tiny",
        encoder=EncoderConfig(base_channels=8, channel_mults=[1, 1, 2, 2], num_res_blocks=1, mid_res_blocks=1,
                              norm_groups=4),
        condnet=EncoderConfig(base_channels=8, channel_mults=[1, 1, 2, 2], num_res_blocks=1, mid_res_blocks=1,
                              norm_groups=4),
        decoder=DecoderConfig(latent_width=16, mid_res_blocks=1, level_widths=[8, 8], level_res_blocks=1,
                              features=8, blocks_per_group=1, cca_reduction=4, norm_groups=4),
        denoiser=DenoiserConfig(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[1],
                                head_channels=8, norm_groups=4),
    )


# lcmsr.choices.CONFIG_NAMES lists the sizes users choose from; each is the factory <name>_config above.
CONFIGS = {name: globals()[f"{name}_config"] for name in CONFIG_NAMES}


def named_config(name: str, scale: int = 4, bands: int = 3) -> ModelConfig:
    try:
        factory = CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config '{name}': use one of {', '.join(CONFIGS)}") from None
    return factory(scale=scale, bands=bands)
