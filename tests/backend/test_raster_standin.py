"""A fast stand-in for the LCMSR inference contract, and synthetic rasters for the raster tests.

The stand-in is a fixed local operator (3x3 LR sharpening + bicubic up) plus a
term driven by the latent noise, so it has a receptive field (tile borders
matter) and a noise dependence (per-tile noise would show as seams), at a
fraction of the real model's cost.  Other test_raster_* modules import it.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lcmsr.config import ScheduleConfig
from lcmsr.diffusion import NoiseSchedule, make_sampler
from lcmsr.domain import DATA_TYPES, Domain
from lcmsr.normalization import Normalization
from lcmsr.ops import upsample_bicubic

gdal = pytest.importorskip("osgeo.gdal")
osr = pytest.importorskip("osgeo.osr")


class StandInModel(torch.nn.Module):
    def __init__(self, scale=4, bands=3, lo=0.0, hi=255.0, data_type="Byte", noise_weight=0.05):
        super().__init__()
        roles = (["red", "green", "blue", "nir"] + ["swir1", "swir2"] * 4)[:bands] if bands > 1 else ["pan"]
        # A known domain that takes any data type and pixel size: these tests are about the pipeline.
        domain = Domain(family="aerial", sensor="test stand-in", band_roles=roles, data_types=list(DATA_TYPES))
        self.info = SimpleNamespace(scale=scale, bands=bands, band_names=[f"b{i}" for i in range(bands)],
                                    normalization=Normalization([lo] * bands, [hi] * bands), data_type=data_type,
                                    domain=domain, format_version=2)
        # The latent grid is HR/8: an LR multiple of 8/gcd(8, s), doubled like a one-level UNet would.
        self.lr_multiple = 8 // math.gcd(8, scale) * 2
        self.noise_weight = noise_weight
        k = torch.tensor([[0, -0.25, 0], [-0.25, 2.0, -0.25], [0, -0.25, 0]])
        self.register_buffer("kernel", k.expand(bands, 1, 3, 3).clone())
        self.batches: list[tuple[int, ...]] = []
        self.schedule = NoiseSchedule(ScheduleConfig())

    def latent_shape(self, h, w):
        m = self.lr_multiple
        hp, wp = -(-h // m) * m, -(-w // m) * m
        return (4, hp * self.info.scale // 8, wp * self.info.scale // 8)

    def noise_draws(self, steps=1, sampler="consistency"):
        return make_sampler(sampler, self.schedule, steps).noise_draws

    @torch.no_grad()
    def sr(self, lr, steps=1, sampler="consistency", generator=None, noise=None, repeats=1):
        lr = lr.repeat(repeats, 1, 1, 1)   # as LCMSR.sr: repeats samples of each image, sample-major
        self.batches.append(tuple(lr.shape))
        b, c, h, w = lr.shape
        s, m = self.info.scale, self.lr_multiple
        hp, wp = -(-h // m) * m, -(-w // m) * m
        x = F.pad(lr, (0, wp - w, 0, hp - h), mode="replicate")
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel, groups=c)
        out = upsample_bicubic(x, s)
        # The real samplers over a zero condition and an identity predictor: the latent is the noise
        # (x_T for one step, nothing for "faithful"), drawn and checked exactly as LCMSR.sr does.
        cond = torch.zeros((b,) + self.latent_shape(h, w), device=lr.device)
        z = make_sampler(sampler, self.schedule, steps).sample(lambda x_t, t: x_t, cond, noise, generator)
        out = out + self.noise_weight * F.interpolate(z[:, :1], scale_factor=8, mode="nearest")
        return out[:, :, :h * s, :w * s]


def textured(height, width, bands=3, lo=0.0, hi=255.0, seed=0) -> np.ndarray:
    """[bands, h, w] float64: smooth gradients, edges and fine texture spanning [lo, hi]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for b in range(bands):
        f = 0.5 + 0.25 * np.sin(xx / (7 + b) + yy / 11) + 0.15 * np.cos(yy / (5 + b) - xx / 13)
        f += 0.1 * ((xx // 9 + yy // 9 + b) % 2)           # edges
        f += 0.05 * rng.standard_normal((height, width))  # texture
        out.append(lo + (hi - lo) * np.clip(f, 0, 1))
    return np.stack(out)


def write_raster(path, data: np.ndarray, data_type=None, gt=(500000.0, 2.0, 0.0, 4100000.0, 0.0, -2.0),
                 epsg: int | None = 32611, nodata=None, options=("TILED=YES",), driver="GTiff"):
    """Write [bands, h, w] ``data`` as a raster and return its path (a str)."""
    data_type = gdal.GDT_Byte if data_type is None else data_type
    bands, h, w = data.shape
    ds = gdal.GetDriverByName(driver).Create(str(path), w, h, bands, data_type, options=list(options))
    if gt is not None:
        ds.SetGeoTransform(gt)
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(data[i])
    ds.FlushCache()
    ds = None
    return str(path)


def read_raster(path) -> np.ndarray:
    ds = gdal.Open(str(path))
    out = ds.ReadAsArray()
    return out.reshape(ds.RasterCount, ds.RasterYSize, ds.RasterXSize)


# ---------------------------------------------------------------- the stand-in honours the contract

def test_standin_pads_any_size_and_returns_scaled_model_space():
    model = StandInModel(scale=4, bands=3)
    lr = torch.rand(2, 3, 5, 7) * 2 - 1
    g = torch.Generator().manual_seed(0)
    out = model.sr(lr, generator=g)
    assert out.shape == (2, 3, 20, 28)
    assert model.latent_shape(5, 7) == (4, 4, 4)  # padded to 8x8 LR -> 32x32 HR -> 4x4 latent


def test_standin_output_depends_on_the_noise():
    model = StandInModel(scale=2, bands=1)
    lr = torch.zeros(1, 1, 16, 16)
    a = model.sr(lr, noise=torch.zeros(1, *model.latent_shape(16, 16)))
    b = model.sr(lr, noise=torch.ones(1, *model.latent_shape(16, 16)))
    assert torch.allclose(b - a, torch.full_like(a, model.noise_weight))
