"""Shared helpers for the model/diffusion/weights tests (not a conftest: the lead owns that)."""
from __future__ import annotations

import torch
import torch.nn as nn


class CallCounter(nn.Module):
    """Wraps a denoiser and counts its forward calls."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def seeded_model(config, seed: int = 0, with_encoder: bool = True):
    from lcmsr.model import build_model

    torch.manual_seed(seed)
    model = build_model(config, with_encoder=with_encoder).eval()
    # The UNet's output layers and the decoder's tail start at zero (so an untrained model is
    # bicubic); give them weights so a test can tell one output from another.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model
