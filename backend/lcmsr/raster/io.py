"""GDAL raster input and output: windows, bands, nodata, georeferencing, atomic writes.

The only module (with its siblings in :mod:`lcmsr.raster`) that imports GDAL.
It works whether or not the host called ``gdal.UseExceptions()`` (QGIS and
other plugins share one process, so this module never changes that global):
every GDAL call is checked both ways.

Outputs are written under a temporary name beside the destination and renamed
with ``os.replace`` only when complete, so a destination is never half-written
and a failed or cancelled job leaves nothing behind.  The input is only ever
opened read-only.
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from .. import atomic
from ..choices import CLI_TERMS, Terms
from ..paths import RASTER_SIDE_CARS, check_outputs, check_regular, raster_outputs
from ..progress import Cancelled, Progress
from .validity import valid_values

BLOCK = 256  # output GeoTIFF tile size (pixels)


class RasterError(ValueError):
    """A raster cannot be used as given; the message names the file and the problem."""


class RasterWriteError(OSError):
    """Writing the output failed (disk full, file too large, permissions); the partial file was removed."""


# ---------------------------------------------------------------- data types

_NUMPY_TYPES = {
    gdal.GDT_Byte: np.uint8, gdal.GDT_UInt16: np.uint16, gdal.GDT_Int16: np.int16,
    gdal.GDT_UInt32: np.uint32, gdal.GDT_Int32: np.int32,
    gdal.GDT_Float32: np.float32, gdal.GDT_Float64: np.float64,
}
for _name, _np in (("GDT_Int8", np.int8), ("GDT_Int64", np.int64), ("GDT_UInt64", np.uint64)):
    if hasattr(gdal, _name):  # GDAL >= 3.5 / 3.7
        _NUMPY_TYPES[getattr(gdal, _name)] = _np


def numpy_dtype(data_type: int) -> np.dtype:
    try:
        return np.dtype(_NUMPY_TYPES[data_type])
    except KeyError:
        raise RasterError(f"data type {gdal.GetDataTypeName(data_type)} is not supported") from None


def is_float_type(data_type: int) -> bool:
    return numpy_dtype(data_type).kind == "f"


def to_data_type(values: np.ndarray, data_type: int) -> np.ndarray:
    """Float values -> ``data_type``: integers rounded to nearest and clipped to the type's range."""
    dtype = numpy_dtype(data_type)
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    # float32 holds every 8/16-bit value and both range ends exactly; wider integers need float64
    # so that e.g. 2**31 - 1 is not rounded past the limit.
    work = np.float32 if dtype.itemsize <= 2 else np.float64
    out = values.astype(work, copy=True)
    np.rint(out, out=out)
    np.clip(out, *type_range(data_type), out=out)
    return out.astype(dtype)


def type_range(data_type: int) -> tuple[float, float]:
    """The finite values ``data_type`` holds, as floats that convert back without wrapping: 2**63 - 1
    is 2**63 as a float64, which an int64 cast wraps to -2**63, so 64-bit ends step one float inwards."""
    dtype = numpy_dtype(data_type)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    lo, hi = float(info.min), float(info.max)
    if dtype.kind in "iu" and int(hi) > info.max:
        hi = float(np.nextafter(hi, 0.0))
    if dtype.kind in "iu" and int(lo) < info.min:
        lo = float(np.nextafter(lo, 0.0))
    return lo, hi


def exact_work_type(data_type: int) -> np.dtype:
    """The float type that keeps a band's values: float32 for 8/16-bit integers and Float32,
    float64 for 32/64-bit integers and Float64 (float32 rounds 2**62 + k to one constant)."""
    dtype = numpy_dtype(data_type)
    return np.dtype(np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64)


# ---------------------------------------------------------------- checked GDAL calls

class _ErrorLog:
    """Collects GDAL failures raised inside a block (handlers are per thread in GDAL)."""

    def __init__(self):
        self.messages: list[str] = []

    def __call__(self, err_class, err_no, message):
        if err_class >= gdal.CE_Failure:
            self.messages.append(str(message).strip())

    def __enter__(self):
        gdal.PushErrorHandler(self)
        return self

    def __exit__(self, *exc):
        gdal.PopErrorHandler()
        return False


def _call(what: str, fn, *args, error=RasterError, code: bool = False, **kwargs):
    """Run a GDAL call; raise ``error("what: reason")`` on an exception, a collected failure or a failed return.

    A failed return is ``None`` (objects, arrays) or, with ``code=True``, a non-zero CPLErr.
    """
    with _ErrorLog() as log:
        try:
            result = fn(*args, **kwargs)
        except RuntimeError as exc:
            raise error(f"{what}: {exc}") from None
    failed = (result not in (None, 0)) if code else result is None
    if log.messages or failed:
        # Drop the bound GDAL method before raising: the traceback would keep its band, and so the
        # dataset, alive past the caller's clean-up, and GDAL would report the failed close on
        # stderr at exit, after the one-line error.
        fn = args = kwargs = result = None  # noqa: F841
        raise error(f"{what}: {_reason(log.messages or [gdal.GetLastErrorMsg() or 'GDAL gave no reason'])}")
    return result


def _reason(messages: list[str]) -> str:
    """GDAL repeats itself (one line per failed tile): keep the first few distinct lines."""
    distinct = list(dict.fromkeys(m for m in messages if m))
    text = "; ".join(distinct[:2]) + (f" (and {len(distinct) - 2} more GDAL messages)" if len(distinct) > 2 else "")
    if any(k in text.lower() for k in ("no space", "too large", "write error", "i/o error", "io error")):
        text += " — the disk may be full or a file-size limit reached"
    return text


# ---------------------------------------------------------------- input

def vrt_loop(path: str) -> list[str] | None:
    """The VRTs by which VRT file ``path`` comes back to one it is already reading (``[a, b, a]``), or None.
    GDAL meets such a loop only when it reads pixels, and then says "Recursion detected" or hints at its
    dataset pool size; this reads the XML only (``SourceFilename`` of every source, VRTs followed)."""

    def sources(vrt: str) -> list[str]:
        try:
            with open(vrt, "rb") as f:
                if os.path.getsize(vrt) > 2**26 or not f.read(256).lstrip().startswith(b"<VRTDataset"):
                    return []
                f.seek(0)
                elements = xml_elements(f.read(), "SourceFilename")
        except (OSError, ValueError):
            return []
        found = []
        for attrs, text in elements:
            name = text.strip()
            if not name or name.startswith("/vsi") or "://" in name:
                continue
            found.append(os.path.realpath(os.path.join(os.path.dirname(vrt), name) if attrs.get("relativeToVRT") == "1"
                                          else name))
        return found

    def walk(chain: list[str]) -> list[str] | None:
        for src in sources(chain[-1]):
            if src in chain:
                return chain[chain.index(src):] + [src]
            if len(chain) < 32 and (loop := walk(chain + [src])):
                return loop
        return None

    return walk([os.path.realpath(path)])


def open_raster(path: str | os.PathLike) -> gdal.Dataset:
    """Open ``path`` read-only as a raster with at least one band, or raise a clear error."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise FileNotFoundError(f"input raster {path} does not exist")
    check_regular(path, "input raster", folders=True)  # a FIFO or a device would block GDAL forever
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise PermissionError(f"input raster {path} is not readable (permission denied)")
    if os.path.isfile(path) and path.lower().endswith(".vrt") and (loop := vrt_loop(path)):
        via = "" if len(loop) == 2 else " through " + " -> ".join(os.path.basename(p) for p in loop)
        raise RasterError(f"VRT {loop[0] if len(loop) == 2 else path} refers to itself{via}: it has no pixels to read")
    with _ErrorLog() as log:
        try:
            ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        except RuntimeError as exc:
            ds, log.messages = None, [str(exc)]
    if ds is None:
        reason = "; ".join(log.messages) or "GDAL does not recognise it as a raster"
        raise RasterError(f"{path} is not a raster GDAL can read ({reason})")
    if ds.RasterCount == 0:
        raise RasterError(f"{path} has no raster bands (is it a container of subdatasets?)")
    return ds


# The most pixels (width x height) any command reads: 2**36 is 262144 pixels a side, over 500 Sentinel-2
# tiles; a bigger raster is almost surely a VRT declaring a size no data fills, and would run for days.
MAX_PIXELS = 2**36


def check_size(width: int, height: int, path: str) -> None:
    """Refuse, before any work, a raster larger than :data:`MAX_PIXELS` (SR and evaluation alike)."""
    if width * height > MAX_PIXELS:
        raise RasterError(f"{path} is {width}x{height} pixels ({width * height:.3g}), more than lcmsr works on "
                          f"({MAX_PIXELS:.3g}): cut it into pieces first (gdal_translate -srcwin)")


def select_bands(ds: gdal.Dataset, bands, path: str) -> list[int]:
    """Validate a 1-based band list, or choose all bands except an alpha band when ``bands`` is None."""
    count = ds.RasterCount
    if bands is None or len(bands) == 0:
        chosen = [b for b in range(1, count + 1)
                  if ds.GetRasterBand(b).GetColorInterpretation() != gdal.GCI_AlphaBand]
        chosen = chosen or list(range(1, count + 1))
    else:
        chosen = []
        for b in bands:
            if isinstance(b, bool) or int(b) != b:
                raise RasterError(f"band {b!r} is not a band number (1-based integers)")
            b = int(b)
            if not 1 <= b <= count:
                raise RasterError(f"band {b} does not exist: {path} has {count} band(s), numbered 1 to {count}")
            chosen.append(b)
    for b in chosen:
        dt = ds.GetRasterBand(b).DataType
        if gdal.DataTypeIsComplex(dt):
            raise RasterError(f"band {b} of {path} has the complex data type {gdal.GetDataTypeName(dt)}, "
                              f"which cannot be super-resolved; convert it to a real type first")
        if dt not in _NUMPY_TYPES:
            raise RasterError(f"band {b} of {path} has the unsupported data type {gdal.GetDataTypeName(dt)}")
    return chosen


def band_subset(src: str, dst: str, bands: list[int]) -> str:
    """A VRT at ``dst`` holding ``src``'s 1-based ``bands`` in that order (no pixel is copied)."""
    # The returned dataset is not kept: dropping it closes it, which writes the VRT.
    _call(f"selecting bands {list(bands)} of {src}", gdal.Translate, os.fspath(dst), os.fspath(src),
          format="VRT", bandList=[int(b) for b in bands])
    return os.fspath(dst)


