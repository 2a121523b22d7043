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
