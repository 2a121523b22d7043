"""A GeoTIFF of real 8-bit RGB pixels at any size, for the benchmarks and checks that need a raster bigger
than the committed sample: the source mirrored past its edges (no seams of repeated tiles), declared at
0.4 m (the shipped aerial model's LR pixel) at the source's origin and CRS, bands red, green, blue."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"


def write_rgb(path, size: int, source: Path = SAMPLE_LR) -> None:
    import numpy as np
    from osgeo import gdal

    gdal.UseExceptions()
    src = gdal.Open(str(source))
    data = src.ReadAsArray()[:3]
    reps = (0, max(0, size - data.shape[1])), (0, max(0, size - data.shape[2]))
    data = np.pad(data, ((0, 0),) + reps, mode="symmetric")[:, :size, :size]
    x0, _, _, y0, _, _ = src.GetGeoTransform()
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte,
                                              options=["TILED=YES", "COMPRESS=DEFLATE"])
    ds.SetGeoTransform((x0, 0.4, 0.0, y0, 0.0, -0.4))
    ds.SetProjection(src.GetProjection())
    for b in range(3):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(data[b])
        band.SetColorInterpretation(gdal.GCI_RedBand + b)
    ds = None


SAMPLE_S2 = REPO / "tests" / "fixtures" / "s2_t33uuu_256.tif"


def write_s2(path, size: int, source: Path = SAMPLE_S2) -> None:
    """A Sentinel-2-like scene window of real pixels at any size: the committed 256² crop of tile 33UUU
    (B02, B03, B04, B08, UInt16, 10 m, EPSG:32633) mirrored into a mosaic (each copy flipped against its
    neighbours, so no edge is a seam), at the crop's origin and CRS, band descriptions kept; DEFLATE
    GeoTIFF tiled as Sentinel-2 products are read by users."""
    import numpy as np
    from osgeo import gdal

    gdal.UseExceptions()
    src = gdal.Open(str(source))
    data = src.ReadAsArray()
    reps = (0, max(0, size - data.shape[1])), (0, max(0, size - data.shape[2]))
    data = np.pad(data, ((0, 0),) + reps, mode="symmetric")[:, :size, :size]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, data.shape[0], gdal.GDT_UInt16,
                                              options=["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2",
                                                       "BIGTIFF=IF_SAFER"])
    ds.SetGeoTransform(src.GetGeoTransform())
    ds.SetProjection(src.GetProjection())
    for b in range(data.shape[0]):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(data[b])
        band.SetDescription(src.GetRasterBand(b + 1).GetDescription())
    ds = None
