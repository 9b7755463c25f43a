"""Cross-Modal Gate (CMG): from the kontext tokens and the source-image tokens, a per-token
gate m in [0, 1] saying where the edit may change the image.

It runs once per edit, before the denoising loop, so a runtime knows the active region before
it starts (the `region` sparse mode runs the decoder on those tokens only). The decoder's update
is then v = m * v_pred + (1 - m) * v_back_to_source; for text-to-image, m = 1. Trained with a
BCE loss against the true change mask at token resolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import GateConfig
from .layers import Block, patchify, sincos_2d


class CrossModalGate(nn.Module):
    def __init__(self, cfg: GateConfig, width: int, latent_channels: int, patch: int):
        super().__init__()
        self.patch = patch
        self.width = width
        self.source_embed = nn.Linear((latent_channels + 1) * patch * patch, width)
        self.blocks = nn.ModuleList(Block(width, cfg.heads, 2.0, self_attn=True, cross=True) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(
        self,
        context: torch.Tensor,  # (B, K, D) kontext tokens (or projected text without a gateway)
        context_bias: torch.Tensor | None,  # (B, K) additive, or None
        source: torch.Tensor,  # (B, C, h, w)
        region: torch.Tensor,  # (B, 1, h, w)
    ) -> torch.Tensor:
        _, _, h, w = source.shape
        p = self.patch
        x = self.source_embed(patchify(torch.cat([source, region], 1), p))  # (B, N, D)
        x = x + sincos_2d(h // p, w // p, self.width).to(device=x.device, dtype=x.dtype)[None]
        for block in self.blocks:
            x = block(x, context, context_bias)
        return self.head(self.norm(x)).squeeze(-1)  # (B, N) gate logits
