"""The tile model: LR tiles in data units -> HR tiles in data units (plus an uncertainty band), on arrays.

No GDAL and no files: the streaming engine (:mod:`lcmsr.raster.pipeline`), a region unit of a batch job
(:mod:`lcmsr.sr.units`), a benchmark on a machine without GDAL or a notebook all call the same
:class:`TileModel`.  It holds what happens to a batch of tiles between the reader and the blender:

* normalisation into model space (per band, the plan's :class:`~lcmsr.normalization.Normalization`),
  bounded so that extreme valid values never become inf;
* band-wise reshaping: a band-wise model sees every band of a tile as an image of its own, and the
  images of a batch are run in calls of at most ``batch`` images (the memory plan counts images);
* the diffusion noise, cut from one raster-wide field by position (:func:`position_noise`), so a pixel
  gets the same noise whatever the tile, the batch or the process that computes it;
* the model call (:class:`lcmsr.inference.Inference`), halving the call on GPU out-of-memory;
* LR-consistency (iterative back-projection) and the spread of K samples (the uncertainty band);
* the inverse normalisation and the clamp to the output's bounds.

Each part's time is added to ``timers`` (:class:`lcmsr.progress.Timers`) when one is given.
"""
from __future__ import annotations

import numpy as np
import torch

from ..inference import Inference, InferenceOptions
from ..normalization import Normalization
from ..ops import downsample_bicubic, upsample_bicubic
from ..progress import Progress, Timers
from ..runtime import is_oom

NOISE_BLOCK = 32          # latent pixels per noise block
# Model-space inputs are clamped to +-MODEL_SPACE_LIMIT (the model's range is [-1, 1]): a valid pixel of
# 3e38 would otherwise be inf in the network and NaN over the whole tile; 32 spans out is no imagery.
MODEL_SPACE_LIMIT = 64.0
# Noise draw numbers of uncertainty sample k start at k * SAMPLE_DRAWS: distinct from every draw of
# sample 0 (which is the plain run's), for any sampler's number of draws.
SAMPLE_DRAWS = 1 << 16

class TileTooLarge(Exception):
    """A single tile does not fit in GPU memory: the job restarts with smaller tiles."""


