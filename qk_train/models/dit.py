"""The one decoder: a DiT with adaLN-Zero timestep conditioning, used for both generation and
editing.

Each block: self-attention over the image tokens (dense, or in w x w windows for the sparse
`window` mode), cross-attention to the conditioning tokens (text + kontext), and an MLP; the
timestep, the pooled text and the condition flags modulate every block (adaLN-Zero). The source
latent enters by channel concatenation (InstructPix2Pix) or as extra tokens in the sequence
(FLUX.1 Kontext), chosen by `source_mode`. The CMG's gate map enters as a channel too, so the
decoder knows where it is meant to change the image.

`active` (B, M) token indices run the blocks on those tokens only (the sparse `region` mode):
the output then holds their velocities only, and the caller keeps the rest on the source path.

With `step_size_cond` the DiT also takes the step size d (B,) in sigma units (the sampler's
sigma - sigma_next; 0: the instantaneous velocity), embedded like sigma and added to sigma's
embedding: a shortcut model (Frans et al. 2024) predicts the mean velocity over a step of size d.
The embedding's output layer starts at zero, so a trained model with it switched on gives the
same outputs as without, to the bit, until it is trained.

A `Route` (training only; TREAD, Krause et al. 2025) runs blocks `start .. end - 1` on a subset of
the image tokens: the kept tokens attend among themselves (and to the source tokens in `sequence`
mode, which are never routed), the others skip those blocks and rejoin unchanged before block
`end`, so the later blocks and the final layer still predict every token. Without a route (every
evaluation, sampler and exported graph) every token runs every block, as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DecoderConfig
from .layers import MLP, Attention, TimestepEmbedding, patchify, sincos_2d, unpatchify


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, T, D); shift, scale (B, 1, D), already broadcastable (no per-use Unsqueeze in the graph)."""
    return x * (1 + scale) + shift