def check_band_count(bands: list[int], expected: int, path: str, total: int, terms: Terms = CLI_TERMS) -> None:
    """The model's band count must equal the number of selected bands; say how to fix it (in ``terms``)."""
    if len(bands) == expected:
        return
    listed = ",".join(map(str, bands))
    example = ",".join(str(b) for b in range(1, min(expected, total) + 1))
    hint = (f"choose {expected} band(s) with {terms['bands']}, e.g. {terms.set('bands', example)}"
            if total >= expected else
            f"the raster has only {total} band(s); repeat one to make {expected}, "
            f"e.g. {terms.set('bands', ','.join(['1'] * expected))}, or use a model trained for {total} band(s)")
    raise RasterError(f"the model expects {expected} band(s) but {len(bands)} band(s) of {path} are selected "
                      f"({listed}; the raster has {total}): {hint}")


@dataclass
class SourceInfo:
    """What the output copies from the input, for the selected bands."""
    path: str
    width: int
    height: int
    band_count: int
    bands: list[int]
    data_type: int                       # GDAL type able to hold every selected band
    geotransform: tuple | None
    projection: str
    gcps: list
    gcp_projection: str
    metadata: dict
    band_descriptions: list[str]
    color_interp: list[int]
    nodata: list[float | None]
    offsets: list[float | None]
    scales: list[float | None]
    unit_types: list[str]
    band_metadata: list[dict]
    mask_flags: list[int]
    rpc: dict = field(default_factory=dict)   # the RPC metadata domain (RPC-only georeferencing)

    @property
    def has_crs(self) -> bool:
        return bool(self.projection or self.gcp_projection)

    @property
    def may_have_invalid(self) -> list[bool]:
        """Per band: can a pixel be invalid (nodata value, mask or alpha band, or NaN in a float band)?"""
        return [f != gdal.GMF_ALL_VALID or is_float_type(self.data_type) for f in self.mask_flags]


def describe(ds: gdal.Dataset, path: str, bands: list[int]) -> SourceInfo:
    rb = [ds.GetRasterBand(b) for b in bands]
    data_type = rb[0].DataType
    for band in rb[1:]:
        data_type = gdal.DataTypeUnion(data_type, band.DataType)
    gt = ds.GetGeoTransform(can_return_null=True)
    return SourceInfo(
        path=path, width=ds.RasterXSize, height=ds.RasterYSize, band_count=ds.RasterCount, bands=list(bands),
        data_type=data_type, geotransform=tuple(gt) if gt else None,
        projection=ds.GetProjection() or "", gcps=list(ds.GetGCPs() or []),
        gcp_projection=ds.GetGCPProjection() or "",
        metadata=dict(ds.GetMetadata_Dict() or {}),
        band_descriptions=[b.GetDescription() or "" for b in rb],
        color_interp=[b.GetColorInterpretation() for b in rb],
        nodata=[b.GetNoDataValue() for b in rb],
        offsets=[b.GetOffset() for b in rb], scales=[b.GetScale() for b in rb],
        unit_types=[b.GetUnitType() or "" for b in rb],
        band_metadata=[dict(b.GetMetadata_Dict() or {}) for b in rb],
        mask_flags=[b.GetMaskFlags() for b in rb], rpc=dict(ds.GetMetadata_Dict("RPC") or {}),
    )


def source_warnings(info: SourceInfo) -> list[str]:
    """Things the user should know before a long job (not errors)."""
    out = []
    if not info.has_crs:
        out.append(f"{info.path} has no coordinate reference system: the output will have none either")
    for b, ci in zip(info.bands, info.color_interp):
        if ci == gdal.GCI_PaletteIndex:
            out.append(f"band {b} of {info.path} holds palette indices, which are not continuous values; "
                       f"expand the palette to RGB first (gdal_translate -expand rgb)")
    return out


@dataclass
class Layout:
    """What a raster holds, before any band is chosen (training sources, evaluation)."""
    width: int
    height: int
    count: int
    data_type: str                       # GDAL name of band 1's type, e.g. "Byte", "UInt16"
    band_names: list[str]                # description, else colour interpretation, else "band N"
    default_bands: list[int]             # 1-based, every band except alpha bands (may be empty)


def layout(path: str | os.PathLike) -> Layout:
    path = os.fspath(path)
    ds = open_raster(path)
    names, default = [], []
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        interp = band.GetColorInterpretation()
        desc = band.GetDescription() or gdal.GetColorInterpretationName(interp)
        names.append(desc if desc and desc != "Undefined" else f"band {i}")
        if interp != gdal.GCI_AlphaBand:
            default.append(i)
    return Layout(ds.RasterXSize, ds.RasterYSize, ds.RasterCount,
                  gdal.GetDataTypeName(ds.GetRasterBand(1).DataType), names, default)