def _block_seed(seed: int, draw: int, by: int, bx: int) -> int:
    state = np.random.SeedSequence([seed % 2**63, draw, by, bx]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def position_noise(seed: int, top: int, left: int, h: int, w: int, channels: int, draw: int = 0) -> torch.Tensor:
    """[channels, h, w] standard normal noise cut at (top, left) from one raster-wide latent field.

    The field is made of NOISE_BLOCK-square blocks each drawn from its own
    seeded CPU generator, so any window of it is reproducible on any device.
    """
    out = torch.empty(channels, h, w)
    b = NOISE_BLOCK
    for by in range(top // b, (top + h - 1) // b + 1):
        for bx in range(left // b, (left + w - 1) // b + 1):
            g = torch.Generator().manual_seed(_block_seed(seed, draw, by, bx))
            block = torch.randn(channels, b, b, generator=g)
            y0, y1 = max(top, by * b), min(top + h, (by + 1) * b)
            x0, x1 = max(left, bx * b), min(left + w, (bx + 1) * b)
            out[:, y0 - top:y1 - top, x0 - left:x1 - left] = block[:, y0 - by * b:y1 - by * b,
                                                                   x0 - bx * b:x1 - bx * b]
    return out


class TileModel:
    """``TileModel(...)(tiles, data)``: one batch of LR tiles -> their HR results, in data units.

    ``tiles`` are anything with ``index``, ``x``, ``y``, ``w``, ``h`` (LR pixels in the whole raster:
    :class:`lcmsr.raster.tiling.Tile`), ``data`` their LR values ``[C, h, w]`` (invalid pixels already
    filled).  Each result is ``[C (+1 with samples > 1), h*s, w*s]`` in ``work`` (a numpy float type),
    clamped to ``bounds`` (per output band (lo, hi); NaN/inf pass, for the writer's one sanity check).

    ``batch`` is the most images one model call runs: tiles, times the bands of a band-wise model.
    On GPU out-of-memory the call is halved (said once per halving); a single image that does not fit
    raises :class:`TileTooLarge`.
    """

    def __init__(self, model, device: torch.device, *, precision: str, norm: Normalization, bandwise: bool,
                 bounds: np.ndarray, work=np.float32, batch: int = 8, steps: int = 1,
                 sampler: str = "consistency", seed: int = 0, lr_consistency: int = 0, samples: int = 1,
                 channels_last: bool | None = None, compile: bool = False, cuda_graphs: bool = False,
                 progress: Progress | None = None, timers: Timers | None = None):
        self.model, self.device, self.norm, self.bandwise = model, torch.device(device), norm, bandwise
        self.progress = progress or Progress()
        self.timers = timers or Timers()
        self.scale = int(model.info.scale)
        self.steps, self.sampler, self.seed = steps, sampler, seed
        self.lr_consistency, self.samples = lr_consistency, samples
        self.batch = max(1, int(batch))
        self.work = np.dtype(work)
        self.draws = model.noise_draws(steps, sampler)
        bounds = np.asarray(bounds, dtype=np.float64)
        self.lo, self.hi = (torch.from_numpy(bounds[:, i].copy())[:, None, None] for i in (0, 1))
        self.runner = Inference(model, self.device, InferenceOptions(
            precision=precision, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs),
            self.progress)

    def images_per_tile(self, bands: int) -> int:
        return bands if self.bandwise else 1

    def tiles_per_call(self, bands: int) -> int:
        """Tiles a batch of the engine should hold: as many as give at most ``batch`` images (at least one)."""
        return max(1, self.batch // self.images_per_tile(bands))

    def warm_up(self, bands: int, h: int, w: int) -> None:
        """One untimed call on one image of the job's shape (first-call costs would skew the first estimate)."""
        n = 1 if self.bandwise else int(self.model.info.bands)
        try:
            self.runner.sr(torch.zeros(1, n, h, w), steps=self.steps, sampler=self.sampler)
        except Exception:
            pass   # whatever failed fails again in the first batch, with the job's handling

    # -- the batch -------------------------------------------------------------------
    def __call__(self, tiles, data: list[np.ndarray]) -> list[np.ndarray]:
        with self.timers.part("normalise"):
            # Normalised in float64 and bounded: extreme valid values (3e38, 1e300) must not become inf.
            x = self.norm.forward(torch.from_numpy(np.stack(data)).double())
            x = x.clamp_(-MODEL_SPACE_LIMIT, MODEL_SPACE_LIMIT).float()
        b, c = x.shape[:2]
        if self.bandwise and c > 1:
            x = x.reshape(b * c, 1, *x.shape[2:])
        # Sample 0 is computed exactly as without an uncertainty raster: the main output stays bit-for-bit
        # the plain run's (and the uncertainty is the spread around the result the user gets).
        y = self._calls(x, tiles, [self._tile_noise(tiles, 0, c)], 1)
        spread = None
        if self.samples > 1:
            # Samples 1..K-1, each with its own draws of the raster-wide noise field, run in calls of at most
            # `batch` images, CondNet's condition computed once per call and shared by its samples.
            ys = [y.reshape(1, b, c, *y.shape[2:])]
            per_call = max(1, self.batch // x.shape[0])
            for first in range(1, self.samples, per_call):
                ks = range(first, min(first + per_call, self.samples))
                noise = [self._tile_noise(tiles, i, c) for i in ks]
                more = self._calls(x, tiles, noise, len(ks))
                ys.append(more.reshape(len(ks), b, c, *y.shape[2:]))
            with self.timers.part("normalise"):
                spread = self._spread(torch.cat(ys))
            del ys, more
        del x
        with self.timers.part("normalise"):
            y = y.reshape(b, c, *y.shape[2:])
            y = self.norm.inverse(y.double().cpu(), inplace=True)
            y = torch.where(torch.isfinite(y), torch.minimum(torch.maximum(y, self.lo), self.hi), y)
            if spread is not None:
                y = torch.cat([y, spread.double().cpu()], dim=1)
            y = y.numpy().astype(self.work, copy=False)
        return [y[i] for i in range(len(tiles))]

    def _calls(self, x: torch.Tensor, tiles, noise: list, repeats: int) -> torch.Tensor:
        """Model-space SR of the images ``x`` (``repeats`` samples each, sample-major: ``noise`` holds one
        entry per sample), in calls of at most ``batch`` images; on the CPU, sample-major [repeats * N, ...]."""
        n = x.shape[0]
        per = max(1, self.batch // repeats)
        if n <= per:
            joined = None if noise[0] is None else torch.cat(noise, dim=noise[0].ndim - 4)
            return self._sr(x, tiles, joined, repeats)
        parts = []
        for i in range(0, n, per):
            sub = [None if z is None else z.narrow(z.ndim - 4, i, min(per, n - i)) for z in noise]
            joined = None if sub[0] is None else torch.cat(sub, dim=sub[0].ndim - 4)
            parts.append(self._sr(x[i:i + per], tiles, joined, repeats).reshape(repeats, -1, *x.shape[1:2],
                                                                                *self._hr(x)))
        return torch.cat(parts, dim=1).reshape(repeats * n, x.shape[1], *self._hr(x))

    def _hr(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[2] * self.scale, x.shape[3] * self.scale

    def _sr(self, x, tiles, noise, repeats: int) -> torch.Tensor:
        """One call; on GPU out-of-memory, two calls of half the images, and no tile size left at one image."""
        try:
            return self._model_sr(x, tiles, noise, repeats)
        except BaseException as exc:
            if not is_oom(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Outside the except block: the traceback (and the tensors its frames hold) is gone by now.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        n = x.shape[0]
        if n == 1:
            raise TileTooLarge(message)
        half = n // 2
        if self.batch > half * repeats:
            self.batch = max(1, half * repeats)
            self.progress.warn(f"out of GPU memory ({message}): batch reduced to {self.batch} image(s)")
        axis = None if noise is None else noise.ndim - 4
        first = None if noise is None else _images(noise, axis, repeats, 0, half)
        second = None if noise is None else _images(noise, axis, repeats, half, n)
        a = self._sr(x[:half], tiles, first, repeats).reshape(repeats, half, x.shape[1], *self._hr(x))
        b = self._sr(x[half:], tiles, second, repeats).reshape(repeats, n - half, x.shape[1], *self._hr(x))
        return torch.cat([a, b], dim=1).reshape(repeats * n, x.shape[1], *self._hr(x))

    def _model_sr(self, x, tiles, noise, repeats: int) -> torch.Tensor:
        """Model-space SR of ``x`` (``repeats`` samples of each image, sample-major), LR-consistent when asked
        (``lr_consistency`` back-projections)."""
        # Draws a sampler takes beyond the given noise come from this generator, seeded by position too.
        g = torch.Generator(device=self.device).manual_seed((self.seed * 1_000_003 + tiles[0].index) % 2**63)
        with self.timers.part("model"):
            y = self.runner.sr(x, steps=self.steps, sampler=self.sampler, generator=g, noise=noise, repeats=repeats)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        if self.lr_consistency:
            with self.timers.part("back-projection"):
                # Iterative back-projection with the project's own degradation: degrade(y) -> x.  Per tile,
                # in model space (linear in data units) before clamping; the tile overlap and the blend ramps
                # hide the tile edges, where the replicate-padded LR is not the raster's.
                lr = x.to(y.device, torch.float32).repeat(repeats, 1, 1, 1)
                for _ in range(self.lr_consistency):
                    y = y + upsample_bicubic(lr - downsample_bicubic(y, self.scale), self.scale)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
        return y

    # -- noise ------------------------------------------------------------------------
    def _noise(self, tiles, sample: int = 0) -> torch.Tensor | None:
        if self.draws == 0:
            return None
        t = tiles[0]
        c, lh, lw = self.model.latent_shape(t.h, t.w)
        per_draw = []
        for d in range(self.draws):
            per_draw.append(torch.stack([
                position_noise(self.seed, tile.y * lh // t.h, tile.x * lw // t.w, lh, lw, c,
                               draw=sample * SAMPLE_DRAWS + d)
                for tile in tiles]))
        # One draw fixes x_T ([B, c, h, w]); several fix every draw of a multi-step sampler ([draws, B, ...]).
        return per_draw[0] if self.draws == 1 else torch.stack(per_draw)

    def _tile_noise(self, tiles, sample: int, c: int) -> torch.Tensor | None:
        with self.timers.part("noise"):
            noise = self._noise(tiles, sample)
            if noise is not None and self.bandwise and c > 1:
                # A band-wise model sees every band as an image of its own; each band of a tile gets the
                # tile's noise, so the result does not depend on how many bands are run together.
                noise = noise.repeat_interleave(c, dim=noise.ndim - 4)
        return noise

    def _spread(self, ys: torch.Tensor) -> torch.Tensor:
        """[K, B, C, H, W] model-space samples -> [B, 1, H, W]: the standard deviation over the K samples
        (unbiased), root-mean-square over the bands, in the output's data units after its clamping."""
        v = self.norm.inverse(ys.to(torch.float64 if self.work == np.float64 else torch.float32))
        v = torch.minimum(torch.maximum(v, self.lo.to(v)), self.hi.to(v))
        return v.var(dim=0, unbiased=True).mean(dim=1, keepdim=True).sqrt()


def _images(noise: torch.Tensor, axis: int, repeats: int, start: int, stop: int) -> torch.Tensor:
    """Images ``start:stop`` of each of ``repeats`` sample-major blocks along ``axis`` of a noise tensor."""
    per = noise.shape[axis] // repeats
    blocks = [noise.narrow(axis, r * per + start, stop - start) for r in range(repeats)]
    return torch.cat(blocks, dim=axis)