def window_partition(x: torch.Tensor, grid_h: int, grid_w: int, w: int) -> torch.Tensor:
    """(B, N, D) row-major tokens -> (B * nW, w*w, D) windows."""
    B, _, D = x.shape
    x = x.reshape(B, grid_h // w, w, grid_w // w, w, D).permute(0, 1, 3, 2, 4, 5)  # (B, gh/w, gw/w, w, w, D)
    return x.reshape(-1, w * w, D)


def window_merge(x: torch.Tensor, B: int, grid_h: int, grid_w: int, w: int) -> torch.Tensor:
    """(B * nW, w*w, D) -> (B, N, D)."""
    D = x.shape[-1]
    x = x.reshape(B, grid_h // w, grid_w // w, w, w, D).permute(0, 1, 3, 2, 4, 5)  # (B, gh/w, w, gw/w, w, D)
    return x.reshape(B, grid_h * grid_w, D)


@dataclass(frozen=True)
class Route:
    """Token routing for one training forward: image tokens not in `keep` skip blocks start..end-1."""

    keep: torch.Tensor  # (B, K) indices of the image tokens that run the routed blocks, K < N
    start: int  # first routed block
    end: int  # blocks start..end-1 are routed; the routed tokens rejoin before block `end`


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm_c = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, c, cond_kv, cond_bias, window: int = 0, grid: tuple[int, int] = (0, 0)):
        """x (B, T, D), c (B, D), cond_kv (B, S, 2D): this block's cross-attention keys and values of
        the conditioning tokens (`self.cross.kv(cond)`), cond_bias (B, S)."""
        # One Unsqueeze for all six (B, 1, D) modulations: the exported step has fewer small ops.
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)  # 6 x (B, 1, D)
        h = modulate(self.norm1(x), shift1, scale1)
        if window:
            B = x.shape[0]
            gh, gw = grid
            img = window_partition(h[:, : gh * gw], gh, gw, window)  # (B*nW, w*w, D)
            h = window_merge(self.attn(img), B, gh, gw, window)
        else:
            h = self.attn(h)
        x = x + gate1 * h
        x = x + self.cross(self.norm_c(x), None, cond_bias, kv=cond_kv)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c)[:, None].chunk(2, dim=-1)  # 2 x (B, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DecoderConfig, latent_channels: int, text_width: int):
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.width, cfg.patch, latent_channels
        self.channels = C
        if cfg.source_mode == "channel":
            self.x_embed = nn.Linear((2 * C + 2) * p * p, D)  # x_t, source, region, gate
        else:
            self.x_embed = nn.Linear((C + 1) * p * p, D)  # x_t, gate
            self.source_embed = nn.Linear((C + 1) * p * p, D)  # source, region
            self.source_type = nn.Parameter(torch.zeros(D))
        self.t_embed = TimestepEmbedding(D)
        if cfg.step_size_cond:
            self.d_embed = TimestepEmbedding(D)  # the step size, embedded like sigma
            nn.init.zeros_(self.d_embed.mlp[2].weight)
            nn.init.zeros_(self.d_embed.mlp[2].bias)
        self.text_proj = nn.Linear(text_width, D)
        self.pool_proj = nn.Linear(text_width, D)
        self.flag_embed = nn.Linear(2, D)
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(D, C * p * p)

    def forward(
        self,
        x: torch.Tensor,  # (B, C, h, w) noisy latent x_t
        sigma: torch.Tensor,  # (B,) noise level in [0, 1]
        text: torch.Tensor,  # (B, L, Wt)
        text_mask: torch.Tensor,  # (B, L)
        kontext: torch.Tensor | None,  # (B, K, D) or None (no gateway)
        source: torch.Tensor,  # (B, C, h, w)
        region: torch.Tensor,  # (B, 1, h, w)
        gate_map: torch.Tensor,  # (B, 1, h, w) the CMG's gate at latent resolution
        flags: torch.Tensor,  # (B, 2)
        active: torch.Tensor | None = None,  # (B, M) token indices: run these tokens only
        *,
        cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # `condition`'s output, made beforehand
        step_size: torch.Tensor | None = None,  # (B,) d in sigma units; None: 0 (needs `step_size_cond`)
        route: Route | None = None,  # training only: tokens that skip the middle blocks
    ) -> torch.Tensor:
        """One velocity prediction: `condition` (unless `cond` is given: then text, text_mask,
        kontext and flags are not read) then `step`. Exported graphs call this rather than
        `step`, so that their nodes keep the `/decoder/...` module names."""
        if cond is None:
            cond = self.condition(text, text_mask, kontext, flags)
        return self.step(x, sigma, *cond, source, region, gate_map, active, step_size=step_size, route=route)

    def condition(
        self,
        text: torch.Tensor,  # (B, L, Wt)
        text_mask: torch.Tensor,  # (B, L)
        kontext: torch.Tensor | None,  # (B, K, D) or None (no gateway)
        flags: torch.Tensor,  # (B, 2)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every denoising step of one edit shares, so a runtime computes it once per edit:
        the cross-attention keys and values of the text + kontext tokens for every block (one
        matrix product with the blocks' `cross.kv` weights side by side), their padding bias, and
        the pooled-text + flags part of the adaLN conditioning.
        -> cond_kv (B, S, depth * 2D), block i's in [..., 2Di : 2D(i+1)]; cond_bias (B, S); cond_emb (B, D)."""
        B = text.shape[0]
        mask = text_mask.to(text.dtype)
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # (B, Wt)
        cond_emb = self.pool_proj(pooled) + self.flag_embed(flags)  # (B, D)
        cond = self.text_proj(text)  # (B, L, D)
        cond_bias = (1.0 - mask) * -1e4
        if kontext is not None:
            cond = torch.cat([cond, kontext], 1)  # (B, L + K, D)
            cond_bias = torch.cat([cond_bias, torch.zeros(B, kontext.shape[1], dtype=text.dtype, device=text.device)], 1)
        weight = torch.cat([block.cross.kv.weight for block in self.blocks], 0)  # (depth * 2D, D)
        bias = torch.cat([block.cross.kv.bias for block in self.blocks], 0)
        return F.linear(cond, weight, bias), cond_bias, cond_emb

    def step(
        self,
        x: torch.Tensor,  # (B, C, h, w) noisy latent x_t
        sigma: torch.Tensor,  # (B,) noise level in [0, 1]
        cond_kv: torch.Tensor,  # (B, S, depth * 2D) from `condition`
        cond_bias: torch.Tensor,  # (B, S)
        cond_emb: torch.Tensor,  # (B, D)
        source: torch.Tensor,  # (B, C, h, w)
        region: torch.Tensor,  # (B, 1, h, w)
        gate_map: torch.Tensor,  # (B, 1, h, w)
        active: torch.Tensor | None = None,  # (B, M) token indices: run these tokens only
        *,
        step_size: torch.Tensor | None = None,  # (B,) d in sigma units; None: 0 (needs `step_size_cond`)
        route: Route | None = None,  # training only: tokens that skip blocks route.start..route.end-1
    ) -> torch.Tensor:
        """The DiT's velocity at x_t given the edit's `condition`; with `step_size_cond`, the mean
        velocity over a step of size `step_size` (0 or None: the instantaneous one). With `route`,
        only `route.keep`'s image tokens run the routed blocks (see the module docstring)."""
        B, C, h, w = x.shape
        p, D = self.cfg.patch, self.cfg.width
        gh, gw = h // p, w // p
        pos = sincos_2d(gh, gw, D).to(device=x.device, dtype=x.dtype)  # (N, D)
        if self.cfg.source_mode == "channel":
            tokens = self.x_embed(patchify(torch.cat([x, source, region, gate_map], 1), p)) + pos[None]  # (B, N, D)
        else:
            tokens = self.x_embed(patchify(torch.cat([x, gate_map], 1), p)) + pos[None]
        if active is not None:
            tokens = torch.gather(tokens, 1, active[:, :, None].expand(-1, -1, D))  # (B, M, D)
        n_img = tokens.shape[1]
        if self.cfg.source_mode == "sequence":
            src = self.source_embed(patchify(torch.cat([source, region], 1), p)) + pos[None] + self.source_type
            if active is not None:
                src = torch.gather(src, 1, active[:, :, None].expand(-1, -1, D))
            tokens = torch.cat([tokens, src], 1)  # (B, 2M, D)

        c = self.t_embed(sigma)  # (B, D)
        if self.cfg.step_size_cond:
            c = c + self.d_embed(torch.zeros_like(sigma) if step_size is None else step_size)  # exactly c while untrained
        elif step_size is not None:
            raise ValueError("step_size given to a DiT without step-size conditioning; set decoder.step_size_cond=true "
                             "(and train it) or leave step_size out")
        c = c + cond_emb
        window = self.cfg.attn_window if active is None and self.cfg.source_mode == "channel" else 0
        if route is not None:
            if active is not None or window:
                raise ValueError("route needs all image tokens and dense attention: not with `active` or "
                                 "decoder.attn_window > 0")
            if not 0 <= route.start < route.end <= len(self.blocks):
                raise ValueError(f"route blocks {route.start}..{route.end - 1} are not blocks of this "
                                 f"{len(self.blocks)}-block DiT")
            keep = route.keep[:, :, None].expand(-1, -1, D)  # (B, K, D)
            n_keep = keep.shape[1]
        # one piece per block; a split (not slices) so that backward concatenates the pieces'
        # gradients instead of zero-filling a full-size buffer per block
        for i, (block, block_kv) in enumerate(zip(self.blocks, cond_kv.split(2 * D, dim=-1))):
            if route is not None and i == route.start:
                full = tokens[:, :n_img]  # (B, N, D): what the routed tokens rejoin with
                tokens = torch.cat([torch.gather(full, 1, keep), tokens[:, n_img:]], 1)  # (B, K (+ N), D)
            tokens = block(tokens, c, block_kv, cond_bias, window, (gh, gw))
            if route is not None and i == route.end - 1:
                img = full.scatter(1, keep, tokens[:, :n_keep])  # (B, N, D): the kept tokens back in place
                tokens = torch.cat([img, tokens[:, n_keep:]], 1)  # (B, N (+ N), D)
        out = self.final(tokens[:, :n_img], c)  # (B, N or M, C*p*p)
        if active is not None:
            return out  # (B, M, C*p*p): velocities of the active tokens only
        return unpatchify(out, p, C, h, w)  # (B, C, h, w)
