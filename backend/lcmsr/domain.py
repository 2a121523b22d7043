"""What imagery a model was made for, what an input raster is, and whether the two fit.

Torch-free and GDAL-free: the raster package measures an input (:class:`InputFacts`), the
model file carries a :class:`Domain`, and :func:`check_fit` / :func:`choose_model` decide.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from .choices import CLI_TERMS, Terms
from .normalizers import NORMALIZERS
from .sensors import SENSORS
from .text import safe_text




# ---------------------------------------------------------------------------------------------
# Band roles

ROLES = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir_narrow",
         "watervapour", "cirrus", "swir1", "swir2", "pan", "thermal", "gray")

# The sensors' band tables, usual stacks and name patterns: one registry entry per sensor (lcmsr.sensors).
SENSOR_BANDS = {name: dict(sensor.bands) for name, sensor in SENSORS.items()}
SENSOR_STACKS = {name: {n: list(roles) for n, roles in sensor.stacks.items()} for name, sensor in SENSORS.items()}
_ROLE_WORDS = [  # (regex on a lower-cased band description, role); first match wins
    (r"\b(alpha)\b", "alpha"),
    (r"\bcoastal|aerosol", "coastal"),
    (r"\bred[ _-]?edge[ _-]?1|\bre1\b|vegetation red edge 1", "rededge1"),
    (r"\bred[ _-]?edge[ _-]?2|\bre2\b", "rededge2"),
    (r"\bred[ _-]?edge[ _-]?3|\bre3\b", "rededge3"),
    (r"narrow ?nir|nir[ _-]?narrow|\bnir08\b", "nir_narrow"),
    (r"\bswir[ _-]?1\b|\bswir16\b|short[- ]?wave infrared 1", "swir1"),
    (r"\bswir[ _-]?2\b|\bswir22\b|short[- ]?wave infrared 2", "swir2"),
    (r"\bthermal|\btir[ _-]?[12]?\b|\blwir|\bbt\b|brightness temp", "thermal"),
    (r"\bpan(chromatic)?\b", "pan"),
    (r"\bcirrus\b", "cirrus"),
    (r"water ?vapou?r", "watervapour"),
    (r"\bnir\b|near[- ]?infra-?red|\bnir[ _-]?1?\b", "nir"),
    (r"\bblue\b", "blue"),
    (r"\bgreen\b", "green"),
    (r"\bred\b", "red"),
]
_SENSOR_PATTERNS = [(pattern, name) for name, sensor in SENSORS.items() for pattern in sensor.patterns]


def detect_sensor(text: str) -> str | None:
    """'sentinel-2', 'landsat-8/9', 'landsat-4/5/7' or None, from a file name and its metadata."""
    t = text.lower()
    for pattern, sensor in _SENSOR_PATTERNS:
        if re.search(pattern, t):
            return sensor
    return None


def sensor_from_band_names(names: list[str]) -> str | None:
    """Band names that give the sensor away: B6_VCID_* (Landsat 7), B01..B12 / B8A (Sentinel-2)."""
    low = [(n or "").strip().lower() for n in names]
    if any(n.startswith("b6_vcid") for n in low):
        return "landsat-4/5/7"
    if any(re.fullmatch(r"b(0\d|1[0-2]|8a)", n) for n in low):
        return "sentinel-2"
    return None


def role_from_name(name: str, sensor: str | None) -> str | None:
    """The role a band's description (or a per-band file name) names, or None."""
    n = (name or "").strip()
    if not n:
        return None
    low = n.lower()
    if low.startswith("b6_vcid"):
        return "thermal"
    token = re.search(r"(?:^|[^a-z0-9])(?:sr_|st_|toa_)?b(?:and)?[ _]?(0?\d{1,2}|8a)(?:$|[^0-9a-z])", low)
    if token:
        raw = token.group(1).upper()
        if sensor == "sentinel-2" or raw.startswith("0") or raw == "8A":
            key = "B" + (raw if raw == "8A" else f"{int(raw):02d}")
            role = SENSOR_BANDS["sentinel-2"].get(key)
            if role and (sensor in (None, "sentinel-2")):
                return role
        elif sensor in SENSOR_BANDS:
            return SENSOR_BANDS[sensor].get(f"B{int(raw)}")
        # "B4" without a known sensor: red on Landsat 8, NIR on Landsat 7 -- not guessed.
    for pattern, role in _ROLE_WORDS:
        if re.search(pattern, low):
            return role
    return None


