"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), offline.

The weights come from ``lpips_alex.safetensors`` made by
``lcmsr.metrics.fetch_weights`` (torchvision ``alexnet().features`` layout plus
the five linear heads); where that file is absent (the plugin installed from its
zip) from the float16 copy bundled in ``resources/metric-weights/``, computed in
float32 all the same.  The module is frozen but differentiable with respect
to its inputs, so the stage-1 autoencoder can use it as its perceptual loss.

Bands: the network is an RGB network.  With 3 bands the image is taken as RGB;
with any other count each band is measured on its own as a grey image
replicated to three channels and the per-band distances are averaged.  We chose
per-band grey over band triplets because it treats every band alike for any
band count (4-band RGBN, 7-band Landsat) and needs no band order; pass a 3-band
selection (``bands=``) to get the paper's RGB number on multispectral data.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .fetch_weights import (ALEX_CHANNELS, ALEX_CONV_INDICES, LPIPS_FP16_TENSORS_SHA256, LPIPS_TENSORS_SHA256,
                            lpips_weights_file, tensor_digest)

# LPIPS v0.1 "ScalingLayer": maps inputs in [-1, 1] to the statistics the ImageNet
# backbone was trained on.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # as in the reference: x / (||x|| + eps), not a clamp


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features``, layer for layer (the weight file's key layout), in plain torch:
    the plugin's own PyTorch install has no torchvision, and LPIPS needs nothing else from it."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


def min_lpips_size() -> int:
    """Smallest H/W that survives AlexNet's strides (conv 11/4 and two 3/2 pools)."""
    n = 1
    while True:
        a = (n + 4 - 11) // 4 + 1
        b = (a - 3) // 2 + 1 if a >= 3 else 0
        if b >= 3 and (b - 3) // 2 + 1 >= 1:
            return n
        n += 1


MIN_LPIPS_SIZE = min_lpips_size()


class LPIPS(nn.Module):
    """``LPIPS()(x, y) -> [B]`` perceptual distance of images in [-1, 1] (lower is closer)."""

    def __init__(self, net: str = "alex", weights_dir: str | Path | None = None):
        super().__init__()
        if net != "alex":
            raise ValueError(f"LPIPS net {net!r} is not available; only 'alex' (AlexNet v0.1) is fetched")
        self.weights_file = path = lpips_weights_file(weights_dir)
        self.features = _alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(path)
        self.requires_grad_(False)
        self.eval()
        # LPIPS taps the ReLU after each conv; AlexNet's final max-pool is never used.
        self._relus = [i + 1 for i in ALEX_CONV_INDICES]

    def _load(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc}); delete it and run `make setup`") from exc
        digest = tensor_digest({k: v.numpy() for k, v in tensors.items()})
        if digest not in (LPIPS_TENSORS_SHA256, LPIPS_FP16_TENSORS_SHA256):
            raise ValueError(f"{path}: the tensors are not the pinned LPIPS AlexNet weights (digest {digest}); "
                             f"delete it and run `make setup`")
        tensors = {k: v.float() for k, v in tensors.items()}  # the float16 copy is computed in float32
        feats = {k[len("features."):]: v for k, v in tensors.items() if k.startswith("features.")}
        lins = {k[len("lins."):]: v for k, v in tensors.items() if k.startswith("lins.")}
        self.features.load_state_dict(feats, strict=True)
        self.lins.load_state_dict(lins, strict=True)

    def train(self, mode: bool = True):
        # Frozen metric: stays in eval mode even inside a model that is switched to train().
        return super().train(False)

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._relus:
                out.append(h)
                if i == self._relus[-1]:
                    break
        return out

    def _rgb_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self._layers(x), self._layers(y)
        total = 0
        for lin, a, b in zip(self.lins, fx, fy):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.ndim != 4:
            raise ValueError(f"LPIPS expects [B, C, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        m = MIN_LPIPS_SIZE
        if h < m or w < m:
            raise ValueError(f"LPIPS needs images of at least {m}x{m} pixels, got {h}x{w}")
        dtype = self.shift.dtype
        x, y = x.to(dtype), y.to(dtype)
        if c == 3:
            return self._rgb_distance(x, y)
        # Per-band grey (see module docstring): fold bands into the batch.
        xg = x.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)
        yg = y.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)
        return self._rgb_distance(xg, yg).view(b, c).mean(dim=1)


_CACHE: dict[tuple[str, str], LPIPS] = {}


def get_lpips(device: str | torch.device = "cpu", weights_dir: str | Path | None = None) -> LPIPS:
    """One shared frozen LPIPS per (device, weights file); built on first use."""
    key = (str(torch.device(device)), str(lpips_weights_file(weights_dir)))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(weights_dir=weights_dir).to(device)
    return _CACHE[key]
