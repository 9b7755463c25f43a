"""Query-kontext encoder ("query gateway"): K learnable query tokens that cross-attend over
the text tokens, the source-image tokens and the region query, giving K kontext tokens in the
decoder's conditioning space.

The region query (a box, or a mask when one is given) enters as an extra channel of the source
image at latent resolution, so every source token knows whether it lies in the region.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import GatewayConfig
from .layers import Block, key_bias_from_mask, patchify, sincos_2d


class QueryGateway(nn.Module):
    def __init__(self, cfg: GatewayConfig, width: int, text_width: int, latent_channels: int, patch: int):
        super().__init__()
        self.patch = patch
        self.width = width
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, width) * 0.02)
        self.text_proj = nn.Linear(text_width, width)
        self.source_embed = nn.Linear((latent_channels + 1) * patch * patch, width)
        self.flag_embed = nn.Linear(2, width)
        self.blocks = nn.ModuleList(Block(width, cfg.heads, 4.0, self_attn=True, cross=True) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        text: torch.Tensor,  # (B, L, Wt)
        text_mask: torch.Tensor,  # (B, L) 1 = token
        source: torch.Tensor,  # (B, C, h, w), zeros when there is no source image
        region: torch.Tensor,  # (B, 1, h, w) in [0, 1], zeros when there is no region query
        flags: torch.Tensor,  # (B, 2): has_source, has_region
    ) -> torch.Tensor:
        B, _, h, w = source.shape
        p = self.patch
        src = self.source_embed(patchify(torch.cat([source, region], 1), p))  # (B, N, D)
        src = src + sincos_2d(h // p, w // p, self.width).to(device=src.device, dtype=src.dtype)[None]
        context = torch.cat([self.text_proj(text), src], 1)  # (B, L + N, D)
        src_bias = (1.0 - flags[:, :1]) * -1e4 * torch.ones(B, src.shape[1], dtype=src.dtype, device=src.device)  # drop absent sources
        bias = torch.cat([key_bias_from_mask(text_mask), src_bias], 1)  # (B, L + N)
        q = self.queries[None].expand(B, -1, -1) + self.flag_embed(flags)[:, None]  # (B, K, D)
        for block in self.blocks:
            q = block(q, context, bias)
        return self.norm(q)  # (B, K, D) kontext tokens