_GDAL_COLOR_ROLES = {"red": "red", "green": "green", "blue": "blue", "alpha": "alpha", "pan": "pan",
                     "nir": "nir", "swir": "swir1", "coastal": "coastal", "rededge": "rededge1"}


def band_roles(descriptions: list[str], color_names: list[str], sensor: str | None,
               file_name: str = "") -> tuple[list[str | None], str]:
    """Role of every band of a raster (None when unknown) and one sentence saying how it was found.

    Order of evidence: the band description (a role word, or a sensor band name such as B04),
    GDAL's colour interpretation, a single-band file named after its band (..._B4.TIF), and
    the sensor's usual layer stack when the bands carry no names at all.
    """
    n = len(descriptions)
    if sensor is None:
        sensor = sensor_from_band_names(descriptions)
    roles: list[str | None] = [role_from_name(d, sensor) for d in descriptions]
    how = "band descriptions" if any(roles) else "colour interpretation"
    roles = [r or _GDAL_COLOR_ROLES.get((c or "").lower()) for r, c in zip(roles, color_names)]
    if n == 1 and roles[0] is None and file_name:
        roles[0] = role_from_name(re.sub(r"\.[a-z0-9]+$", "", file_name.lower()).split("_")[-1], sensor)
        how = "file name"
    if all(r is None for r in roles) and sensor in SENSOR_STACKS and n in SENSOR_STACKS[sensor]:
        roles = list(SENSOR_STACKS[sensor][n])
        how = f"the usual {n}-band {sensor} stack order"
    if all(r is None for r in roles):
        how = "unknown (no band names, colour interpretation or known sensor)"
    return roles, how


ROLES_STATED = "stated by the user"
UNKNOWN_ROLE_WORDS = ("?", "", "unknown", "none")   # what a user writes for a band whose role is unknown


def parse_band_roles(text) -> list[str | None] | None:
    """Roles a user states, one per raster band in band order: 'red,green,blue,nir' (commas or spaces; '?' for a
    band whose role is unknown, 'alpha' for an alpha band).  None or empty: not stated.  ValueError names a word
    that is not a role."""
    if text is None:
        return None
    words = text if isinstance(text, (list, tuple)) else str(text).replace(",", " ").split()
    words = [str(w).strip().lower() for w in words]
    if not words:
        return None
    known = ROLES + ("alpha",)
    for w in words:
        if w not in known and w not in UNKNOWN_ROLE_WORDS:
            raise ValueError(f"band role {safe_text(w, 40)!r} is not one of {', '.join(known)} (or '?' for unknown)")
    return [None if w in UNKNOWN_ROLE_WORDS else w for w in words]


def state_roles(facts: "InputFacts", roles: list[str | None] | None, terms: "Terms" = CLI_TERMS) -> "InputFacts":
    """``facts`` with the roles the user stated in place of the ones read or guessed (None: unchanged).
    DomainError when the count differs from the raster's bands."""
    if not roles:
        return facts
    if len(roles) != facts.band_count:
        raise DomainError(f"{terms['band_roles']} names {len(roles)} role(s) but {os.path.basename(facts.path)} has "
                          f"{facts.band_count} band(s): give one role per band, in band order ('?' for unknown)")
    return dataclasses.replace(facts, roles=list(roles), roles_how=ROLES_STATED)


