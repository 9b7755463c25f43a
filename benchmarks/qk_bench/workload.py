"""What every configuration runs: the same edit scenes, prompts, seeds and graph inputs.

Edit scenes are ShapeWorld test-split colour edits (`make_edit("test", i, kind="colour")`) at the
model's side, with the box replaced by a square covering about `fraction` of the image, centred
on the edited object (5 % is about one object, 100 % the whole image). The decoder's work in the
`region` mode follows the CMG's active tokens, which the box guides but does not fix, so results
record `active_tokens` beside the fraction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INSTRUCTION_INDEX = 0  # test-split edit number used for the timing scenes


@dataclass(frozen=True)
class EditJob:
    image: np.ndarray  # (S, S, 3) uint8
    instruction: str
    box: tuple[int, int, int, int]
    fraction: float  # requested share of the image
    box_fraction: float  # the box's actual share


def region_box(side: int, fraction: float, centre: tuple[float, float]) -> tuple[int, int, int, int]:
    """A square box of about `fraction` of a side x side image around `centre`, kept inside."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"region fraction {fraction}; must lie in (0, 1]")
    k = min(side, max(1, round(side * math.sqrt(fraction))))
    cx, cy = centre
    x0 = int(min(max(round(cx - k / 2), 0), side - k))
    y0 = int(min(max(round(cy - k / 2), 0), side - k))
    return x0, y0, x0 + k, y0 + k


def edit_job(side: int, fraction: float, index: int = INSTRUCTION_INDEX) -> EditJob:
    from qk_train.data.shapeworld import make_edit  # numpy only

    sample = make_edit("test", index, side, kind="colour")
    x0, y0, x1, y1 = sample.box
    box = region_box(side, fraction, ((x0 + x1) / 2, (y0 + y1) / 2))
    area = (box[2] - box[0]) * (box[3] - box[1]) / (side * side)
    return EditJob(sample.source, sample.instruction, box, fraction, area)


def prompt(side: int, index: int = 0) -> str:
    from qk_train.data.shapeworld import make_generation

    return make_generation("test", index, side)[1]


@dataclass(frozen=True)
class Tensor:
    """A graph input as the manifest lists it."""

    name: str
    dtype: str
    shape: tuple


def manifest_tensors(entries: list[dict]) -> list[Tensor]:
    return [Tensor(e["name"], e["dtype"], tuple(e["shape"])) for e in entries]


def graph_feeds(inputs, batch: int, active: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one call of a graph, from its tensor specs (`name`, `dtype`, `shape` with
    "batch" / "active" axes): normals for activations, a 0.5 noise level, eight text tokens,
    a cross-attention bias that keeps the first eight,
    regions / gates / flags of ones, and the first `active` token indices."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in inputs:
        shape = [batch if d == "batch" else (active or 1) if d == "active" else int(d) for d in t.shape]
        if t.name == "active":
            feeds[t.name] = np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy()
        elif t.name in ("text_mask", "attention_mask"):
            mask = np.zeros(shape, np.float32)
            mask[:, : min(8, shape[1])] = 1.0
            feeds[t.name] = mask.astype(np.int64) if t.dtype == "int64" else mask
        elif t.name == "cond_bias":  # the first eight conditioning tokens attended, the rest masked (timing only)
            bias = np.full(shape, -1e4, np.float32)
            bias[:, : min(8, shape[1])] = 0.0
            feeds[t.name] = bias
        elif t.name == "input_ids":
            feeds[t.name] = rng.integers(4, 100, shape).astype(np.int64)
        elif t.name == "sigma":
            feeds[t.name] = np.full(shape, 0.5, np.float32)
        elif t.name in ("region", "gate_map", "flags"):
            feeds[t.name] = np.ones(shape, np.float32)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> float:
    """PSNR in dB of two uint8 images; identical images give `cap`."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return cap
    return min(cap, 10.0 * math.log10(255.0 ** 2 / mse))
