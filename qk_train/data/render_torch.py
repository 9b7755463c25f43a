"""ShapeWorld scenes rendered in batches on any torch device, pixel for pixel as `shapeworld.render`.

The layouts (`shapeworld.edit_layout`, `generation_layout`) are drawn by numpy on the CPU; this
module turns many of them into pixels at once on the training device:

- the texture is `qk_runtime.noise.portable_normal` reimplemented with torch int64 arithmetic
  (SplitMix64: multiplication wraps modulo 2^64 as in numpy's uint64; a logical right shift is an
  arithmetic one with the sign-extended bits masked off) and Box-Muller in float64, rounded to
  float32, times float32 TEXTURE_SIGMA, then ``rint(base + texture)`` in float64, clipped to uint8;
- objects are rasterised with `object_mask`'s inequalities in float64 (pixel centres k + 0.5), in
  scene order, so a later object paints over an earlier one as in `render`;
- change masks are the pixels where source and target differ; boxes become masks by comparing
  pixel indices with their edges.

    from qk_train.data.render_torch import render_scenes, render_edits
    images = render_scenes([make_scene("train", i, 64) for i in range(512)], "cuda")  # (512, 64, 64, 3) uint8
    source, target, mask = render_edits([edit_layout("train", i, 64) for i in range(512)], "cuda")

All scenes of one call have the same side (a training batch is one resolution bucket).

Equality with numpy is tested on the CPU. On CUDA, float64 log1p/cos/sin may differ from the CPU's
in the last bit; a pixel could change only if that moved a value across a float32 rounding and
then across a rint boundary, which is not expected to be seen (not yet checked on a GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .shapeworld import MAX_OBJECTS, PALETTE, SHAPES, TEXTURE_SIGMA, EditLayout, Scene, background_rgb

# SplitMix64 constants as signed int64 (the same 64 bits as the uint64 constants of qk_runtime.noise)
_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_SHAPE_CODE = {name: k for k, name in enumerate(SHAPES)}
_PALETTE_RGB = np.asarray(list(PALETTE.values()), dtype=np.uint8)  # (colours, 3)
_COLOUR_CODE = {name: k for k, name in enumerate(PALETTE)}


# --------------------------------------------------------------------------- portable noise


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values seen as uint64."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count) int64: the first `count` SplitMix64 outputs of each seed of `seeds` ((N,) int64,
    a uint64 seed stored in its two's complement bits); the bits equal `qk_runtime.noise.splitmix64`."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    k = torch.arange(1, count + 1, dtype=torch.int64, device=seeds.device)  # (count,)
    state = seeds.to(torch.int64)[:, None] + k[None, :] * _GOLDEN  # (N, count), wraps modulo 2^64
    z = (state ^ _shr(state, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def portable_normal(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) float32: `qk_runtime.noise.portable_normal(seed, shape)` for every seed of `seeds`."""
    n = math.prod(shape)
    pairs = (n + 1) // 2
    bits = _shr(splitmix64(seeds, 2 * pairs), 11)  # (N, 2 * pairs), < 2^53: exact in float64
    u = bits.to(torch.float64) * (2.0 ** -53)
    u1, u2 = u[:, 0::2], u[:, 1::2]  # (N, pairs)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))
    theta = (2.0 * math.pi) * u2
    z = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).reshape(len(seeds), 2 * pairs)
    return z[:, :n].to(torch.float32).reshape(len(seeds), *shape)


def seed_tensor(seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) int64 holding the bits of uint64 seeds (Python ints, any size: taken modulo 2^64)."""
    return torch.tensor([_signed(int(s)) for s in seeds], dtype=torch.int64, device=device)


def backgrounds(seeds: torch.Tensor, base: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side, side, 3) uint8: base colours ((N, 3)) plus each seed's texture, as `render` draws them."""
    tex = portable_normal(seeds, (side, side, 3)) * torch.tensor(TEXTURE_SIGMA, dtype=torch.float32)  # float32
    img = torch.round(base.to(torch.float64)[:, None, None, :] + tex.to(torch.float64))  # half to even, like rint
    return img.clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class ScenePack:
    """N scenes of one side as numpy arrays (cheap to pickle, one host-to-device copy each)."""

    side: int
    seeds: np.ndarray  # (N,) int64: texture seeds (uint64 bits)
    base: np.ndarray  # (N, 3) uint8 background colours
    centre: np.ndarray  # (N, K, 2) float64 (cx, cy)
    radius: np.ndarray  # (N, K) float64
    shape: np.ndarray  # (N, K) int8: index in SHAPES, -1 for an empty slot
    colour: np.ndarray  # (N, K) int8: index in PALETTE