class WindowReader:
    """THE window reader of lcmsr: inference, degrading, training patches and evaluation all read
    pixels through it.  Windows of the selected bands come as float32 with a per-band validity mask;
    ``exact=True`` (inference) gives float64 where float32 would not keep the values (32/64-bit integers,
    Float64: see :func:`exact_work_type`).  Float64 values beyond float32's range come as its largest
    finite value, never as inf.

    Opens its own read-only handle, so each thread that reads owns one.  The validity rule is
    :mod:`lcmsr.raster.validity`'s: a value is invalid where it equals its band's nodata value,
    where the band's mask or alpha band is 0 (bands without a nodata value), or where it is not finite.
    """

    def __init__(self, path: str | os.PathLike, bands: list[int] | None, exact: bool = False):
        """``bands``: 1-based, checked; None = every band except alpha bands."""
        self.path = os.fspath(path)
        self._ds = open_raster(self.path)
        self.width, self.height = self._ds.RasterXSize, self._ds.RasterYSize
        self.bands = select_bands(self._ds, bands, self.path)
        gt = self._ds.GetGeoTransform(can_return_null=True)
        self.geotransform = tuple(gt) if gt else None          # None: not georeferenced
        self.projection = self._ds.GetProjection() or ""
        rb = [self._ds.GetRasterBand(b) for b in self.bands]
        self.nodata = [b.GetNoDataValue() for b in rb]
        self._flags = [b.GetMaskFlags() for b in rb]
        self.dtypes = [numpy_dtype(b.DataType) for b in rb]
        self.work = max((exact_work_type(b.DataType) if exact else np.dtype(np.float32) for b in rb),
                        key=lambda d: d.itemsize)
        self._mask_bands = [b.GetMaskBand() if f & (gdal.GMF_PER_DATASET | gdal.GMF_ALPHA)
                            and not f & gdal.GMF_NODATA else None for b, f in zip(rb, self._flags)]

    def read(self, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (values [C, h, w] float32 or with ``exact`` float64, valid bool [C, h, w])."""
        where = f"reading window x={x} y={y} {w}x{h} of {self.path}"
        raw = _call(where, self._ds.ReadAsArray, x, y, w, h, band_list=self.bands)
        raw = raw.reshape(len(self.bands), h, w)
        values = np.empty(raw.shape, self.work)
        valid = np.ones(raw.shape, bool)
        shared_masks: dict[int, np.ndarray] = {}
        big = float(np.finfo(self.work).max)
        for i, b in enumerate(self.bands):
            band = raw[i].astype(self.dtypes[i], copy=False)
            # A Float64 1e300 would be inf in float32, which no later step can tell from a broken value.
            values[i] = np.clip(band, -big, big) if band.dtype.itemsize > self.work.itemsize and \
                band.dtype.kind == "f" else band
            valid[i] = valid_values(band, self.nodata[i])
            if self.nodata[i] is None and self._mask_bands[i] is not None:
                key = b if not self._flags[i] & gdal.GMF_PER_DATASET else 0
                if key not in shared_masks:
                    mask = _call(f"reading the mask of band {b} of {self.path}", self._mask_bands[i].ReadAsArray,
                                 x, y, w, h)
                    shared_masks[key] = mask != 0
                valid[i] &= shared_masks[key]
        return values, valid

    def close(self) -> None:
        self._ds = None


def _crs_name(wkt: str) -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    with _ErrorLog():
        try:
            srs.ImportFromWkt(wkt)
        except RuntimeError:
            return "a CRS GDAL cannot read"
    auth = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    name = srs.GetName() or "unnamed"
    return f"{auth[0]}:{auth[1]} ({name})" if all(auth) else name


_PROJ_PROBLEM: list[str] = []


def proj_problem() -> str:
    """Why PROJ cannot work here ("" when it can): its database proj.db not found (PROJ_DATA / PROJ_LIB
    pointing elsewhere, an incomplete install).  Without it no CRS can be written or compared, which GDAL
    would only say once the output is written; checked once per process."""
    if not _PROJ_PROBLEM:
        from osgeo import osr

        srs = osr.SpatialReference()
        with _ErrorLog() as log:
            try:
                failed = srs.ImportFromEPSG(4326) != 0
            except RuntimeError as exc:
                failed, log.messages = True, log.messages + [str(exc)]
        text = _reason(log.messages) if log.messages else "GDAL gave no reason"
        _PROJ_PROBLEM.append(f"PROJ cannot read its database ({text}): set PROJ_DATA to the folder holding "
                             f"proj.db, or repair the GDAL/PROJ install" if failed else "")
    return _PROJ_PROBLEM[0]


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    """Whether two WKT CRSs are the same (axis order and names aside); raises :class:`RasterError` when
    PROJ cannot compare them (its database missing: a broken install, said in one line)."""
    from osgeo import osr

    if wkt_a == wkt_b:
        return True
    if problem := proj_problem():
        raise RasterError(f"the coordinate reference systems cannot be compared: {problem}")
    a, b = osr.SpatialReference(), osr.SpatialReference()
    with _ErrorLog() as log:
        try:
            a.ImportFromWkt(wkt_a)
            b.ImportFromWkt(wkt_b)
            same = bool(a.IsSame(b, ["IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES", "CRITERION=EQUIVALENT"]))
        except RuntimeError as exc:
            log.messages.append(str(exc))
            same = False
    if log.messages:
        raise RasterError(f"the coordinate reference systems cannot be compared: {_reason(log.messages)} "
                          f"(is PROJ's proj.db found? see PROJ_DATA)")
    return same


def grid_problem(fine, fine_name: str, coarse, coarse_name: str, ratio: int = 1, tolerance: float = 0.25) -> str:
    """Why rasters ``fine`` and ``coarse`` (readers with ``geotransform``, ``projection``, ``width``, ``height``;
    ``coarse``'s pixels ``ratio`` times larger) do not lie on one grid, or "" when they do or either is not
    georeferenced.  Same CRS (where both have one), and every corner of ``coarse`` within ``tolerance`` of
    ``fine``'s pixels of where ``fine``'s grid puts it: same place, same pixel size."""
    ga, gb = getattr(fine, "geotransform", None), getattr(coarse, "geotransform", None)
    if ga is None or gb is None:
        return ""
    pa, pb = getattr(fine, "projection", ""), getattr(coarse, "projection", "")
    if pa and pb and not same_crs(pa, pb):
        return (f"{coarse_name} is in {_crs_name(pb)} but {fine_name} in {_crs_name(pa)}: reproject one onto the "
                f"other's grid first (gdalwarp)")
    inverse = gdal.InvGeoTransform(ga)
    if inverse is None:
        return ""
    worst, corner = 0.0, None
    for u, v in ((0, 0), (coarse.width, 0), (0, coarse.height), (coarse.width, coarse.height)):
        x, y = gb[0] + u * gb[1] + v * gb[2], gb[3] + u * gb[4] + v * gb[5]
        px, py = inverse[0] + x * inverse[1] + y * inverse[2], inverse[3] + x * inverse[4] + y * inverse[5]
        off = math.hypot(px - u * ratio, py - v * ratio)
        if off > worst:
            worst, corner = off, (x, y)
    if worst <= tolerance:
        return ""
    # Do they overlap at all? Bounding boxes in the fine raster's pixels.
    xs, ys = [], []
    for u, v in ((0, 0), (coarse.width, coarse.height)):
        x, y = gb[0] + u * gb[1] + v * gb[2], gb[3] + u * gb[4] + v * gb[5]
        xs.append(inverse[0] + x * inverse[1] + y * inverse[2])
        ys.append(inverse[3] + x * inverse[4] + y * inverse[5])
    apart = (max(xs) <= 0 or min(xs) >= fine.width or max(ys) <= 0 or min(ys) >= fine.height)
    how = "do not overlap at all" if apart else f"are {worst:.3g} of {fine_name}'s pixels apart at a corner"
    return (f"{coarse_name} and {fine_name} do not cover the same ground on one grid: they {how} (corner "
            f"{corner[0]:.10g}, {corner[1]:.10g}); compare rasters of the same area, e.g. cut with gdal_translate "
            f"-projwin or gdalwarp -te")


# ---------------------------------------------------------------- output

def scale_geotransform(gt: tuple, factor: float) -> tuple:
    """Pixel size *and* rotation terms times ``factor``; the origin (top-left corner) is unchanged.

    SR uses ``factor = 1/scale`` (pixels ``scale`` times smaller), degrade ``factor = scale``.
    """
    return (gt[0], gt[1] * factor, gt[2] * factor, gt[3], gt[4] * factor, gt[5] * factor)


@dataclass
class OutputSpec:
    width: int
    height: int
    data_type: int
    geotransform: tuple | None = None
    projection: str = ""
    gcps: list = field(default_factory=list)
    gcp_projection: str = ""
    metadata: dict = field(default_factory=dict)
    band_descriptions: list[str] = field(default_factory=list)
    color_interp: list[int] = field(default_factory=list)
    nodata: list[float | None] = field(default_factory=list)
    offsets: list[float | None] = field(default_factory=list)
    scales: list[float | None] = field(default_factory=list)
    unit_types: list[str] = field(default_factory=list)
    band_metadata: list[dict] = field(default_factory=list)
    # Per band, what an invalid pixel becomes: the nodata value, NaN, or None (then the dataset mask says it).
    fill: list[float | None] = field(default_factory=list)
    mask: bool = False                   # write a per-dataset mask band (0 = invalid)
    # Per band (lo, hi) the output values are clamped to (None: no bound): the input band's value
    # range; every output is also clipped to its type's range (:func:`output_bounds`).
    value_ranges: list[tuple[float | None, float | None] | None] | None = None
    source: str = ""                     # the input, named when the output fails its sanity check
    rpc: dict = field(default_factory=dict)  # RPC metadata domain, for the output's pixel grid

    @property
    def bands(self) -> int:
        return len(self.fill)

    def estimated_bytes(self) -> int:
        return self.width * self.height * self.bands * numpy_dtype(self.data_type).itemsize


def derive_output(info: SourceInfo, width: int, height: int, pixel_factor: float, data_type: int) -> OutputSpec:
    """The output's georeferencing, metadata and nodata policy, derived from the input's."""
    out_is_float = is_float_type(data_type)
    fill, needs_mask = [], False
    for nodata, may_invalid in zip(info.nodata, info.may_have_invalid):
        if nodata is not None:
            fill.append(nodata)
        elif out_is_float:
            fill.append(float("nan"))
        else:
            fill.append(None)
            needs_mask |= may_invalid
    gcps = []
    for g in info.gcps:  # pixel/line positions move with the pixel grid
        gcps.append(gdal.GCP(g.GCPX, g.GCPY, g.GCPZ, g.GCPPixel / pixel_factor, g.GCPLine / pixel_factor,
                             g.Info, g.Id))
    return OutputSpec(
        width=width, height=height, data_type=data_type,
        geotransform=scale_geotransform(info.geotransform, pixel_factor) if info.geotransform else None,
        projection=info.projection, gcps=gcps, gcp_projection=info.gcp_projection,
        metadata=_inherited(info.metadata), band_descriptions=list(info.band_descriptions),
        color_interp=[ci if ci != gdal.GCI_PaletteIndex else gdal.GCI_GrayIndex for ci in info.color_interp],
        nodata=list(info.nodata), offsets=list(info.offsets), scales=list(info.scales),
        unit_types=list(info.unit_types), band_metadata=[_inherited(m) for m in info.band_metadata],
        fill=fill, mask=needs_mask, source=info.path, rpc=scale_rpc(info.rpc, 1.0 / pixel_factor))


def scale_rpc(rpc: dict, s: float) -> dict:
    """RPCs for a grid of pixels ``s`` times smaller.  RPC image coordinates put the upper-left pixel's
    centre at (0, 0), GDAL's at (0.5, 0.5): new + 0.5 = s (old + 0.5), so each offset becomes
    s * OFF + (s - 1) / 2 and each scale s * SCALE; the polynomials are unchanged."""
    if not rpc:
        return {}
    out = dict(rpc)
    try:
        for axis in ("LINE", "SAMP"):
            out[f"{axis}_OFF"] = repr(s * float(rpc[f"{axis}_OFF"]) + (s - 1) / 2)
            out[f"{axis}_SCALE"] = repr(s * float(rpc[f"{axis}_SCALE"]))
    except (KeyError, ValueError):
        return {}  # not RPCs GDAL could use either: not copied rather than copied wrong
    return out


# Metadata the output must not inherit: the input's band statistics (STATISTICS_MEAN ...) describe
# other pixels, and an earlier run's provenance (LCMSR_*) another job.  GDAL computes statistics of the
# output on request (gdalinfo -stats, QGIS); the pipeline writes this job's provenance.
PROVENANCE_PREFIX = "LCMSR_"
_NOT_INHERITED = ("STATISTICS_", PROVENANCE_PREFIX)


def _inherited(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if not k.upper().startswith(_NOT_INHERITED)}


def output_bounds(spec: OutputSpec) -> list[tuple[float, float]]:
    """Per band, what its output values are clamped to: the band's value range within the type's."""
    lo_t, hi_t = type_range(spec.data_type)
    out = []
    for i in range(spec.bands):
        r = (spec.value_ranges or [None] * spec.bands)[i] or (None, None)
        lo = lo_t if r[0] is None else min(max(float(r[0]), lo_t), hi_t)
        hi = hi_t if r[1] is None else max(min(float(r[1]), hi_t), lo_t)
        if spec.data_type == gdal.GDT_Float32:  # rounded inwards: float32(-0.1197345392) is below it
            lo32, hi32 = np.float32(lo), np.float32(hi)
            lo = float(lo32 if lo32 >= lo else np.nextafter(lo32, np.float32(np.inf)))
            hi = float(hi32 if hi32 <= hi else np.nextafter(hi32, np.float32(-np.inf)))
        out.append((lo, max(lo, hi)))
    return out


def check_output_type(spec: OutputSpec, bands: list[int]) -> None:
    """Refuse, before any work, an output type that cannot hold the input's values: a range outside
    the type's (Float64 1e300 as Float32), or one Float32 rounds to a few constants (Int64 near 2**62)."""
    name = os.path.basename(spec.source) or "the input"
    type_name = gdal.GetDataTypeName(spec.data_type)
    t_lo, t_hi = type_range(spec.data_type)
    for b, r in zip(bands, spec.value_ranges or []):
        if r is None or r[0] is None or r[1] is None:
            continue
        lo, hi = r
        coarse = (spec.data_type == gdal.GDT_Float32 and hi > lo
                  and float(np.spacing(np.float32(max(abs(lo), abs(hi))))) * 256 > hi - lo)
        if hi < t_lo or lo > t_hi or coarse:
            raise RasterError(f"band {b} of {name} holds values {lo:.17g} .. {hi:.17g}, which a {type_name} output "
                              f"cannot {'tell apart' if coarse else 'hold'}: write it as the input's data type")


class OutputNotFinite(RasterError):
    """The model gave NaN or infinite values for valid pixels: nothing of the output is kept."""


def check_finite(values: np.ndarray, valid: np.ndarray, spec: OutputSpec) -> None:
    """THE output sanity check, run on every block before it is written: no NaN/inf in a valid pixel.

    Extreme but valid inputs cannot cause one (inference normalises in float64 and bounds model
    space); a model that still makes one is broken for this input, and a partly written raster
    would be a silent lie, so the job stops and the output is discarded."""
    for i in range(values.shape[0]):
        bad = valid[i] & ~np.isfinite(values[i])
        if bad.any():
            raise OutputNotFinite(
                f"{os.path.basename(spec.source) or 'the input'}: the model gave {int(bad.sum())} NaN or infinite "
                f"value(s) in output band {i + 1} (the model file is damaged or cannot handle this input); "
                f"nothing was written")



def write_blocks(src: str, bands, dst: str, spec: OutputSpec, progress, grid: tuple[int, int], block: int,
                 compute, fmt: OutputFormat | None = None) -> None:
    """Write ``dst`` (atomically) block by block over a ``grid`` (width, height) cut into ``block``-pixel
    squares: ``compute(reader, x, y, bw, bh) -> (out_x, out_y, values, valid)`` reads what it needs from
    ``src`` and gives that block of the output.  Cancel is checked and progress reported per block."""
    w, h = grid
    blocks = [(x, y) for y in range(0, h, block) for x in range(0, w, block)]
    reader = WindowReader(src, bands)
    try:
        with AtomicRaster(dst, spec, progress, fmt=fmt) as out:
            for i, (x, y) in enumerate(blocks):
                progress.check()
                ox, oy, values, valid = compute(reader, x, y, min(block, w - x), min(block, h - y))
                data, mask = finish_block(values, valid, spec)
                out.write(ox, oy, data, mask)
                progress.report((i + 1) / len(blocks), f"block {i + 1}/{len(blocks)}")
    finally:
        reader.close()


def finish_block(values: np.ndarray, valid: np.ndarray, spec: OutputSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Float values [C, h, w] + validity -> (output-typed data, dataset mask [h, w] uint8 or None).

    Refuses non-finite valid values (:func:`check_finite`); ringing is clamped to the band's value
    range and the type's range (:func:`output_bounds`), and a valid pixel never comes out equal to
    the nodata value: it is moved one step towards the valid side instead."""
    check_finite(values, valid, spec)
    values = values.astype(np.float64)   # clipped before the cast: 5e38 as float32 would overflow
    for i, (lo, hi) in enumerate(output_bounds(spec)):
        np.clip(values[i], lo, hi, out=values[i])
    data = to_data_type(values, spec.data_type)
    if data.dtype.kind in "iu":  # the exact integer ends (a float64 bound may round past them)
        for i, r in enumerate(spec.value_ranges or []):
            if r is not None and isinstance(r[0], int) and isinstance(r[1], int):
                np.clip(data[i], data.dtype.type(max(r[0], np.iinfo(data.dtype).min)),
                        data.dtype.type(min(r[1], np.iinfo(data.dtype).max)), out=data[i])
    for i, fill in enumerate(spec.fill):
        if fill is None or (isinstance(fill, float) and math.isnan(fill)):
            if fill is not None:
                data[i][~valid[i]] = fill
            continue
        clash = valid[i] & (data[i] == data.dtype.type(fill))
        if clash.any():
            data[i][clash] = _next_to(fill, data.dtype)
        data[i][~valid[i]] = fill
    mask = None
    if spec.mask:
        masked = [i for i, f in enumerate(spec.fill) if f is None]
        mask = np.where(np.all(valid[masked], axis=0), 255, 0).astype(np.uint8)
    return data, mask


def _next_to(nodata: float, dtype: np.dtype):
    """The value next to ``nodata`` in ``dtype``, on the side where the type has room (up first)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        n = int(nodata)
        return dtype.type(n + 1 if n < info.max else n - 1)
    v = dtype.type(nodata)
    up = np.nextafter(v, dtype.type(np.inf))
    return up if np.isfinite(up) else np.nextafter(v, dtype.type(-np.inf))


def _gtiff_options(data_type: int) -> list[str]:
    predictor = "3" if is_float_type(data_type) else "2"
    return ["TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE",
            f"PREDICTOR={predictor}", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]


# PREDICTOR=YES lets the COG driver pick horizontal (integers) or floating-point prediction.
_COG_OPTIONS = [f"BLOCKSIZE={BLOCK}", "COMPRESS=DEFLATE", "PREDICTOR=YES", "BIGTIFF=IF_SAFER",
                "NUM_THREADS=ALL_CPUS", "OVERVIEWS=AUTO"]


# ---------------------------------------------------------------- output formats

# Writable drivers that cannot be the output: VRT, MRF, PDS4 and ISIS3 name their data files inside a
# header or label (VRT: the temporary GeoTIFF, removed after the rename), KMLSUPEROVERLAY writes a
# folder of tiles, Rasterlite a database of tables, MEM no file.
_NOT_OUTPUTS = {"VRT", "MEM", "MRF", "KMLSUPEROVERLAY", "PDS4", "ISIS3", "Rasterlite"}
OVERVIEW_RESAMPLING = "AVERAGE"


def output_formats() -> dict[str, str]:
    """``{extension: GDAL driver}`` of every raster driver here that writes files (Create or CreateCopy) and
    writes nothing but the file named and its side-cars (:func:`_writes_companions`); where drivers share
    an extension the first registered wins (GTiff for .tif: COG is ``cog=True``)."""
    formats: dict[str, str] = {}
    for i in range(gdal.GetDriverCount()):
        driver = gdal.GetDriver(i)
        meta = driver.GetMetadata() or {}
        if (meta.get("DCAP_RASTER") != "YES" or driver.ShortName in _NOT_OUTPUTS
                or "YES" not in (meta.get("DCAP_CREATE"), meta.get("DCAP_CREATECOPY"))):
            continue
        for ext in (meta.get("DMD_EXTENSIONS") or meta.get("DMD_EXTENSION") or "").split():
            ext = ext.lower().lstrip(".")
            if ext not in formats and not _writes_companions(driver.ShortName, ext):
                formats[ext] = driver.ShortName
    return formats


_COMPANIONS: dict[tuple[str, str], bool] = {}


def _writes_companions(driver: str, ext: str) -> bool:
    """Whether ``driver`` writes other files than the one named (and its side-cars) for a one-band raster
    of the first type it takes; a driver that refuses one band is not judged here (the probe of the real
    output is).  Probed once per process."""
    key = (driver, ext)
    if key not in _COMPANIONS:
        takes = _creation_types(driver) or ["Byte"]
        trial = gdal.GetDataTypeByName(takes[0])
        got = _probe(driver, f"probe.{ext}", 1, trial, [])
        own = {f"probe.{ext}"} | {f"probe.{ext}{side}" for side in RASTER_SIDE_CARS}
        _COMPANIONS[key] = got.files is not None and any(f.rstrip("/") not in own for f in got.files)
    return _COMPANIONS[key]


@dataclass
class OutputFormat:
    """How the output file is written: its driver (from the extension), the user's creation options
    (over the defaults below), a Cloud Optimized GeoTIFF, and overviews."""
    driver: str = "GTiff"
    creation_options: list[str] = field(default_factory=list)
    cog: bool = False
    overviews: bool = False
    keeps_nodata: bool = True   # the probe gave back the spec's nodata (the output check compares it)

    @property
    def streamed(self) -> bool:
        """Written tile by tile in place: a plain GeoTIFF.  Other outputs are converted from a temporary
        GeoTIFF (the COG driver and drivers such as PNG or JPEG only copy a finished raster)."""
        return self.driver == "GTiff" and not self.cog

    def options(self, data_type: int) -> list[str]:
        """The creation options of the final file: the user's over this project's defaults."""
        if self.cog:
            return _merge(_COG_OPTIONS, self.creation_options)
        if self.driver == "GTiff":
            return _merge(_gtiff_options(data_type), self.creation_options)
        if self.driver == "GPKG" and data_type == gdal.GDT_Byte:
            # GPKG's default (AUTO) stores opaque tiles as JPEG: lossy.  PNG keeps the values.
            return _merge(["TILE_FORMAT=PNG"], self.creation_options)
        return list(self.creation_options)


def _key(option: str) -> str:
    return option.split("=", 1)[0].strip().upper()


def _merge(defaults: list[str], user: list[str]) -> list[str]:
    keys = {_key(o) for o in user}
    if "COMPRESS" in keys:  # a predictor belongs to the default compression only
        keys.add("PREDICTOR")
    return [o for o in defaults if _key(o) not in keys] + list(user)


def output_format(dst: str, data_type: int | None, cog: bool = False, overviews: bool = False,
                  creation_options=(), bands: int | None = None, spec: OutputSpec | None = None,
                  progress: Progress | None = None) -> OutputFormat:
    """The output's format from ``dst``'s extension, checked against ``data_type`` and ``bands`` (None: not
    yet known) and the options; :class:`RasterError` in one line naming the problem (and the extensions
    that would do).

    Before any work the driver writes a small raster under ``dst``'s own name in memory (:func:`_probe`):
    a format whose driver writes any file besides ``dst`` and its side-cars (:data:`RASTER_SIDE_CARS`) is
    refused (ERS, EHdr, MFF, RST ... write a header or the pixels under a name derived from ``dst``'s, which
    could be an input or any other file).  With ``spec`` (the output's bands, type, georeferencing and
    nodata) the probe writes exactly those, and the spec's nodata is settled for the format
    (:func:`_settle_nodata`): kept per band, carried as NaN where a float output cannot keep them (said on
    ``progress``), or refused in one line."""
    if spec is not None:
        data_type, bands = spec.data_type, spec.bands
    name = os.path.basename(os.fspath(dst))
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    formats = output_formats()
    companions = sorted(d for (d, e), writes in _COMPANIONS.items() if e == ext and writes)
    if ext and ext not in formats and companions:
        others = ", ".join(f".{e}" for e in ("tif", "img", "gpkg") if e in formats)
        raise RasterError(f"the output {name}: the {companions[0]} format (.{ext}) writes other files beside the "
                          f"output, named after it, which could replace an input or any file of those names: "
                          f"use {others}")
    if ext not in formats:
        raise RasterError(f"the output {name} has the extension '.{ext}', which no GDAL raster driver here writes "
                          f"(or which cannot be written atomically): use one of "
                          f"{', '.join('.' + e for e in sorted(formats))}" if ext else
                          f"the output {name} has no extension: add one that names its format, e.g. .tif (GeoTIFF), "
                          f".img (Erdas Imagine), .gpkg (GeoPackage)")
    driver = formats[ext]
    if cog and driver != "GTiff":
        raise RasterError(f"a Cloud Optimized GeoTIFF is a .tif file: the output {name} names the {driver} format")
    takes = _creation_types(driver)
    type_name = gdal.GetDataTypeName(data_type) if data_type is not None else None
    if type_name and takes is not None and type_name not in takes:
        others = [f".{e}" for e, d in sorted(formats.items()) if d in ("GTiff", "HFA", "GPKG", "PNG")
                  and type_name in (_creation_types(d) or [type_name])]
        ways = ([f"use {', '.join(others)}"] if others else []) + (["use the Float32 output type"]
                                                                    if "Float32" in takes else [])
        raise RasterError(f"the {driver} format (.{ext}) holds {'/'.join(takes)} values, but the output is "
                          f"{type_name}" + (f": {', or '.join(ways)}" if ways else ""))
    options = [str(o).strip() for o in creation_options if str(o).strip()]
    known = _creation_option_names("COG" if cog else driver)
    for option in options:
        if "=" not in option:
            raise RasterError(f"creation option '{option}' is not of the form NAME=VALUE (e.g. COMPRESS=ZSTD)")
        if known and _key(option) not in known:
            raise RasterError(f"creation option {_key(option)} is not one the {'COG' if cog else driver} driver "
                              f"knows: {', '.join(sorted(known))}")
    fmt = OutputFormat(driver, options, cog, overviews)
    writer = "COG" if cog else driver
    # Never the refused format itself (GeoPackage holds non-Byte data in one band only).
    others = ", ".join(f".{e}" for e in ("tif", "img", "gpkg") if e in formats and formats[e] != writer)
    if not (bands and type_name):
        # Band count and type not yet known: the file list of a one-band raster of a type the driver takes
        # (a driver that needs more bands is probed again once they are known).
        trial = gdal.GetDataTypeByName((takes or ["Byte"])[0]) if data_type is None else data_type
        got = _probe(writer, name, 1, trial, fmt.options(trial))
        if got.files is not None:
            _check_companions(got, name, writer, ext, others)
        return fmt
    if spec is not None:
        if (spec.projection or spec.gcp_projection) and (problem := proj_problem()):
            raise RasterError(f"the output {name} cannot get the input's coordinate reference system: {problem}")
        _settle_type_nodata(spec, progress)
    got = _probe(writer, name, bands, data_type, fmt.options(data_type), spec)
    if spec is not None and got.bands is None and _distinct(spec.nodata) > 1:
        # GeoPackage refuses bands with different nodata values outright: is it only that?
        first = next(v for v in spec.nodata if v is not None)
        alt = _probe(writer, name, bands, data_type, fmt.options(data_type),
                     dataclasses.replace(spec, nodata=[first] * len(spec.nodata)))
        got = alt if alt.bands is not None else got
    if got.bands is None or got.bands != bands or not _widens(data_type, got.data_type):
        why = (f"it gives back {got.bands} band(s) of {gdal.GetDataTypeName(got.data_type)}"
               if got.bands is not None else got.error or "GDAL refuses it")
        raise RasterError(f"the {writer} format (.{ext}) cannot hold a {bands}-band "
                          f"{gdal.GetDataTypeName(data_type)} output ({why}): use {others}, or choose fewer bands")
    _check_companions(got, name, writer, ext, others)
    if spec is not None:
        fmt.keeps_nodata = _settle_nodata(spec, got, writer, ext, name, progress,
                                          lambda: _probe(writer, name, bands, data_type, fmt.options(data_type),
                                                         spec))
        if not fmt.keeps_nodata and progress is not None and any(v is not None for v in spec.nodata):
            progress.warn(f"the {writer} format (.{ext}) keeps no nodata value: the nodata pixels of {name} are "
                          f"not marked as such (use .tif or .img to keep them)")
    return fmt


@dataclass
class _Probed:
    """What a driver gave back for a small raster written in memory under the output's own name."""
    bands: int | None = None          # None: the driver refused it
    data_type: int | None = None
    nodata: list = field(default_factory=list)
    files: list[str] | None = None    # every file it wrote, relative to its folder
    error: str = ""


def _probe(driver: str, name: str, bands: int, data_type: int, options: list[str],
           spec: OutputSpec | None = None) -> _Probed:
    """:func:`_probe_in` memory (``/vsimem/``), or, for a driver that cannot write there (netCDF, FITS),
    in a scratch folder of the system's temporary folder (swept like any temporary if the process dies)."""
    got = _probe_in(None, driver, name, bands, data_type, options, spec)
    if got.bands is None:
        import tempfile

        scratch = atomic.temp_folder(tempfile.gettempdir(), "lcmsr-probe")
        try:
            on_disk = _probe_in(scratch, driver, name, bands, data_type, options, spec)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if on_disk.bands is not None or not got.error:
            got = on_disk
    return got


def _probe_in(scratch: str | None, driver: str, name: str, bands: int, data_type: int, options: list[str],
              spec: OutputSpec | None = None) -> _Probed:
    """Write a 16x16 raster of ``bands`` bands of ``data_type`` (with ``spec``'s georeferencing and nodata) as
    ``name`` in a fresh in-memory folder with ``driver`` and ``options``, close it, reopen it: what it holds
    and which files the driver wrote.  Drivers say which types they write but not how many bands (XYZ and
    ASCII grids hold one, PNG and JPEG at most 4), nor which files they write beside the one named (ERS its
    pixels under the name minus .ers, EHdr a .hdr and a .prj), nor whether nodata survives per band."""
    folder = f"/vsimem/lcmsr-probe-{secrets.token_hex(6)}" if scratch is None else os.path.join(scratch, "p")
    if scratch is not None:
        os.mkdir(folder)
    path = f"{folder}/{name}"
    got = _Probed()
    src = gdal.GetDriverByName("MEM").Create("", 16, 16, bands, data_type)
    with _ErrorLog() as log:
        try:
            if spec is None:   # only the file list is asked for: a grid, as most rasters have one
                src.SetGeoTransform((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
            else:
                if spec.geotransform is not None:
                    src.SetGeoTransform(spec.geotransform)
                if spec.projection:
                    src.SetProjection(spec.projection)
                for i, value in enumerate(spec.nodata[:bands]):
                    if value is not None:
                        src.GetRasterBand(i + 1).SetNoDataValue(value)
            log.messages.clear()   # the source's own complaints (a CRS PROJ cannot read) show in the copy
            if driver == "GTiff":   # as RasterWriter writes it: Create, then the band settings (a copy would
                out = gdal.GetDriverByName(driver).Create(path, 16, 16, bands, data_type, options=options)
                if out is not None:   # keep per-band nodata in a PAM side-car, which the writer does not)
                    out.SetGeoTransform(src.GetGeoTransform())
                    if src.GetProjection():
                        out.SetProjection(src.GetProjection())
                    for i in range(bands):
                        value = src.GetRasterBand(i + 1).GetNoDataValue()
                        if value is not None:
                            out.GetRasterBand(i + 1).SetNoDataValue(value)
            else:
                out = gdal.GetDriverByName(driver).CreateCopy(path, src, options=options)
            failed = out is None
            if not failed:
                out.FlushCache()   # an error of the driver's own here rather than in the close below
            out = None  # noqa: F841  (closing writes the file and its side-cars)
            if not failed and not log.messages:
                ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
                if ds is not None and ds.RasterCount > 0:
                    got.bands, got.data_type = ds.RasterCount, ds.GetRasterBand(1).DataType
                    got.nodata = [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)]
                ds = None
            got.files = sorted(gdal.ReadDirRecursive(folder) or [])
        except RuntimeError as exc:
            log.messages.append(str(exc))
    got.error = "; ".join(dict.fromkeys(" ".join(m.split()) for m in log.messages if m.strip()))
    if got.error:
        got.bands = None
    src = None
    if scratch is None:
        with _ErrorLog():
            try:   # a folder the driver never wrote into does not exist: nothing to remove
                gdal.RmdirRecursive(folder)
            except RuntimeError:
                pass
    return got


def _check_companions(got: _Probed, name: str, driver: str, ext: str, others: str) -> None:
    """Refuse a format whose driver writes files other than ``name`` and its side-cars: the atomic writer
    would move them over whatever has their names (an input, another file), which no check could name."""
    own = {name} | {name + side for side in RASTER_SIDE_CARS}
    extra = [f for f in got.files or [] if f.rstrip("/") not in own]
    if extra:
        listed = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        raise RasterError(f"the {driver} format (.{ext}) writes other files beside the output {name} ({listed}), "
                          f"which could replace an input or any file of those names: use {others}")


def _distinct(nodata: list) -> int:
    """How many different nodata values (None, and NaN, counted as one value each) ``nodata`` holds."""
    return len({("nan" if v is not None and math.isnan(v) else v) for v in nodata})


def _same_nodata(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or a == b


def _nodata_text(value) -> str:
    return "none" if value is None else f"{value:.17g}"


def _settle_type_nodata(spec: OutputSpec, progress: Progress | None) -> None:
    """A nodata value beyond a float output type's range (Float64's -1.797e308 as Float32) would be written
    as -inf, another value than the one declared: such bands' nodata is NaN in the output (said).  A value
    inside the range is kept (GDAL compares nodata in the band's own type, as the writer fills it); an
    integer output is the input's own type, whose nodata, whatever it is, stays as it was."""
    dtype = numpy_dtype(spec.data_type)
    if dtype.kind != "f":
        return
    type_name = gdal.GetDataTypeName(spec.data_type)
    lo, hi = type_range(spec.data_type)
    changed = []
    for i, value in enumerate(spec.nodata):
        if value is None or math.isnan(value) or lo <= value <= hi or math.isinf(value):
            continue   # ±inf is a value every float type holds
        spec.nodata[i] = spec.fill[i] = float("nan")
        changed.append((i + 1, value))
    if changed and progress is not None:
        values = ", ".join(dict.fromkeys(_nodata_text(v) for _, v in changed))
        progress.info(f"nodata {values} of output band(s) {', '.join(str(b) for b, _ in changed)} is not a "
                      f"{type_name} value: nodata is NaN there in the output")


def _settle_nodata(spec: OutputSpec, got: _Probed, driver: str, ext: str, name: str, progress, reprobe) -> bool:
    """Whether the format keeps the spec's nodata, band by band, as the probe found.  Where the bands' nodata
    values differ and the format keeps one per file (GeoTIFF, GeoPackage), a float output carries every
    band's nodata as NaN (said on ``progress``); an integer one is refused in one line (valid pixels of one
    band would become nodata, nodata of another valid).  -> False for a format that keeps no nodata at all
    (the output check then does not compare it)."""
    want = spec.nodata
    if all(_same_nodata(a, b) for a, b in zip(want, got.nodata)):
        return True
    if _distinct(want) < 2 or all(v is None for v in got.nodata):
        return False   # a format that keeps no nodata at all (PDF, MBTiles): as before, not compared
    listed = ", ".join(_nodata_text(v) for v in want)
    if is_float_type(spec.data_type):
        nan = float("nan")
        spec.nodata, spec.fill = [nan] * len(want), [nan] * len(want)
        if progress is not None:
            progress.info(f"the {driver} format keeps one nodata value per file, and the bands' differ "
                          f"({listed}): nodata is NaN in every band of {name}")
        return all(_same_nodata(a, b) for a, b in zip(spec.nodata, reprobe().nodata))
    raise RasterError(f"the bands of the output have different nodata values ({listed}) but the {driver} format "
                      f"(.{ext}) keeps one per file, so valid pixels of one band would become nodata: write .img "
                      f"(Erdas Imagine keeps one per band), choose bands with one nodata value, or use a float "
                      f"output type (nodata as NaN)")


def _widens(data_type: int, to: int) -> bool:
    """Every value of ``data_type`` is kept in ``to`` (XYZ, for one, stores Byte as Int32)."""
    from osgeo import gdal_array

    code = gdal_array.GDALTypeCodeToNumericTypeCode
    return data_type == to or bool(np.can_cast(code(data_type), code(to)))


def _creation_types(driver: str) -> list[str] | None:
    """The data types ``driver`` writes; JPEG counts as 8-bit only (its 12-bit mode clips 16-bit data)."""
    if driver == "JPEG":
        return ["Byte"]
    text = gdal.GetDriverByName(driver).GetMetadataItem("DMD_CREATIONDATATYPES")
    types = text.split() if text else None
    if types and driver in ("GTiff", "COG") and hasattr(gdal, "GDT_Int64"):
        # GeoTIFF writes 64-bit integers since GDAL 3.5, but 3.5/3.6 do not list them.
        types += [t for t in ("Int64", "UInt64") if t not in types]
    return types


def _creation_option_names(driver: str) -> set[str]:
    text = gdal.GetDriverByName(driver).GetMetadataItem("DMD_CREATIONOPTIONLIST")
    try:
        return {a["name"].upper() for a, _ in xml_elements(text, "Option") if a.get("name")} if text else set()
    except ValueError:
        return set()  # cannot tell: GDAL itself warns about an unknown option


def xml_elements(data, tag: str) -> list[tuple[dict, str]]:
    """(attributes, text) of every ``tag`` element of the XML ``data`` (bytes or str), in document order.

    The XML read here comes from files (a user's VRT): expat parses it with any document type declaration
    refused, so no entity is declared and none can expand (billion laughs) or reach outside the document
    (external entities).  ValueError, one line, for text that is not XML or that declares a DTD."""
    from xml.parsers import expat

    parser = expat.ParserCreate()
    found: list = []
    open_elements: list = []   # (tag, attributes, text pieces) of the elements not closed yet

    def start(name, attrs):
        open_elements.append((name, attrs, []))

    def end(name):
        name, attrs, text = open_elements.pop()
        if name == tag:
            found.append((attrs, "".join(text)))

    def characters(text):
        if open_elements:
            open_elements[-1][2].append(text)

    def refuse(*_):
        raise ValueError("the XML declares a document type (DTD), which is not read")

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None
    return found


def _overview_levels(width: int, height: int) -> list[int]:
    """2, 4, 8 ... until the smallest overview fits in one 256-pixel block (as the COG driver's AUTO)."""
    levels, f = [], 2
    while max(width, height) / (f // 2) > BLOCK:
        levels.append(f)
        f *= 2
    return levels


class RasterWriter:
    """A GeoTIFF being written; full-width row strips are buffered to whole 256-row tile rows.

    Writing whole tile rows matters: a compressed GeoTIFF tile flushed half
    written and later completed is appended a second time, bloating the file.
    """

    def __init__(self, path: str, spec: OutputSpec, what: str, options: list[str] | None = None):
        self.path, self.spec, self.what = path, spec, what
        driver = gdal.GetDriverByName("GTiff")
        ds = _call(f"creating {what}", driver.Create, path, spec.width, spec.height, spec.bands, spec.data_type,
                   options=_gtiff_options(spec.data_type) if options is None else options, error=RasterWriteError)
        self._ds = ds
        if spec.geotransform is not None:
            ds.SetGeoTransform(spec.geotransform)
        if spec.projection:
            ds.SetProjection(spec.projection)
        if spec.gcps:
            ds.SetGCPs(spec.gcps, spec.gcp_projection)
        if spec.metadata:
            ds.SetMetadata(spec.metadata)
        if spec.rpc:
            ds.SetMetadata(spec.rpc, "RPC")
        for i in range(spec.bands):
            band = ds.GetRasterBand(i + 1)
            if i < len(spec.band_descriptions) and spec.band_descriptions[i]:
                band.SetDescription(spec.band_descriptions[i])
            if i < len(spec.color_interp):
                band.SetColorInterpretation(spec.color_interp[i])
            # A GeoTIFF keeps one nodata value per file: bands that differ are the temporary file of a format
            # that keeps one per band (output_format settled that), which gets them when converted.
            if i < len(spec.nodata) and spec.nodata[i] is not None and _distinct(spec.nodata) == 1:
                band.SetNoDataValue(spec.nodata[i])
            if i < len(spec.offsets) and spec.offsets[i] not in (None, 0.0):
                band.SetOffset(spec.offsets[i])
            if i < len(spec.scales) and spec.scales[i] not in (None, 1.0):
                band.SetScale(spec.scales[i])
            if i < len(spec.unit_types) and spec.unit_types[i]:
                band.SetUnitType(spec.unit_types[i])
            if i < len(spec.band_metadata) and spec.band_metadata[i]:
                band.SetMetadata(spec.band_metadata[i])
        self._mask = None
        if spec.mask:
            # GDAL < 3.9 would put the mask in a side-car .msk file, which the rename would leave behind.
            previous = gdal.GetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
            gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
            try:
                _call(f"creating the mask band of {what}", ds.CreateMaskBand, gdal.GMF_PER_DATASET,
                      error=RasterWriteError, code=True)
            finally:
                gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", previous)
            self._mask = ds.GetRasterBand(1).GetMaskBand()
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0
        self._next_row = 0

    def write(self, x: int, y: int, data: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Write ``data`` [C, h, w] (output type) at pixel (x, y)."""
        for i in range(data.shape[0]):
            _call(f"writing band {i + 1} of {self.what} at x={x} y={y}", self._ds.GetRasterBand(i + 1).WriteArray,
                  data[i], x, y, error=RasterWriteError, code=True)
        if self._mask is not None and mask is not None:
            _call(f"writing the mask of {self.what}", self._mask.WriteArray, mask, x, y, error=RasterWriteError,
                  code=True)
        # Callers write whole tiles: push them to disk now, or GDAL's block cache (5 % of RAM by
        # default, shared with the host application) would hold much of the output.
        _call(f"writing {self.what}", self._ds.FlushCache, error=RasterWriteError, code=True)

    def write_rows(self, y: int, data: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append full-width rows starting at ``y`` (rows must arrive in order, without gaps)."""
        if y != self._next_row:
            raise ValueError(f"rows written out of order: got row {y}, expected {self._next_row}")
        self._next_row += data.shape[1]
        self._pending.append((data, mask))
        self._pending_rows += data.shape[1]
        end = self._next_row == self.spec.height
        ready = self._pending_rows if end else self._pending_rows // BLOCK * BLOCK
        if ready == 0:
            return
        data = np.concatenate([d for d, _ in self._pending], axis=1)
        mask = (np.concatenate([m for _, m in self._pending], axis=0)
                if self._mask is not None and all(m is not None for _, m in self._pending) else None)
        start = self._next_row - self._pending_rows
        self.write(0, start, data[:, :ready], None if mask is None else mask[:ready])
        rest = self._pending_rows - ready
        self._pending = [(data[:, ready:], None if mask is None else mask[ready:])] if rest else []
        self._pending_rows = rest

    def close(self) -> None:
        """Flush and close; raise :class:`RasterWriteError` if GDAL reports a failure."""
        ds, self._ds, self._mask = self._ds, None, None
        if ds is None:
            return
        with _ErrorLog() as log:
            try:
                ds.FlushCache()
                ds = None  # GDALClose writes the last tiles and the TIFF directory
            except RuntimeError as exc:
                log.messages.append(str(exc))
        if log.messages:
            raise RasterWriteError(f"finishing {self.what}: {_reason(log.messages)}")

    def abandon(self) -> None:
        """Close without caring about errors (the file is about to be deleted)."""
        with _ErrorLog():
            try:
                self._ds = None
                self._mask = None
            except RuntimeError:
                pass


def check_destination(dst: str, src: str, estimated_bytes: int, progress: Progress, cog: bool = False,
                      converted: bool | None = None) -> None:
    """Refuse before a long job when the output cannot possibly be written."""
    dst_abs = os.path.abspath(dst)
    check_outputs(raster_outputs("the output", dst), [("the input raster", src)])
    folder = os.path.dirname(dst_abs)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"the output folder {folder} is not writable")
    if os.path.isdir(dst_abs):
        raise RasterError(f"the output {dst} is a folder: give a file name such as {os.path.join(dst, 'sr.tif')}")
    if os.path.isfile(dst_abs) and (others := container_layers(dst_abs)):
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise RasterError(f"the output {dst} is a GeoPackage holding other layers ({shown}): writing it would "
                          f"replace the whole file and lose them; write the output to a new .gpkg file")
    if os.path.lexists(dst_abs) and not os.access(dst_abs, os.W_OK):
        # The rename would replace it (the folder is writable), but read-only says: keep this file.
        raise PermissionError(f"the output {dst} exists and is read-only: choose another output file or make "
                              "it writable")
    free = shutil.disk_usage(folder).free
    # DEFLATE + predictor typically halves imagery; noise-like data does not compress at all.
    # A COG or another format needs the intermediate GeoTIFF and the final file side by side.
    need = estimated_bytes * (2 if (cog if converted is None else converted) else 1)
    if free < need // 2:
        raise RasterWriteError(f"not enough free disk space in {folder}: the output needs about "
                               f"{_mb(need // 2)}-{_mb(need)}, {_mb(free)} are free")
    if free < need:
        progress.warn(f"disk space in {folder} is tight: the output may need up to {_mb(need)}, "
                      f"{_mb(free)} are free")


def container_layers(path: str) -> list[str]:
    """The tables of an existing GeoPackage at ``path`` that an output written there would destroy: every
    table of its ``gpkg_contents`` unless it holds exactly one raster table (a former output, which writing
    replaces as it would a GeoTIFF).  [] for a file that is not a GeoPackage (SQLite with gpkg_contents).
    Outputs are written whole and renamed into place, never into a container in place: a GeoPackage with
    other layers is refused rather than half-updated."""
    import sqlite3
    from urllib.request import pathname2url

    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return []
        con = sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall()
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return []
    rasters = [t for t, kind in rows if kind in ("tiles", "2d-gridded-coverage")]
    if len(rows) == 1 and len(rasters) == 1:
        return []
    return [f"{t} ({kind})" for t, kind in rows] or []


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


# Side-car files GDAL may write beside a raster (PAM metadata, external overviews and masks).
_SIDE_CARS = (".aux.xml", ".ovr", ".msk")


def remove_raster(path: str) -> None:
    """Remove a raster (or a converted output's folder) with its side-cars, best effort."""
    if os.path.isdir(path):   # the folder a converted output is made in
        shutil.rmtree(path, ignore_errors=True)
        return
    for p in (path,) + tuple(path + side for side in _SIDE_CARS):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # best effort: the error being reported matters more


def _verify(path: str, spec: OutputSpec, what: str, nodata: bool = False) -> None:
    """Reopen the finished file and decode its last row: a truncated file fails here, not in the user's GIS.
    ``nodata``: each band must also declare the spec's nodata value (a format that keeps one per file would
    have collapsed them: the probe of :func:`output_format` refuses that before any work, this makes sure)."""
    ds = open_raster(path)
    count = ds.RasterCount
    while count > spec.bands and ds.GetRasterBand(count).GetColorInterpretation() == gdal.GCI_AlphaBand:
        count -= 1  # GeoPackage shows Byte tiles as RGBA: the alpha band is the format's, not a band lost
    if (ds.RasterXSize, ds.RasterYSize, count) != (spec.width, spec.height, spec.bands):
        raise RasterWriteError(f"{what} came out as {ds.RasterXSize}x{ds.RasterYSize}x{ds.RasterCount}, "
                               f"expected {spec.width}x{spec.height}x{spec.bands}")
    _call(f"reading back {what}", ds.ReadAsArray, 0, spec.height - 1, spec.width, 1, error=RasterWriteError)
    if nodata:
        for i, want in enumerate(spec.nodata[:spec.bands]):
            got = ds.GetRasterBand(i + 1).GetNoDataValue()
            if not _same_nodata(want, got):
                ds = None
                raise RasterWriteError(f"{what} came out with nodata {_nodata_text(got)} in band {i + 1}, "
                                       f"expected {_nodata_text(want)}")
    ds = None


class AtomicRaster:
    """``with AtomicRaster(dst, spec, fmt=...) as writer:`` — the output under temporary names, renamed on success.

    The pixels go into a tiled GeoTIFF under a temporary name beside ``dst``.  A plain GeoTIFF output is
    that file (with overviews built into it when asked).  A COG, or another format (``fmt.driver``, from
    ``dst``'s extension: HFA for .img, GPKG, PNG, JPEG ...), is translated from it into a temporary
    folder beside ``dst`` under ``dst``'s own name, so files that name each other (a raster and its
    ``.aux.xml``, ``.ovr`` or world file) keep doing so, and moved out on success, the raster last.
    Any exception (including :class:`Cancelled`) removes every temporary and leaves an existing ``dst``
    untouched.  Temporary names and the sweep of a killed run's leftovers are :mod:`lcmsr.atomic`'s.

    ``deferred=True``: leaving the block only finishes the file (conversion, overviews, checks: all that
    can fail); :meth:`publish` then renames it into place, or :meth:`abandon` removes it.  Outputs that
    come as a pair are both finished before either replaces what was there.
    """

    def __init__(self, dst: str, spec: OutputSpec, progress: Progress | None = None, cog: bool = False,
                 fmt: OutputFormat | None = None, deferred: bool = False):
        self.dst, self.spec = os.path.abspath(dst), spec
        self.fmt = fmt or output_format(self.dst, spec.data_type, cog=cog)
        self.progress = progress or Progress()
        self.what = f"the output {self.dst}"
        self.writer: RasterWriter | None = None
        self._temps: list[str] = []
        self.deferred = deferred
        self._moves: dict[str, str] | None = None   # finished, waiting for publish()

    def _temp_name(self) -> str:
        # lcmsr.atomic's names (the host and process id let a later run remove what a killed one left
        # behind); not pre-created, so GDAL creates the file with the umask.
        path = atomic.temp_path(self.dst)
        self._temps.append(path)
        return path

    def __enter__(self) -> RasterWriter:
        folder = os.path.dirname(self.dst)
        for entry in atomic.sweep_stale(folder):
            self.progress.info(f"removed {entry}, left in {folder} by an interrupted run")
        tmp = self._temp_name()
        try:
            options = self.fmt.options(self.spec.data_type) if self.fmt.streamed else None
            self.writer = RasterWriter(tmp, self.spec, what=self.what, options=options)
        except BaseException:
            self._cleanup()
            raise
        return self.writer

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._cleanup()
            return False
        try:
            self._moves = self._finish()
            if not self.deferred:
                self.publish()
        except BaseException as err:
            self._cleanup()
            if isinstance(err, (RasterWriteError, Cancelled)) or not isinstance(err, Exception):
                raise   # a cancel, Ctrl-C or a stopping signal (lcmsr.cli.Stopped) stays what it is
            raise RasterWriteError(f"finishing {self.what}: {err}") from err
        return False

    def _callback(self, complete, message, data):
        return 0 if self.progress.cancelled() else 1

    def publish(self) -> None:
        """Rename the finished file (and its side-cars) into place."""
        moves, self._moves = self._moves, None
        self._move(moves)

    def abandon(self) -> None:
        """Remove a finished file that is not to be published (its partner failed)."""
        self._moves = None
        self._cleanup()

    def _finish(self) -> dict[str, str]:
        """Close, check and convert the temporary file: what :meth:`_move` renames into place."""
        self.writer.close()
        tmp = self._temps[0]
        _verify(tmp, self.spec, self.what, nodata=self.fmt.streamed and self.fmt.keeps_nodata)
        if self.fmt.streamed:
            if self.fmt.overviews:
                self._overviews(tmp)
            return {tmp: self.dst}
        folder = self._temp_name()
        os.mkdir(folder)
        final = os.path.join(folder, os.path.basename(self.dst))
        driver = "COG" if self.fmt.cog else self.fmt.driver
        self.progress.info("writing the Cloud Optimized GeoTIFF (overviews)" if self.fmt.cog else
                           f"writing {os.path.basename(self.dst)} in the {driver} format")
        options = gdal.TranslateOptions(format=driver, creationOptions=self.fmt.options(self.spec.data_type),
                                        callback=self._callback)
        self.progress.check()
        try:
            out = _call(f"writing {self.what} in the {driver} format", gdal.Translate, final, tmp, options=options,
                        error=RasterWriteError)
        except RasterWriteError:
            self.progress.check()  # an abort by the callback is a cancel, not a failure
            raise
        out = None  # noqa: F841  (closing writes the file's last bytes)
        remove_raster(tmp)
        self._complete(final)
        if self.fmt.overviews and not self.fmt.cog:  # a COG has its own
            self._overviews(final)
        _verify(final, self.spec, self.what, nodata=self.fmt.keeps_nodata)
        # Only the output and its own side-cars are moved into place: a driver that wrote anything else (a
        # header or data file named after the output) would replace a file nobody declared as an output.
        # output_format's probe refuses such formats before any work; this is the writer's own guard.
        base = os.path.basename(self.dst)
        own = {base} | {base + side for side in _SIDE_CARS}
        extra = sorted(set(os.listdir(folder)) - own)
        if extra:
            raise RasterWriteError(f"the {driver} format wrote other files beside {self.what} ({', '.join(extra[:3])}"
                                   f"), which would replace files of those names: nothing was written; use .tif")
        here = os.path.dirname(self.dst)
        return ({os.path.join(folder, name): os.path.join(here, name) for name in sorted(os.listdir(folder))
                 if name != base} | {final: self.dst})

    def _complete(self, path: str) -> None:
        """Give the converted file what its driver did not copy: per band colour interpretation and
        description, the dataset metadata (provenance).  Where the format cannot hold one, say so."""
        with _ErrorLog():
            try:
                ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_UPDATE)
            except RuntimeError:
                ds = None
        ds = ds or open_raster(path)   # read-only: GDAL keeps them in a .aux.xml side-car (PAM)
        lost = []
        with _ErrorLog() as log:
            try:
                for key, value in self.spec.metadata.items():
                    if ds.GetMetadataItem(key) != value:
                        ds.SetMetadataItem(key, value)
                for i in range(self.spec.bands):
                    band = ds.GetRasterBand(i + 1)
                    want = self.spec.nodata[i] if i < len(self.spec.nodata) else None
                    if self.fmt.keeps_nodata and not _same_nodata(band.GetNoDataValue(), want):
                        # The temporary GeoTIFF keeps one nodata value per file: bands that differ get theirs here.
                        if want is None:
                            band.DeleteNoDataValue()
                        else:
                            band.SetNoDataValue(want)
                    if i < len(self.spec.color_interp) and band.GetColorInterpretation() != self.spec.color_interp[i]:
                        band.SetColorInterpretation(self.spec.color_interp[i])
                    if i < len(self.spec.band_descriptions) and self.spec.band_descriptions[i] and \
                            band.GetDescription() != self.spec.band_descriptions[i]:
                        band.SetDescription(self.spec.band_descriptions[i])
                ds.FlushCache()
                ds = None
                ds = open_raster(path)
                lost += [f"metadata {k}" for k, v in self.spec.metadata.items() if ds.GetMetadataItem(k) != v]
                lost += [f"the colour interpretation of band {i + 1}" for i in range(self.spec.bands)
                         if i < len(self.spec.color_interp)
                         and ds.GetRasterBand(i + 1).GetColorInterpretation() != self.spec.color_interp[i]]
            except RuntimeError as exc:
                log.messages.append(str(exc))
            ds = None
        if lost or log.messages:
            self.progress.warn(f"the {self.fmt.driver} format of {os.path.basename(self.dst)} does not keep "
                               + ", ".join(lost[:4] + log.messages[:1]) + (" ..." if len(lost) > 4 else ""))

    def _overviews(self, path: str) -> None:
        levels = _overview_levels(self.spec.width, self.spec.height)
        if not levels:
            return
        self.progress.info(f"building overviews ({OVERVIEW_RESAMPLING.lower()}, levels {', '.join(map(str, levels))})")
        with _ErrorLog():
            try:
                ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_UPDATE)
            except RuntimeError:
                ds = None
        ds = ds or open_raster(path)   # formats that cannot be updated get an external .ovr side-car
        self.progress.check()
        try:
            _call(f"building the overviews of {self.what}", ds.BuildOverviews, OVERVIEW_RESAMPLING, levels,
                  self._callback, error=RasterWriteError, code=True)
        except RasterWriteError:
            self.progress.check()
            raise
        finally:
            ds = None

    def _move(self, moves: dict[str, str]) -> None:
        """``os.replace`` each temporary over its destination, the raster last (after its side-cars); a
        side-car of the file being replaced that the new one lacks would describe the old pixels."""
        for tmp, dst in list(moves.items()):
            for side in _SIDE_CARS:
                if os.path.exists(tmp + side):
                    moves.setdefault(tmp + side, dst + side)
        for side in _SIDE_CARS:
            if self.dst + side not in moves.values() and os.path.exists(self.dst + side):
                os.remove(self.dst + side)
        raster = next(tmp for tmp, dst in moves.items() if dst == self.dst)
        for tmp, dst in moves.items():
            if tmp != raster:
                os.replace(tmp, dst)
        os.replace(raster, self.dst)
        self._cleanup()   # the emptied folder of a converted output

    def _cleanup(self) -> None:
        if self.writer is not None:
            self.writer.abandon()
        for path in self._temps:
            remove_raster(path)
        self._temps.clear()