def describe_roles(roles: list[str | None]) -> str:
    return ", ".join(f"{i} {r or '?'}" for i, r in enumerate(roles, start=1))


@dataclass
class InputFacts:
    path: str
    width: int
    height: int
    band_count: int
    data_type: str                       # GDAL name of the first band's type
    gsd_m: float | None                  # pixel size in metres (None: unknown)
    gsd_how: str
    sensor: str | None
    roles: list[str | None]              # one per raster band
    roles_how: str

    @property
    def roles_guessed(self) -> bool:
        """True when no band says what it is (no name, colour interpretation, file name or statement): the roles,
        if any, are a sensor's usual stack order, which a user's own stack may not follow."""
        return self.roles_how.startswith(("the usual", "unknown"))

    def describe(self) -> str:
        gsd = f"pixel {self.gsd_m:.3g} m ({self.gsd_how})" if self.gsd_m else f"pixel size unknown ({self.gsd_how})"
        return (f"{os.path.basename(self.path)}: {self.band_count} band(s) {self.data_type}, {gsd}, "
                f"bands {describe_roles(self.roles)} (roles from {self.roles_how})")



# ---------------------------------------------------------------------------------------------
# What a model was made for

FAMILIES = ("aerial", "satellite", "unknown")
NORMALIZATIONS = tuple(NORMALIZERS)
DATA_TYPES = ("Byte", "Int8", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")
GSD_TOLERANCE = 2.0   # an input pixel this many times outside the model's range stops the job


class DomainError(ValueError):
    """The input is not imagery the model was made for; the message names both sides."""


@dataclass
class Domain:
    """The imagery a model was trained for, stored in the model file (format 2)."""
    family: str = "unknown"
    sensor: str = ""                          # free text, e.g. "Landsat-7/8 (ETM+, OLI)"
    band_roles: list[str] = field(default_factory=list)   # one per model band; ["any"] when band-wise
    bandwise: bool = False                    # one single-band network applied to every input band
    trained_roles: list[str] = field(default_factory=list)  # band-wise: the roles seen in training
    data_types: list[str] = field(default_factory=list)     # input GDAL types it accepts
    normalization: str = "fixed"              # "fixed" (lo/hi in the file) | "input_percentile"
    lr_gsd_m: list[float] | None = None       # input pixel sizes it is made for, metres [min, max]
    hr_gsd_m: list[float] | None = None       # the output's (lr / scale)
    notes: str = ""

    @property
    def known(self) -> bool:
        return self.family != "unknown"

    def validate(self, bands: int, scale: int) -> None:
        def strs(name, value, allowed=None, maxlen=64, maxitems=32):
            if not isinstance(value, list) or len(value) > maxitems or not all(isinstance(v, str) for v in value):
                raise ValueError(f"domain.{name} must be a list of at most {maxitems} strings")
            for v in value:
                if len(v) > maxlen or (allowed is not None and v not in allowed):
                    raise ValueError(f"domain.{name} has the unknown value {_safe(v)!r}")

        if self.family not in FAMILIES:
            raise ValueError(f"domain.family must be one of {', '.join(FAMILIES)}, got {_safe(self.family)!r}")
        for name in ("sensor", "notes"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > 2000:
                raise ValueError(f"domain.{name} must be a string of at most 2000 characters")
        if not isinstance(self.bandwise, bool):
            raise ValueError("domain.bandwise must be true or false")
        strs("band_roles", self.band_roles, ROLES + ("any",))
        strs("trained_roles", self.trained_roles, ROLES)
        strs("data_types", self.data_types, DATA_TYPES)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"domain.normalization must be one of {', '.join(NORMALIZATIONS)}")
        if not self.known:
            return
        if self.bandwise:
            if bands != 1 or self.band_roles != ["any"]:
                raise ValueError("a band-wise model has one band, with domain.band_roles ['any']")
        elif len(self.band_roles) != bands:
            raise ValueError(f"domain.band_roles names {len(self.band_roles)} band(s) but the model has {bands}")
        if not self.data_types:
            raise ValueError("domain.data_types is empty")
        for name in ("lr_gsd_m", "hr_gsd_m"):
            v = getattr(self, name)
            if v is None:
                continue
            if (not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, (int, float)) and
                                                                  not isinstance(x, bool) for x in v)
                    or not all(1e-4 <= x <= 1e6 for x in v) or v[0] > v[1]):   # (NaN and inf fail too)
                raise ValueError(f"domain.{name} must be [min, max] metres between 1e-4 and 1e6, got {_safe(v)!r}")
        if self.lr_gsd_m is not None and self.hr_gsd_m is not None:
            want = [g / scale for g in self.lr_gsd_m]
            if any(abs(a - b) > 1e-6 * max(1.0, b) for a, b in zip(self.hr_gsd_m, want)):
                raise ValueError(f"domain.hr_gsd_m {self.hr_gsd_m} is not lr_gsd_m {self.lr_gsd_m} / {scale}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> "Domain":
        if not isinstance(data, dict):
            raise ValueError("domain must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"domain has unknown key(s): {', '.join(_safe(k) for k in unknown[:5])}")
        return cls(**data)

    def summary(self) -> str:
        """One line: what the model is for."""
        if not self.known:
            return "domain unknown (a model file written before format 2, or a hand-made model)"
        bands = (f"any band, one at a time (trained on {', '.join(self.trained_roles)})" if self.bandwise
                 else ", ".join(self.band_roles))
        gsd = (f"input pixels {_fmt_range(self.lr_gsd_m)} -> {_fmt_range(self.hr_gsd_m)}"
               if self.lr_gsd_m else "input pixel size unspecified")
        norm = NORMALIZERS[self.normalization].label
        return (f"{self.family} ({self.sensor or 'sensor unspecified'}); bands: {bands}; "
                f"{'/'.join(self.data_types)}; {norm}; {gsd}")


def _fmt_m(v: float) -> str:
    return f"{v:.3g} m"


def _fmt_range(r) -> str:
    if not r:
        return "?"
    return _fmt_m(r[0]) if r[0] == r[1] else f"{r[0]:.3g}-{r[1]:.3g} m"


def _safe(value, limit: int = 80) -> str:
    """A value from an untrusted file, fit for one line of a terminal: no control characters, short."""
    return safe_text(value, limit)


# Domains of the shipped models (`lcmsr set-domain --preset`): one JSON file each in lcmsr/presets/, which the
# recipes in scripts/ write into their model files.  A new shipped model's domain is one more file there.
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def _load_presets() -> dict[str, Domain]:
    presets = {}
    for name in sorted(os.listdir(PRESET_DIR)):
        if name.endswith(".json"):
            with open(os.path.join(PRESET_DIR, name), encoding="utf-8") as f:
                presets[name[:-5]] = Domain.from_dict(json.load(f))
    return presets


PRESETS = _load_presets()


# ---------------------------------------------------------------------------------------------
# Fitting an input to a model

def _band_list(bands) -> str:
    return ",".join(map(str, bands))


def plan_bands(domain: Domain, model_bands: int, facts: InputFacts, requested: list[int] | None,
               terms: Terms = CLI_TERMS) -> tuple[list[int], str, list[str]]:
    """The input bands to feed the model, in the model's order: (bands, why, warnings).

    Bands are matched by role (red, green, blue ...) where the model and the raster both know
    them; a raster whose roles are all unknown is taken in band order, and the message says so.
    Raises :class:`DomainError` with a hint naming roles when the raster lacks a band the model needs.
    """
    name = os.path.basename(facts.path)
    roles = facts.roles
    usable = [b for b in range(1, facts.band_count + 1) if roles[b - 1] != "alpha"] or \
        list(range(1, facts.band_count + 1))
    warnings: list[str] = []
    need = domain.band_roles if domain.known and not domain.bandwise else []
    if requested:
        bands = list(requested)
        if domain.bandwise:
            odd = [b for b in bands if roles[b - 1] and roles[b - 1] not in domain.trained_roles]
            if odd:
                warnings.append(f"band(s) {_band_list(odd)} of {name} ("
                                f"{', '.join(str(roles[b - 1]) for b in odd)}) are of a kind the model was not "
                                f"trained on ({', '.join(domain.trained_roles)})")
            return bands, f"bands {_band_list(bands)} as chosen, one at a time", warnings
        if len(bands) != model_bands:
            raise DomainError(f"the model expects {model_bands} band(s) ({', '.join(need) or 'in its own order'}) "
                              f"but {len(bands)} band(s) of {name} are chosen ({_band_list(bands)}); "
                              f"{name} has bands {describe_roles(roles)}: choose {model_bands} with {terms['bands']}")
        for b, want in zip(bands, need):
            got = roles[b - 1]
            if got and got != want:
                warnings.append(f"band {b} of {name} is {got} but the model takes {want} in that place")
        return bands, f"bands {_band_list(bands)} as chosen", warnings
    if domain.bandwise:
        left_out = [b for b in usable if roles[b - 1] and roles[b - 1] not in domain.trained_roles]
        bands = [b for b in usable if b not in left_out] or usable
        why = f"bands {_band_list(bands)} ({', '.join(roles[b - 1] or '?' for b in bands)}), one at a time"
        if left_out and bands != usable:
            why += (f"; band(s) {_band_list(left_out)} ({', '.join(str(roles[b - 1]) for b in left_out)}) left "
                    f"out: the model was not trained on them (choose bands to include them)")
        return bands, why, warnings
    if need:
        by_role: dict[str, int] = {}
        for b in usable:
            if roles[b - 1]:
                by_role.setdefault(roles[b - 1], b)
        if all(r in by_role for r in need):
            bands = [by_role[r] for r in need]
            if facts.roles_guessed and len(need) > 1:
                warnings.append(f"the band roles of {name} are guessed ({facts.roles_how}), not read from the "
                                f"file: if its bands are stacked otherwise, state them with {terms['band_roles']}")
            return bands, f"bands {_band_list(bands)} as {', '.join(need)} (matched by role)", warnings
        known = [b for b in usable if roles[b - 1]]
        if not known and len(usable) == model_bands:
            bands = usable[:model_bands]
            return bands, (f"band roles of {name} are unknown: bands {_band_list(bands)} taken as "
                           f"{', '.join(need)}"), warnings
        if not known:
            raise DomainError(
                f"the model expects {model_bands} band(s) ({', '.join(need)}) but {len(usable)} band(s) of {name} "
                f"are usable and their kinds are unknown (no band names or colour interpretation): choose "
                f"{model_bands} with {terms['bands']} in the order {', '.join(need)}, e.g. "
                f"{terms.set('bands', _band_list(usable[:model_bands]))}")
        missing = [r for r in need if r not in by_role]
        raise DomainError(f"the model needs {', '.join(need)} bands but {name} has no {' or '.join(missing)} "
                          f"band (its bands: {describe_roles(roles)}); choose {model_bands} bands by hand "
                          f"in the order {', '.join(need)} ({terms['bands']})")
    if len(usable) != model_bands:
        raise DomainError(f"the model expects {model_bands} band(s) but {len(usable)} band(s) of {name} are usable "
                          f"(bands: {describe_roles(roles)}): choose {model_bands} with {terms['bands']}"
                          + (f", e.g. {terms.set('bands', _band_list(usable[:model_bands]))}"
                             if len(usable) > model_bands else
                             f", repeating one, or use a model made for {len(usable)} band(s)"))
    bands = usable[:model_bands]
    return bands, f"bands {_band_list(bands)} in band order (the model does not say which kinds it takes)", warnings


def fit_problems(domain: Domain, facts: InputFacts) -> list[str]:
    """What does not fit between the input and the model, each naming both sides (empty: it fits)."""
    if not domain.known:
        return []
    problems = []
    g = facts.gsd_m
    if g is not None and domain.lr_gsd_m:
        lo, hi = domain.lr_gsd_m
        if g < lo / GSD_TOLERANCE or g > hi * GSD_TOLERANCE:
            problems.append(f"input pixel {g:.3g} m, model made for {_fmt_range(domain.lr_gsd_m)}")
    dt = facts.data_type
    if dt not in domain.data_types:
        problems.append(f"input data type {dt}, model made for {'/'.join(domain.data_types)}")
    return problems


def gsd_fit(domain: Domain, facts: InputFacts) -> int:
    """2: the pixel size lies in the model's range; 1: within the tolerance; 0: unknown."""
    if facts.gsd_m is None or not domain.lr_gsd_m:
        return 0
    lo, hi = domain.lr_gsd_m
    return 2 if lo <= facts.gsd_m <= hi else 1


def choose_model(candidates: list[tuple[str, object]], facts: InputFacts, requested: list[int] | None = None,
                 terms: Terms = CLI_TERMS) -> tuple[str, object, str]:
    """The candidate (name, ModelInfo) whose domain fits the input best: (name, info, why).

    Fit means: its bands can be found by role, the data type is one it accepts and the pixel size
    is within its range (by the guard's tolerance).  Among those, an in-range pixel size beats a
    tolerated one, the model's native data type beats an accepted one, and a model made for exactly
    these bands beats a band-wise one.  None fits: :class:`DomainError` lists every model and why.
    """
    ranked, refused = [], []
    for name, info in candidates:
        d = info.domain
        label = os.path.basename(name)
        if not d.known:
            refused.append(f"{label}: domain unknown (format {info.format_version} file)")
            continue
        try:
            bands, why_bands, _ = plan_bands(d, info.bands, facts, requested, terms)
        except DomainError as exc:
            refused.append(f"{label} [{d.summary()}]: {exc}")
            continue
        problems = fit_problems(d, facts)
        if problems:
            refused.append(f"{label} [{d.summary()}]: {'; '.join(problems)}")
            continue
        # A model that takes several bands in a fixed order is trusted with them only when the roles are read
        # from the file, stated by the user or the bands chosen by hand: a guessed stack order goes to a
        # model that does not depend on band order.
        order_safe = d.bandwise or info.bands == 1 or bool(requested) or not facts.roles_guessed
        score = (gsd_fit(d, facts), order_safe, not d.bandwise, facts.data_type == d.data_types[0])
        ranked.append((score, label, name, info, why_bands))
    if not ranked:
        listed = "\n  ".join(refused) if refused else "(no model found)"
        raise DomainError(f"no model fits {facts.describe()}:\n  {listed}")
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    score, label, name, info, why_bands = ranked[0]
    d = info.domain
    gsd = {2: f"input pixel {facts.gsd_m:.3g} m is within its {_fmt_range(d.lr_gsd_m)}" if facts.gsd_m else "",
           1: f"input pixel {facts.gsd_m:.3g} m is within a factor {GSD_TOLERANCE:g} of its "
              f"{_fmt_range(d.lr_gsd_m)}" if facts.gsd_m else "",
           0: "input pixel size unknown, so chosen by bands and data type only"}[score[0]]
    why = f"chose {label} ({d.family}): {gsd}; {facts.data_type} accepted; {why_bands}"
    passed_over = [r[1] for r in ranked[1:] if not r[0][1] and r[0][0] == score[0]]
    if passed_over:
        why += (f"; not {', '.join(passed_over)}: it takes the bands in a fixed order and the band roles are only "
                f"guessed ({facts.roles_how}); state them with {terms['band_roles']} to use it")
    others = [r[1] for r in ranked[1:] if r[1] not in passed_over]
    if others:
        why += f" (also fitting: {', '.join(others)})"
    return name, info, why
