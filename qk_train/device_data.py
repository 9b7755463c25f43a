"""ShapeWorld training batches rendered on the training device (`qk-train --data device`).

`make_batch` draws a batch in two halves: `plan_batch` (numpy: the bucket's side, each sample's
layout, text and box decision) and `render_batch` (numpy pixels, one sample at a time). Here the
plan is packed into arrays (`pack_plan`) and rendered by torch on the device in one go
(`build_batch`, with `qk_train.data.render_torch`), giving tensors equal to `make_batch`'s:

    device_make_batch(cfg, stage, step, rank, world, "cuda")  # == make_batch(...).to("cuda")

`DeviceBatches` draws the plans of the next steps ahead in worker processes (numpy layouts cost
about 0.5 ms per edit, which one Python thread cannot do for batches of 512 at GPU speed) and keeps
at most `depth` of them waiting, so the device does not wait for the CPU. User data
(`data.edit_manifest`, `data.caption_json`) is read from files and stays on the `--data cpu` path.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .config import ConfigError, ModelConfig
from .data.render_torch import ScenePack, backgrounds, box_masks, pack_scenes, paint
from .data.shapeworld import EditLayout, GenerationLayout
from .models.unified import Batch
from .train import BatchPlan, plan_batch


def check_device_data(cfg: ModelConfig) -> None:
    """`--data device` renders ShapeWorld only; user data files stay on the CPU path."""
    if cfg.data.edit_manifest or cfg.data.caption_json:
        raise ConfigError("--data device renders ShapeWorld scenes on the device; this config trains on user data "
                          f"(data.edit_manifest={cfg.data.edit_manifest!r}, data.caption_json={cfg.data.caption_json!r}): "
                          "use --data cpu")


# --------------------------------------------------------------------------- plan -> arrays -> tensors


@dataclass(frozen=True)
class PackedBatch:
    """A ShapeWorld batch plan as numpy arrays: what crosses from a worker to the training process."""

    side: int
    is_edit: np.ndarray  # (B,) bool
    texts: list[str]
    targets: ScenePack  # B scenes: the edit's target or the generation's scene, in batch order
    sources: ScenePack | None  # the source scenes of the edits, in batch order (None: no edit)
    boxes: np.ndarray  # (B, 4) int64 region boxes, x1/y1 exclusive
    keep_box: np.ndarray  # (B,) bool: the region query is the box (else empty)


def pack_plan(plan: BatchPlan) -> PackedBatch:
    targets, sources, boxes = [], [], np.zeros((len(plan.samples), 4), np.int64)
    for i, s in enumerate(plan.samples):
        if isinstance(s.layout, EditLayout):
            targets.append(s.layout.target_scene)
            sources.append(s.layout.source_scene)
            boxes[i] = s.layout.box
        elif isinstance(s.layout, GenerationLayout):
            targets.append(s.layout.scene)
        else:
            raise ValueError("pack_plan packs ShapeWorld layouts; this plan holds user data (use render_batch)")
    return PackedBatch(
        side=plan.side,
        is_edit=np.array([s.is_edit for s in plan.samples], dtype=bool),
        texts=[s.text for s in plan.samples],
        targets=pack_scenes(targets),
        sources=pack_scenes(sources) if sources else None,
        boxes=boxes,
        keep_box=np.array([s.keep_box for s in plan.samples], dtype=bool),
    )


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1], as `train.to_tensor` computes it."""
    return (images.to(torch.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def build_batch(packed: PackedBatch, device: torch.device | str) -> Batch:
    """The `Batch` of a packed plan, rendered on `device`; equal to `render_batch` of the same plan."""
    device = torch.device(device)
    side, t = packed.side, packed.targets
    background = backgrounds(torch.from_numpy(t.seeds).to(device), torch.from_numpy(t.base).to(device), side)
    target = paint(background, t)  # (B, side, side, 3) uint8
    source = torch.zeros_like(target)  # generation samples: zeros, as make_batch
    change = torch.ones(target.shape[:3], dtype=torch.bool, device=device)  # (B, side, side)
    is_edit = torch.from_numpy(packed.is_edit).to(device)
    if packed.sources is not None:
        edits = torch.from_numpy(np.flatnonzero(packed.is_edit)).to(device)  # (E,), known on the host: no sync
        edit_source = paint(background[edits], packed.sources)  # same texture as the target
        source[edits] = edit_source
        change[edits] = (edit_source != target[edits]).any(dim=-1)
    region = box_masks(packed.boxes, side, device) & torch.from_numpy(packed.keep_box).to(device)[:, None, None]
    return Batch(
        target=_to_unit(target),
        source=_to_unit(source),
        change=change.to(torch.float32)[:, None],
        region=region.to(torch.float32)[:, None],
        is_edit=is_edit.to(torch.float32),
        texts=list(packed.texts),
    )


def device_make_batch(cfg: ModelConfig, stage: str, step: int, rank: int, world: int, device: torch.device | str,
                      size: int | None = None) -> Batch:
    """`make_batch(cfg, stage, step, rank, world, size)` with its pixels rendered on `device`."""
    check_device_data(cfg)
    return build_batch(pack_plan(plan_batch(cfg, stage, step, rank, world, size)), device)


# --------------------------------------------------------------------------- drawing ahead


def _packed(cfg: ModelConfig, stage: str, step: int, rank: int, world: int) -> PackedBatch:
    return pack_plan(plan_batch(cfg, stage, step, rank, world))


def _worker_init(parent: int) -> None:
    """Ctrl-C goes to the training process only; a worker whose parent died (SIGKILL) exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class DeviceBatches:
    """The batches of one rank, rendered on `device`, with the plans of the next `depth` steps drawn
    ahead by `workers` processes (0: drawn in this process when asked, nothing ahead).

        with DeviceBatches(cfg, rank, world, "cuda", workers=4) as batches:
            batch = batches.get("main", step, total)  # total: the stage's last step + 1 (no plans past it)

    Workers are started with "spawn", so a script that makes one needs the usual
    ``if __name__ == "__main__":`` guard (qk-train has it).
    """

    def __init__(self, cfg: ModelConfig, rank: int, world: int, device: torch.device | str, *, workers: int = 4,
                 depth: int | None = None):
        check_device_data(cfg)
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = torch.device(device)
        self.workers = workers
        self.depth = depth if depth is not None else 2 * workers
        self._pending: collections.deque[tuple[tuple[str, int], Future]] = collections.deque()
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            # spawn: the workers start clean (no CUDA context or torch threads copied by fork)
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(os.getpid(),))

    def get(self, stage: str, step: int, total: int) -> Batch:
        if self._pool is None:
            return build_batch(_packed(self.cfg, stage, step, self.rank, self.world), self.device)
        if self._pending and self._pending[0][0] != (stage, step):  # a jump (resume, next stage): start over
            self._drop_pending()
        nxt = self._pending[-1][0][1] + 1 if self._pending else step
        while len(self._pending) < max(1, self.depth) and nxt < total:
            self._pending.append(((stage, nxt), self._pool.submit(_packed, self.cfg, stage, nxt, self.rank, self.world)))
            nxt += 1
        if not self._pending:  # asked for a step at or past `total`
            return build_batch(_packed(self.cfg, stage, step, self.rank, self.world), self.device)
        _, future = self._pending.popleft()
        return build_batch(future.result(), self.device)

    def _drop_pending(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "DeviceBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
