"""The denoiser F(x_t, t, c): an LDM-style UNet on the latent grid that predicts x0.

Input: the noisy latent concatenated with the CondNet output.  The timestep,
the SR scale factor and the output (HR) size each get a sinusoidal embedding and
an MLP; the three embeddings are summed and added in every residual block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DenoiserConfig
from .blocks import AttentionBlock, Downsample, EmbeddingMLP, ResBlock, Upsample, conv3x3, group_norm, zero_module


class _Stage(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, cin, cout, emb_dim, cfg: DenoiserConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.norm_groups, zero_out=True)
        self.attn = AttentionBlock(cout, cfg.head_channels, cfg.norm_groups) if attention else None

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class LatentDenoiser(nn.Module):
    def __init__(self, latent_channels: int, cond_channels: int, cfg: DenoiserConfig):
        super().__init__()
        base = cfg.base_channels
        emb_dim = cfg.embed_mult * base
        self.levels = len(cfg.channel_mults)
        self.time_embed = EmbeddingMLP(base, emb_dim)
        self.scale_embed = EmbeddingMLP(base, emb_dim)
        self.size_embed = EmbeddingMLP(base, emb_dim, inputs=2)

        self.conv_in = conv3x3(latent_channels + cond_channels, base)
        widths = [base * m for m in cfg.channel_mults]
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips = [base]
        cin = base
        for level, width in enumerate(widths):
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stages.append(_Stage(cin, width, emb_dim, cfg, level in cfg.attention_levels))
                cin = width
                skips.append(cin)
            self.down.append(stages)
            if level < self.levels - 1:
                self.downsamplers.append(Downsample(cin))
                skips.append(cin)
        self.mid = nn.ModuleList([_Stage(cin, cin, emb_dim, cfg, True), _Stage(cin, cin, emb_dim, cfg, False)])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(self.levels)):
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stages.append(_Stage(cin + skips.pop(), widths[level], emb_dim, cfg, level in cfg.attention_levels))
                cin = widths[level]
            self.up.append(stages)
            if level > 0:
                self.upsamplers.append(Upsample(cin))
        self.norm_out = group_norm(cin, cfg.norm_groups)
        self.conv_out = zero_module(conv3x3(cin, latent_channels))

    @staticmethod
    def _per_sample(value, batch: int, device, width: int = 1) -> torch.Tensor:
        v = torch.as_tensor(value, device=device, dtype=torch.float32)
        if v.ndim == 0 or (width > 1 and v.ndim == 1 and v.shape[0] == width):
            v = v.expand(batch, *([width] if width > 1 else []))
        return v.reshape(batch, width) if width > 1 else v.reshape(batch)

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor, scale, out_size) -> torch.Tensor:
        """``t``: [B] or scalar timesteps; ``scale``: SR factor; ``out_size``: (H, W) of the HR output."""
        b = x_t.shape[0]
        emb = (self.time_embed(self._per_sample(t, b, x_t.device))
               + self.scale_embed(self._per_sample(scale, b, x_t.device))
               + self.size_embed(self._per_sample(out_size, b, x_t.device, width=2)))
        h = self.conv_in(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))
        skips = [h]
        for level, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsamplers[level](h)
                skips.append(h)
        for stage in self.mid:
            h = stage(h, emb)
        for i, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            if i < self.levels - 1:
                h = self.upsamplers[i](h, size=skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))
