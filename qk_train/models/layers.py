"""Building blocks shared by the networks: attention, MLP, embeddings, patching.

Attention is written as plain MatMul / Softmax so that every exported graph uses ops that
ONNX Runtime, OpenVINO and TensorRT all run, and so the INT8 quantizer sees the matmuls.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_bias: torch.Tensor | None = None,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), context (B, S, Dc), key_bias (B, S) additive (0 keep, -1e4 drop).
        kv (B, S, 2D): `self.kv(context)` computed beforehand (then `context` is not read)."""
        B, T, D = x.shape
        if kv is None:
            kv = self.kv(x if context is None else context)
        S = kv.shape[1]
        q = self.q(x).reshape(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k, v = kv.reshape(B, S, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, S)
        if key_bias is not None:
            scores = scores + key_bias[:, None, None, :]
        weights = torch.softmax(scores, dim=-1)
        y = torch.matmul(weights, v)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def key_bias_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) with 1 = attend, 0 = padding -> additive bias."""
    return (1.0 - mask.to(torch.float32)) * -1e4


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block: optional self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, self_attn: bool = True, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if self_attn else None
        self.attn = Attention(dim, heads) if self_attn else None
        self.norm_c = nn.LayerNorm(dim) if cross else None
        self.cross = Attention(dim, heads) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, context=None, context_bias=None, self_bias=None):
        if self.cross is not None:
            x = x + self.cross(self.norm_c(x), context, context_bias)
        if self.attn is not None:
            x = x + self.attn(self.norm1(x), key_bias=self_bias)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- embeddings


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """positions (N,) float -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Position embedding of a token grid, (grid_h * grid_w, dim), row-major.

    Coordinates are normalised to the image (token centres in [0, 1] scaled by 64), so the
    same place in the picture gets the same embedding at every resolution bucket.
    """
    ys = (torch.arange(grid_h, dtype=torch.float32) + 0.5) / grid_h * 64.0
    xs = (torch.arange(grid_w, dtype=torch.float32) + 0.5) / grid_w * 64.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    emb_y = sincos_1d(yy.reshape(-1), dim // 2, max_period=1000.0)
    emb_x = sincos_1d(xx.reshape(-1), dim // 2, max_period=1000.0)
    return torch.cat([emb_y, emb_x], dim=-1)  # (N, dim)


class TimestepEmbedding(nn.Module):
    """sigma in [0, 1] -> (B, dim)."""

    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos_1d(sigma * 1000.0, self.freq_dim))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), tokens row-major."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """(B, N, C*p*p) -> (B, C, H, W)."""
    B = tokens.shape[0]
    x = tokens.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(B, C, H, W)


def tokens_to_map(values: torch.Tensor, grid_h: int, grid_w: int, p: int) -> torch.Tensor:
    """Per-token values (B, N) -> (B, 1, grid_h*p, grid_w*p), each token's value over its patch."""
    B = values.shape[0]
    m = values.reshape(B, 1, grid_h, 1, grid_w, 1).expand(B, 1, grid_h, p, grid_w, p)
    return m.reshape(B, 1, grid_h * p, grid_w * p)


def map_to_tokens(mask: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, N): the max over each token's patch."""
    return F.max_pool2d(mask, kernel_size=p, stride=p).flatten(1)
