"""What an input raster is, for the domain guard: pixel size in metres, band roles, data type,
and the robust value range of each band (what the band-wise satellite model's stretch uses)."""
from __future__ import annotations

import math
import os

import numpy as np
from osgeo import gdal

from .. import domain as dom
from ..domain import InputFacts
from ..normalizers import robust_range
from . import io
from .validity import valid_values

STRETCH_SAMPLE = 1024   # the stretch is measured on at most this many pixels along each side


def _metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """(east-west, north-south) metres per degree on the WGS 84 ellipsoid at a latitude."""
    p = math.radians(lat_deg)
    lat = 111132.954 - 559.822 * math.cos(2 * p) + 1.175 * math.cos(4 * p)
    lon = 111412.84 * math.cos(p) - 93.5 * math.cos(3 * p)
    return max(lon, 1e-6), lat


def _ground_size(gt, srs, width: int, height: int) -> float | None:
    """Geometric mean of a centre pixel's two sides on the ground (great-circle metres), or None."""
    from osgeo import osr

    try:
        wgs84 = osr.SpatialReference()
        wgs84.ImportFromEPSG(4326)
        wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        src = srs.Clone()
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        t = osr.CoordinateTransformation(src, wgs84)

        def at(col, row):
            x = gt[0] + gt[1] * col + gt[2] * row
            y = gt[3] + gt[4] * col + gt[5] * row
            lon, lat, _ = t.TransformPoint(x, y)
            return lon, lat

        c, r = width / 2, height / 2
        o, e, s = at(c, r), at(c + 1, r), at(c, r + 1)
        size = math.sqrt(_haversine(o, e) * _haversine(o, s))
        return size if math.isfinite(size) and size > 0 else None
    except Exception:  # a CRS PROJ cannot transform: keep the nominal size
        return None


def _haversine(a, b) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(h)))


def pixel_size_m(geotransform, srs, width: int, height: int) -> tuple[float | None, str]:
    """Ground pixel size in metres (geometric mean of the two axes) and how it was found."""
    if geotransform is None or srs is None:
        return None, "no coordinate reference system"
    gt = geotransform
    px, py = math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5])
    if not (px > 0 and py > 0 and math.isfinite(px * py)):
        return None, "degenerate geotransform"
    if srs.IsProjected():
        unit = srs.GetLinearUnits() or 1.0
        nominal = math.sqrt(px * py) * unit
        ground = _ground_size(gt, srs, width, height)
        name = srs.GetLinearUnitsName() or "metre"
        # Conformal projections far from their true-scale line (Web Mercator away from the equator) have
        # map units that are not ground metres: measure the pixel on the ground at the raster's centre.
        if ground is not None and abs(ground / nominal - 1.0) > 0.01:
            return ground, f"projected CRS, {name}; {nominal:.3g} map units = {ground:.3g} m on the ground"
        return nominal, f"projected CRS, {name}"
    if srs.IsGeographic():
        to_deg = math.degrees(srs.GetAngularUnits() or math.radians(1.0))
        # The raster's centre; GDAL's geotransform follows the data axis order (longitude, latitude).
        cy = gt[3] + gt[4] * width / 2 + gt[5] * height / 2
        lat = max(-89.9, min(89.9, cy * to_deg))
        ew, ns = _metres_per_degree(lat)
        return math.sqrt(px * to_deg * ew * py * to_deg * ns), f"geographic CRS at latitude {lat:.1f}"
    return None, "the CRS is neither projected nor geographic"


def input_facts(path: str, ds: gdal.Dataset | None = None) -> InputFacts:
    """The facts of raster ``path`` (read from ``ds`` when the caller has it open already)."""
    ds = ds if ds is not None else io.open_raster(path)
    gt = ds.GetGeoTransform(can_return_null=True)
    gsd, how = pixel_size_m(gt, ds.GetSpatialRef(), ds.RasterXSize, ds.RasterYSize)
    meta = " ".join(f"{k}={v}" for k, v in (ds.GetMetadata_Dict() or {}).items())[:4000]
    bands = [ds.GetRasterBand(b) for b in range(1, ds.RasterCount + 1)]
    descriptions = [b.GetDescription() or "" for b in bands]
    sensor = dom.detect_sensor(os.path.basename(path) + " " + meta) or dom.sensor_from_band_names(descriptions)
    colours = [gdal.GetColorInterpretationName(b.GetColorInterpretation()) or "" for b in bands]
    roles, roles_how = dom.band_roles(descriptions, colours, sensor, os.path.basename(path))
    for i, b in enumerate(bands):
        if b.GetColorInterpretation() == gdal.GCI_AlphaBand:
            roles[i] = "alpha"
    return InputFacts(path=path, width=ds.RasterXSize, height=ds.RasterYSize, band_count=ds.RasterCount,
                      data_type=gdal.GetDataTypeName(bands[0].DataType), gsd_m=gsd, gsd_how=how,
                      sensor=sensor, roles=roles, roles_how=roles_how)


def band_samples(path: str, bands: list[int], sample: int = STRETCH_SAMPLE,
                 ds: gdal.Dataset | None = None) -> list[np.ndarray]:
    """Per selected band, its valid values (in the band's type, maybe none) on a decimated read (GDAL's overviews
    where the file has them; every pixel of a raster up to ``sample`` pixels a side), so a whole scene
    costs about one 1024^2 read."""
    ds = ds if ds is not None else io.open_raster(path)
    w, h = ds.RasterXSize, ds.RasterYSize
    f = max(1.0, max(w, h) / sample)
    bw, bh = max(1, int(round(w / f))), max(1, int(round(h / f)))
    out = []
    for b in bands:
        band = ds.GetRasterBand(b)
        where = f"measuring the value range of band {b} of {path}"
        a = io._call(where, band.ReadAsArray, 0, 0, w, h, bw, bh)
        a = a.astype(io.numpy_dtype(band.DataType), copy=False)
        nodata = band.GetNoDataValue()
        valid = valid_values(a, nodata)
        if nodata is None and band.GetMaskFlags() & (gdal.GMF_PER_DATASET | gdal.GMF_ALPHA):
            valid &= io._call(where, band.GetMaskBand().ReadAsArray, 0, 0, w, h, bw, bh) != 0
        out.append(a[valid])
    return out


def value_ranges(samples: list[np.ndarray]) -> list[tuple | None]:
    """Per band (min, max) of :func:`band_samples`, what every SR (and bicubic) output is clamped to;
    integer bands as exact Python ints (float64 rounds 2**62 + k).  None for a band with no valid value."""
    return [(v.min().item(), v.max().item()) if v.size else None for v in samples]


def band_ranges(path: str, bands: list[int], sample: int = STRETCH_SAMPLE, ds: gdal.Dataset | None = None,
                samples: list[np.ndarray] | None = None) -> list[tuple[float, float, float, float]]:
    """Per selected band: (p1, p99, min, max) of its valid pixels (:func:`band_samples`)."""
    samples = samples if samples is not None else band_samples(path, bands, sample, ds)
    out = []
    for b, v in zip(bands, samples):
        if v.size == 0:
            raise io.RasterError(f"band {b} of {path} has no valid pixel (all nodata): nothing to "
                                 f"super-resolve")
        lo, hi = robust_range(v)
        v = v.astype(np.float64)
        out.append((lo, hi, float(v.min()), float(v.max())))
    return out