def pack_scenes(scenes: Sequence[Scene]) -> ScenePack:
    """Describe `scenes` (all of one side) as arrays; slot k holds each scene's k-th object."""
    if not scenes:
        raise ValueError("pack_scenes needs at least one scene")
    sides = sorted({s.side for s in scenes})
    if len(sides) != 1:
        raise ValueError(f"scenes rendered together must share one side; got sides {sides}: render each side apart")
    n, k = len(scenes), max(MAX_OBJECTS, max(len(s.objects) for s in scenes))
    centre = np.zeros((n, k, 2), np.float64)
    radius = np.zeros((n, k), np.float64)
    shape = np.full((n, k), -1, np.int8)
    colour = np.zeros((n, k), np.int8)
    for i, scene in enumerate(scenes):
        for j, o in enumerate(scene.objects):
            centre[i, j] = (o.cx, o.cy)
            radius[i, j] = o.r
            shape[i, j] = _SHAPE_CODE[o.shape]
            colour[i, j] = _COLOUR_CODE[o.colour]
    seeds = np.array([_signed(s.texture_seed) for s in scenes], dtype=np.int64)
    base = np.array([background_rgb(s.background) for s in scenes], dtype=np.uint8)
    return ScenePack(sides[0], seeds, base, centre, radius, shape, colour)


def object_masks(centre: torch.Tensor, radius: torch.Tensor, shape: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side, side) bool: `shapeworld.object_mask` of one object per row (centre (N, 2), radius (N,),
    shape (N,) as an index in SHAPES; -1 gives an empty mask), in float64 with the same inequalities."""
    c = torch.arange(side, dtype=torch.float64, device=centre.device) + 0.5  # pixel centres
    dx = c[None, None, :] - centre[:, 0, None, None].to(torch.float64)  # (N, 1, side)
    dy = c[None, :, None] - centre[:, 1, None, None].to(torch.float64)  # (N, side, 1)
    r = radius.to(torch.float64)[:, None, None]  # (N, 1, 1)
    adx, ady = dx.abs(), dy.abs()
    code = shape[:, None, None]
    circle = (dx * dx + dy * dy <= r * r) & (code == _SHAPE_CODE["circle"])  # (N, side, side)
    square = (adx <= r) & (ady <= r) & (code == _SHAPE_CODE["square"])
    diamond = (adx + ady <= r) & (code == _SHAPE_CODE["diamond"])
    triangle = (dy <= r) & (adx <= (dy + r) / 2.0) & (code == _SHAPE_CODE["triangle"])
    return circle | square | diamond | triangle


def paint(images: torch.Tensor, pack: ScenePack) -> torch.Tensor:
    """Paint `pack`'s objects, slot by slot, over `images` ((N, side, side, 3) uint8, e.g. `backgrounds`)."""
    device = images.device
    centre = torch.from_numpy(pack.centre).to(device)
    radius = torch.from_numpy(pack.radius).to(device)
    shape = torch.from_numpy(pack.shape).to(device=device, dtype=torch.int64)
    rgb = torch.from_numpy(_PALETTE_RGB).to(device)[torch.from_numpy(pack.colour).to(device=device, dtype=torch.int64)]  # (N, K, 3)
    for k in range(pack.shape.shape[1]):
        m = object_masks(centre[:, k], radius[:, k], shape[:, k], pack.side)  # (N, side, side)
        images = torch.where(m[..., None], rgb[:, k, None, None, :], images)
    return images


def render_pack(pack: ScenePack, device: torch.device | str) -> torch.Tensor:
    """(N, side, side, 3) uint8 on `device`: every scene of `pack` as `shapeworld.render` draws it."""
    device = torch.device(device)
    seeds = torch.from_numpy(pack.seeds).to(device)
    base = torch.from_numpy(pack.base).to(device)
    return paint(backgrounds(seeds, base, pack.side), pack)


def render_scenes(scenes: Sequence[Scene], device: torch.device | str) -> torch.Tensor:
    """(N, side, side, 3) uint8 on `device`, equal to ``np.stack([render(s) for s in scenes])``."""
    return render_pack(pack_scenes(scenes), device)


def render_edits(layouts: Sequence[EditLayout], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, target, mask) on `device`: (N, side, side, 3) uint8 twice and (N, side, side) bool, equal
    to `shapeworld.render_edit`'s arrays for every layout. Source and target share one texture."""
    device = torch.device(device)
    sources = pack_scenes([e.source_scene for e in layouts])
    targets = pack_scenes([e.target_scene for e in layouts])
    background = backgrounds(torch.from_numpy(sources.seeds).to(device), torch.from_numpy(sources.base).to(device),
                             sources.side)
    source, target = paint(background, sources), paint(background, targets)
    return source, target, (source != target).any(dim=-1)


def box_masks(boxes: np.ndarray | Sequence[tuple[int, int, int, int]], side: int, device: torch.device | str) -> torch.Tensor:
    """(N, side, side) bool: True inside each box (x0, y0, x1, y1), x1/y1 exclusive; boxes (N, 4) ints."""
    boxes = torch.from_numpy(np.asarray(boxes, dtype=np.int64).reshape(-1, 4)).to(device)
    idx = torch.arange(side, device=boxes.device)
    inside_x = (idx[None, :] >= boxes[:, 0, None]) & (idx[None, :] < boxes[:, 2, None])  # (N, side)
    inside_y = (idx[None, :] >= boxes[:, 1, None]) & (idx[None, :] < boxes[:, 3, None])
    return inside_y[:, :, None] & inside_x[:, None, :]
