"""The sensors whose rasters the project recognises: one registry entry per sensor, torch-free.

An entry says how the sensor's product files name their bands (B04, SR_B4 ...), which layer stacks its users
make when the bands carry no names, and which patterns of a file name or its metadata give the sensor away.
:mod:`lcmsr.domain` reads the band roles of an input from these tables (inference, the fine-tuning data and the
evaluation alike).  A new sensor is one :func:`register` call here; the order of registration is the order in
which the name patterns are tried (more specific first).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sensor:
    name: str
    bands: dict[str, str]                  # band name in the product files -> role (lcmsr.domain.ROLES)
    stacks: dict[int, list[str]] = field(default_factory=dict)   # band count -> roles of the usual stack
    patterns: tuple[str, ...] = ()         # regexes on the lower-cased file name + metadata ("_" is no word boundary)


SENSORS: dict[str, Sensor] = {}


def register(sensor: Sensor) -> Sensor:
    if sensor.name in SENSORS:
        raise ValueError(f"sensor {sensor.name!r} is registered twice")
    SENSORS[sensor.name] = sensor
    return sensor


_S2 = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
       "B07": "rededge3", "B08": "nir", "B8A": "nir_narrow", "B09": "watervapour", "B10": "cirrus", "B11": "swir1",
       "B12": "swir2"}
register(Sensor(
    "sentinel-2", _S2,
    stacks={4: ["blue", "green", "red", "nir"],
            10: ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir_narrow", "swir1", "swir2"],
            12: [_S2[b] for b in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                                  "B12")],
            13: list(_S2.values())},
    patterns=(r"sentinel[ _-]?2|(^|[^a-z0-9])s2[abc]?([^a-z0-9]|$)|msil[12][ac]|(^|[^a-z0-9])t\d\d[a-z]{3}_\d{8}t",)))
register(Sensor(
    "landsat-8/9",
    {"B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir", "B6": "swir1", "B7": "swir2",
     "B8": "pan", "B9": "cirrus", "B10": "thermal", "B11": "thermal"},
    stacks={7: ["coastal", "blue", "green", "red", "nir", "swir1", "swir2"]},
    patterns=(r"landsat[ _-]?0?[89]|(^|[^a-z0-9])l[coth]?0?[89]([^0-9]|$)|(^|[^a-z])oli([^a-z]|$)",)))
register(Sensor(
    "landsat-4/5/7",
    {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir1", "B6": "thermal", "B7": "swir2",
     "B8": "pan"},
    stacks={6: ["blue", "green", "red", "nir", "swir1", "swir2"],
            7: ["blue", "green", "red", "nir", "swir1", "thermal", "swir2"]},
    patterns=(r"landsat[ _-]?0?[4-7]|(^|[^a-z0-9])l[etm]?0?[4-7]([^0-9]|$)|etm\+?|lsat[457]|(^|[^a-z])tm([^a-z]|$)",)))
