"""Synthetic training images shared by the training tests (not a conftest: plain helpers)."""
import numpy as np


def texture(h, w, seed=0, noise=20.0, dtype=np.uint8, bands=3):
    """A smooth sinusoidal pattern plus Gaussian noise: detail that bicubic loses, values in 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 60 * np.sin(x / 3.0 + c) * np.cos(y / 5.0) + noise * rng.standard_normal((h, w))
                    for c in range(bands)])
    return np.clip(img, 0, 255).astype(dtype)


def write_texture_tif(path, size=96) -> str:
    """A size x size 3-band Byte GeoTIFF of :func:`texture` (training through the CLI reads files)."""
    from osgeo import gdal

    path = str(path)
    ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 3, gdal.GDT_Byte)
    for i, band in enumerate(texture(size, size)):
        ds.GetRasterBand(i + 1).WriteArray(band)
    ds = None
    return path
