"""The GDAL side of a batch (:mod:`lcmsr.sr.batch`): band stacks of single-band assets, and VRT mosaics.

Both are VRTs written atomically (a temporary name beside the destination, renamed when complete); GDAL
names sources in the VRT's folder relative to it, so a folder of outputs can be moved as a whole.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from osgeo import gdal, osr

from ..atomic import temp_path
from .io import RasterError, RasterWriteError, _call, open_raster

gdal.UseExceptions()

OVERVIEW_SMALLEST = 256   # mosaic overviews halve until the whole mosaic fits this many pixels a side


def stack_bands(sources: list[tuple[str, str]], dst: str) -> str:
    """A VRT ``dst`` stacking the first band of each source in order, each band described by its name
    (``B04``, ``red`` ...) so band roles are found as in a stacked file.  The sources must share a grid
    (size, geotransform, CRS): a STAC item's 10 m and 20 m assets are not stacked by resampling."""
    if not sources:
        raise RasterError(f"{os.path.basename(dst)}: no assets to stack")
    grids = []
    for path, _ in sources:
        ds = open_raster(path)
        grids.append((ds.RasterXSize, ds.RasterYSize, tuple(round(v, 9) for v in ds.GetGeoTransform()),
                      _crs_wkt(ds)))
        ds = None
    for (path, _), grid in zip(sources[1:], grids[1:]):
        if grid != grids[0]:
            raise RasterError(f"asset {os.path.basename(path)} is not on the grid of {os.path.basename(sources[0][0])} "
                              f"({grid[0]}x{grid[1]} px against {grids[0][0]}x{grids[0][1]}, or another pixel size "
                              f"or CRS): choose assets of one resolution")
    tmp = temp_path(dst, ".vrt")
    try:
        options = gdal.BuildVRTOptions(separate=True, bandList=[1])
        ds = _call(f"stacking {len(sources)} assets into {dst}", gdal.BuildVRT, tmp,
                   [os.path.abspath(p) for p, _ in sources], options=options,
                   error=RasterWriteError)
        for i, (_, name) in enumerate(sources):
            if name:
                ds.GetRasterBand(i + 1).SetDescription(name)
        ds.FlushCache()
        ds = None
        os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    return dst


def _crs_wkt(ds) -> str:
    return ds.GetProjection() or ""


@dataclass
class Mosaic:
    path: str
    crs: str            # "EPSG:32633", or a short description of a CRS without an EPSG code, or "no CRS"
    members: list[str]


def group_key(path: str) -> tuple[str, tuple]:
    """(CRS label, key) of an output: outputs sharing the key can be one mosaic (same CRS, band count and
    data type: a VRT's bands have one type each)."""
    ds = open_raster(path)
    wkt = _crs_wkt(ds)
    label = "no CRS"
    if wkt:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(wkt)
        srs.AutoIdentifyEPSG()
        code, name = srs.GetAuthorityCode(None), srs.GetAuthorityName(None)
        label = f"{name}:{code}" if code and name else (srs.GetName() or "custom CRS")
        wkt = srs.ExportToWkt()
    bands = ds.RasterCount
    data_type = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)
    ds = None
    return label, (wkt, bands, data_type)


def build_mosaics(outputs: list[str], folder: str, name: str = "mosaic", overviews: bool = True) -> list[Mosaic]:
    """One VRT mosaic per CRS of ``outputs`` in ``folder`` (``mosaic.vrt`` when they share one CRS, else
    ``mosaic_EPSG_32633.vrt`` ...), with average overviews in a ``.ovr`` beside each when asked."""
    groups: dict[tuple, tuple[str, list[str]]] = {}
    for path in sorted(outputs):
        label, key = group_key(path)
        groups.setdefault(key, (label, []))[1].append(path)
    labels = [label for label, _ in groups.values()]
    mosaics = []
    for key, (label, members) in groups.items():
        stem = name
        if len(groups) > 1:
            stem += "_" + "".join(c if c.isalnum() else "_" for c in label)
            if labels.count(label) > 1:   # one CRS, several band layouts
                stem += f"_{key[1]}b_{key[2]}"
            if len(stem) > 120:
                stem = stem[:100] + "_" + hashlib.sha256(stem.encode()).hexdigest()[:8]
        dst = os.path.join(folder, stem + ".vrt")
        write_mosaic(members, dst, overviews)
        mosaics.append(Mosaic(dst, label, members))
    return mosaics


def overview_levels(width: int, height: int, smallest: int = OVERVIEW_SMALLEST) -> list[int]:
    levels, f = [], 2
    while max(width, height) / (f // 2) > smallest:
        levels.append(f)
        f *= 2
    return levels


def write_mosaic(members: list[str], dst: str, overviews: bool = True) -> str:
    """A VRT of ``members`` (one CRS, band count and data type) at ``dst``, its overviews in ``dst``.ovr;
    both replace older ones only when complete."""
    tmp = temp_path(dst, ".vrt")
    tmp_ovr = tmp + ".ovr"
    try:
        ds = _call(f"building the mosaic {dst}", gdal.BuildVRT, tmp, [os.path.abspath(p) for p in members],
                   options=gdal.BuildVRTOptions(resolution="highest"), error=RasterWriteError)
        width, height = ds.RasterXSize, ds.RasterYSize
        ds.FlushCache()
        ds = None
        if overviews and (levels := overview_levels(width, height)):
            ds = gdal.Open(tmp, gdal.GA_ReadOnly)   # read-only: overviews go to an external .ovr
            _call(f"building overviews of the mosaic {dst}", ds.BuildOverviews, "AVERAGE", levels,
                  options=["COMPRESS_OVERVIEW=DEFLATE"], code=True, error=RasterWriteError)
            ds = None
            os.replace(tmp_ovr, dst + ".ovr")
        elif os.path.exists(dst + ".ovr"):
            os.remove(dst + ".ovr")   # an older mosaic's overviews would not match this one
        os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        _remove(tmp_ovr)
        raise
    return dst


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
