"""qk-train: train the unified model (autoencoder first, then the joint objective).

Every batch is a pure function of (seed, step, rank), and every random draw of a step comes from
a generator seeded the same way, so a run stopped and resumed from a checkpoint ends with the
same weights as one that ran straight through (on CPU, same thread count).

    qk-train --preset small --out runs/small          # trains, or resumes if runs/small has checkpoints
    qk-train --preset small --init-from engines/default/checkpoint --set train.seed=1 --steps 4000 --out runs/ft
                                                      # continues from the shipped model's weights
    torchrun --nproc-per-node 2 -m qk_train.train --preset tiny --out runs/t   # DDP (gloo on CPU)

On a GPU (written and tested on the CPU; not yet run on a GPU):

    qk-train --preset small --device cuda --data device --set train.batch_size=512 --set train.lr=6e-4 \
        --time-budget 9 --checkpoint-minutes 1 --out runs/gpu

`--data device` draws the ShapeWorld layouts ahead in worker processes and renders the pixels with
torch on the training device (`qk_train.device_data`): the same batches as the numpy path.
`--time-budget` stops with a checkpoint after the step that spends the wall-clock budget (counted
from the start of training); `--checkpoint-minutes` also checkpoints on the clock, so a SIGKILL
loses at most that much. The same command resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from PIL import Image
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, ModelConfig, from_dict, load_preset, preset_names, read_yaml
from .data.manifest import DataError
from .data.shapeworld import EditLayout, GenerationLayout, edit_layout, generation_layout, render, render_edit
from .models.unified import Batch, QKModel
from .optim import make_optimizer

STAGE_AE, STAGE_MAIN = "ae", "main"
DATA_PATHS = ("cpu", "device")  # --data: numpy pixels on the CPU, or torch pixels on the training device


# --------------------------------------------------------------------------- data


def step_seed(cfg: ModelConfig, stage: str, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([cfg.train.seed, 1 if stage == STAGE_MAIN else 2, step, rank]).generate_state(1)[0])


def bucket_for_step(cfg: ModelConfig, stage: str, step: int) -> int:
    """The resolution of a step's batch: the same on every rank."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.train.seed, 3, step, 1 if stage == STAGE_MAIN else 2]))
    weights = np.asarray(cfg.data.bucket_weights, dtype=np.float64)
    return int(rng.choice(cfg.data.buckets, p=weights / weights.sum()))


def box_mask(box: tuple[int, int, int, int], side: int) -> np.ndarray:
    m = np.zeros((side, side), dtype=np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, H, W) float in [-1, 1]."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@functools.lru_cache(maxsize=4)
def _user_edits(path: str):
    from .data.manifest import read_edit_manifest

    return read_edit_manifest(path)


@functools.lru_cache(maxsize=4)
def _user_captions(path: str):
    from .data.manifest import read_coco_captions

    return read_coco_captions(path)


def _resize(image: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (side, side):
        return image
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((side, side), mode))


def user_edit_sample(record, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
    """A manifest record at the bucket's side: source, target, change mask, box (scaled)."""
    h, w = record.source.shape[:2]
    source, target = _resize(record.source, side), _resize(record.target, side)
    if record.mask is not None:
        change = _resize(record.mask.astype(np.uint8) * 255, side, nearest=True) > 127
    else:
        change = np.abs(source.astype(np.int16) - target.astype(np.int16)).max(-1) > 8
    box = record.box
    if box is not None:
        sx, sy = side / w, side / h
        box = (int(box[0] * sx), int(box[1] * sy), max(int(np.ceil(box[2] * sx)), int(box[0] * sx) + 1),
               max(int(np.ceil(box[3] * sy)), int(box[1] * sy) + 1))
    elif change.any():
        ys, xs = np.nonzero(change)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return source, target, change, box


@dataclass
class SamplePlan:
    """One sample of a batch before its pixels: a ShapeWorld layout, or a user-data sample's arrays."""

    is_edit: bool
    text: str  # instruction or caption
    layout: EditLayout | GenerationLayout | None = None  # ShapeWorld
    pixels: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None = None  # user data: target, source, change
    box: tuple[int, int, int, int] | None = None
    keep_box: bool = False  # the region query is the box (else: no region)


@dataclass(frozen=True)
class BatchPlan:
    side: int
    samples: tuple[SamplePlan, ...]


def plan_batch(cfg: ModelConfig, stage: str, step: int, rank: int, world: int, size: int | None = None,
               split: str = "train") -> BatchPlan:
    """What `make_batch` draws from the step's seed, before any ShapeWorld pixel: the bucket's side
    and, per sample, its layout (or user-data sample), text and whether its box is kept."""
    size = size or (cfg.train.ae_batch_size if stage == STAGE_AE else cfg.train.batch_size)
    side = bucket_for_step(cfg, stage, step)
    rng = np.random.default_rng(step_seed(cfg, stage, step, rank))
    opts = dict(exclude_pairs=frozenset(map(tuple, cfg.data.exclude_pairs)), backgrounds=cfg.data.backgrounds)
    base = (step * world + rank) * size
    samples = []
    for i in range(size):
        index = base + i
        if rng.random() < cfg.train.edit_fraction:
            if cfg.data.edit_manifest:
                records = _user_edits(cfg.data.edit_manifest)
                record = records[index % len(records)]
                source, target, change, box = user_edit_sample(record, side)
                sample = SamplePlan(True, record.instruction, pixels=(target, source, change), box=box)
            else:
                layout = edit_layout(split, index, side, **opts)
                sample = SamplePlan(True, layout.instruction, layout=layout, box=layout.box)
            sample.keep_box = sample.box is not None and rng.random() >= cfg.train.drop_box
        else:
            if cfg.data.caption_json:
                records = _user_captions(cfg.data.caption_json)
                record = records[index % len(records)]
                sample = SamplePlan(False, record.caption, pixels=(_resize(record.image, side), None, None))
            else:
                layout = generation_layout(split, index, side, **opts)
                sample = SamplePlan(False, layout.caption, layout=layout)
        samples.append(sample)
    return BatchPlan(side, tuple(samples))


def render_batch(plan: BatchPlan) -> Batch:
    """The pixels of a plan, drawn with numpy on the CPU (`qk_train.device_data` draws them on a device)."""
    side = plan.side
    targets, sources, changes, regions = [], [], [], []
    for s in plan.samples:
        if isinstance(s.layout, EditLayout):
            e = render_edit(s.layout)
            target, source, change = e.target, e.source, e.mask
        elif isinstance(s.layout, GenerationLayout):
            target, source, change = render(s.layout.scene), None, None
        else:
            target, source, change = s.pixels
        targets.append(target)
        sources.append(source if s.is_edit else np.zeros_like(target))
        changes.append(change.astype(np.float32) if s.is_edit else np.ones((side, side), np.float32))
        regions.append(box_mask(s.box, side) if s.keep_box else np.zeros((side, side), np.float32))
    return Batch(
        target=to_tensor(targets),
        source=to_tensor(sources),
        change=torch.from_numpy(np.stack(changes))[:, None],
        region=torch.from_numpy(np.stack(regions))[:, None],
        is_edit=torch.tensor([1.0 if s.is_edit else 0.0 for s in plan.samples]),
        texts=[s.text for s in plan.samples],
    )


def make_batch(cfg: ModelConfig, stage: str, step: int, rank: int, world: int, size: int | None = None,
               split: str = "train") -> Batch:
    """The batch of one rank at one step; sample indices never repeat across steps and ranks.
    `split="val"` draws the same way from the validation split (held-out losses)."""
    return render_batch(plan_batch(cfg, stage, step, rank, world, size, split))


# --------------------------------------------------------------------------- schedule and EMA


def lr_at(step: int, base_lr: float, total: int, warmup: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class EMA:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm start
        for k, v in params.items():
            self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)


class LossModule(torch.nn.Module):
    """What DistributedDataParallel wraps: forward returns the loss of one batch."""

    def __init__(self, model: QKModel, stage: str):
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch: Batch, gen: torch.Generator):
        if self.stage == STAGE_AE:
            return codec_loss(self.model, batch)
        return self.model.loss(batch, gen)


def codec_loss(model: QKModel, batch: Batch):
    codec = model.codec
    images = torch.cat([batch.target, batch.source[batch.is_edit > 0]])
    recon = codec.decode_raw(codec.encode_raw(images))
    l1 = F.l1_loss(recon, images)
    mse = F.mse_loss(recon, images)
    loss = l1 + mse
    return loss, {"loss": loss.item(), "l1": l1.item(), "psnr": float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))}


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    stage: str
    step: int  # steps done in this stage


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _trainable(model: QKModel, stage: str) -> dict[str, torch.nn.Parameter]:
    if stage == STAGE_AE:
        return {f"codec.{n}": p for n, p in model.codec.named_parameters()}
    prefixes = model.trainable_prefixes()  # requires_grad is what the previous stage left: not a guide
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}


class Trainer:
    def __init__(self, cfg: ModelConfig, out: Path, *, progress: bool = True, max_steps: int | None = None,
                 device: str | torch.device | None = None, time_budget_s: float | None = None,
                 checkpoint_every_s: float | None = None, data: str = "cpu", data_workers: int = 0):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self.max_steps = max_steps  # stop after this many steps in this call (for tests and chunks)
        # wall clock, from the start of run(): stop with a checkpoint after the step that spends the
        # budget (every call trains at least one step), and checkpoint every checkpoint_every_s
        self.time_budget_s = time_budget_s
        self.checkpoint_every_s = checkpoint_every_s
        if data not in DATA_PATHS:
            raise ConfigError(f"data={data!r}: use one of {DATA_PATHS}")
        self.data, self.data_workers = data, data_workers
        self._batches = None  # device_data.DeviceBatches with data="device"
        self._started = self._saved_at = time.monotonic()
        self.stopped_by: str | None = None  # "max_steps" or "time budget" when run() stopped early
        self.rank, self.world = _dist_info()
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.device = resolve_device(device)
        self.model = QKModel(cfg).to(self.device)
        self.state = RunState(STAGE_AE if self._ae_steps() else STAGE_MAIN, 0)
        self.ema: EMA | None = None
        self.opt = None  # torch.optim.AdamW or optim.MuonAdamW
        self.steps_run = 0

    def _ae_steps(self) -> int:
        if self.cfg.codec.kind != "tiny_ae" or self.cfg.train.codec_from:
            return 0
        return self.cfg.train.ae_steps

    def _codec_from(self, path: Path) -> None:
        """A new run's autoencoder: the trained one of checkpoint `path` (same codec config), frozen."""
        path = check_codec_source(self.cfg, path)
        weights = ckpt.load_weights(path)
        self.model.codec.load_state_dict({k[len("codec."):]: v for k, v in weights.items() if k.startswith("codec.")})

    # ---------------------------------------------------------------- checkpoints

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        params = _trainable(self.model, self.state.stage)
        train_tensors = {f"raw.{k}": v for k, v in params.items()}
        if self.ema is not None:
            train_tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        opt_tensors, opt_meta = ckpt.optimizer_tensors(self.opt) if self.opt else ({}, None)
        train_tensors.update(opt_tensors)
        meta = {"stage": self.state.stage, "step": self.state.step, "optimizer": opt_meta, "world": self.world}
        weights = self.model.saved_state()
        if self.ema is not None:
            weights = {**weights, **{k: v for k, v in self.ema.shadow.items() if k in weights}}
        # names sort in training order: the autoencoder's steps come before the main stage's
        if self.state.stage == STAGE_AE:
            name = f"step-0000000-ae-{self.state.step:07d}"
        else:
            name = f"step-{self.state.step:07d}"
        path = self.model.save(self.out / "checkpoints" / name, weights, train_tensors=train_tensors, train_meta=meta)
        ckpt.prune_checkpoints(self.out, keep=2)
        self._saved_at = time.monotonic()
        return path

    def resume(self, path: Path) -> None:
        tensors, meta = ckpt.load_train_state(path)
        weights = ckpt.load_weights(path)
        stage = meta["stage"]
        # model weights: inference copy for everything, then the raw (non-EMA) trained ones
        self.model.load_state_dict(weights, strict=False)
        raw = {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}
        self.model.load_state_dict(raw, strict=False)
        self.state = RunState(stage, int(meta["step"]))
        self._setup_stage()
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if self.ema is not None and ema:
            self.ema.shadow = {k: v.to(self.device).clone() for k, v in ema.items()}
        if meta.get("optimizer"):
            ckpt.load_optimizer(self.opt, tensors, meta["optimizer"])

    def _init_from(self, path: Path) -> None:
        """Start the main stage at step 0 from another checkpoint's (EMA) weights: fine-tuning or
        a warm restart. The codec is taken as trained (no autoencoder stage); optimizer and EMA
        start fresh, with the configured warm-up."""
        check_init_source(self.cfg, path)
        weights = ckpt.load_weights(path)
        own = self.model.saved_state()
        added = added_parameters(self.cfg, from_dict(read_yaml(path / ckpt.CONFIG_FILE), where=str(path / ckpt.CONFIG_FILE)))
        missing = sorted(k for k in set(own) - set(weights) if not (added and k.startswith(added)))
        unexpected = sorted(set(weights) - set(own))
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"--init-from {path}: its weights do not fit this model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}); use a checkpoint of the same preset")
        for name, value in weights.items():
            if value.shape != own[name].shape:
                raise ckpt.CheckpointError(
                    f"--init-from {path}: {name} has shape {tuple(value.shape)}, this model "
                    f"{tuple(own[name].shape)}; use a checkpoint of the same preset")
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)
        self.state = RunState(STAGE_MAIN, 0)
        self._setup_stage()
        if self.rank == 0:
            print(f"starting from the weights of {path} (sha256 {ckpt.sha256_file(path / ckpt.MODEL_FILE)[:16]})",
                  file=sys.stderr)

    # ---------------------------------------------------------------- stages

    def _stage_total(self) -> int:
        return self._ae_steps() if self.state.stage == STAGE_AE else self.cfg.train.steps

    def _setup_stage(self) -> None:
        stage = self.state.stage
        params = _trainable(self.model, stage)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        lr = self.cfg.train.ae_lr if stage == STAGE_AE else self.cfg.train.lr
        self.opt = make_optimizer(self.cfg, params, lr)
        self.ema = EMA(params, self.cfg.train.ema_decay) if stage == STAGE_MAIN else None
        module = LossModule(self.model, stage)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self.module = module
        self.params = params

    def _finish_codec(self) -> None:
        """Freeze the codec and measure its latent statistics on training images."""
        codec = self.model.codec
        batch = make_batch(self.cfg, STAGE_AE, 10**6, 0, 1, size=256).to(self.device)
        with torch.no_grad():
            raw = codec.encode_raw(batch.target)
        codec.set_statistics(raw)
        self.state = RunState(STAGE_MAIN, 0)
        self._setup_stage()

    def run(self) -> Path:
        self._started = self._saved_at = time.monotonic()
        try:
            return self._run()
        finally:
            if self._batches is not None:
                self._batches.close()
                self._batches = None

    def _batch(self, stage: str, step: int, total: int) -> Batch:
        if self.data == "device":
            if self._batches is None:
                from .device_data import DeviceBatches

                self._batches = DeviceBatches(self.cfg, self.rank, self.world, self.device, workers=self.data_workers)
            return self._batches.get(stage, step, total)
        return make_batch(self.cfg, stage, step, self.rank, self.world).to(self.device)

    def _precision(self, stage: str):
        """bfloat16 autocast for the main stage's step when `train.precision` is "bf16"."""
        if stage == STAGE_MAIN and self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _out_of_time(self) -> bool:
        if self.time_budget_s is None:
            return False
        spent = time.monotonic() - self._started >= self.time_budget_s
        if self.world > 1:  # every rank stops after the same step: rank 0's clock decides
            flag = torch.tensor([float(spent)], device=self.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item())
        return spent

    def _run(self) -> Path:
        cfg = self.cfg
        latest = ckpt.latest_checkpoint(self.out)
        if latest is not None:
            self.resume(latest)
            if self.rank == 0:
                tidy_after_crash(self.out, self.state.stage, self.state.step)
                print(f"resuming from {latest} ({self.state.stage} step {self.state.step})", file=sys.stderr)
        elif cfg.train.init_from:
            self._init_from(Path(cfg.train.init_from))
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "hyperparameters.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        else:
            if cfg.train.codec_from:
                self._codec_from(Path(cfg.train.codec_from))
            elif self.cfg.codec.kind == "pretrained":  # no autoencoder stage: measure its latents now
                self._finish_codec()
            self._setup_stage()
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "hyperparameters.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if self.state.stage == STAGE_AE and self.state.step >= self._ae_steps():
            self._finish_codec()
        while True:
            done = self._run_stage()
            if not done:
                path = self.save()
                if self.rank == 0 and self.stopped_by == "time budget":
                    print(f"time budget of {self.time_budget_s / 60:g} min spent: checkpoint saved at {path} "
                          f"({self.state.stage} step {self.state.step}); run the same command to continue", file=sys.stderr)
                return path or self.out
            if self.state.stage == STAGE_AE:
                self._finish_codec()
                continue
            break
        final = self.out / "final"
        if self.rank == 0:
            self.save()
            weights = self.model.saved_state()
            weights = {**weights, **{k: v for k, v in self.ema.shadow.items() if k in weights}}
            self.model.save(final, weights)
            print(f"done: {cfg.name} trained {self.state.step} steps; model written to {final}", file=sys.stderr)
        return final

    def _run_stage(self) -> bool:
        """Train the current stage to its end; False when stopped early by max_steps or the time budget."""
        cfg, stage = self.cfg, self.state.stage
        total = self._stage_total()
        base_lr = cfg.train.ae_lr if stage == STAGE_AE else cfg.train.lr
        warmup = min(cfg.train.warmup, max(1, total // 10))
        bar = tqdm(total=total, initial=self.state.step, desc=f"{cfg.name}:{stage}", disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        log_path = self.out / "log.jsonl"
        tic, seen = time.perf_counter(), 0
        self.model.train()
        try:
            while self.state.step < total:
                if self.max_steps is not None and self.steps_run >= self.max_steps:
                    self.stopped_by = "max_steps"
                    return False
                if self.steps_run and self._out_of_time():
                    self.stopped_by = "time budget"
                    return False
                step = self.state.step
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(step, base_lr, total, warmup)
                batch = self._batch(stage, step, total)
                gen = torch.Generator().manual_seed(step_seed(cfg, stage, step, self.rank))
                with self._precision(stage):
                    loss, logs = self.module(batch, gen)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.train.grad_clip)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.params, step)
                self.state.step += 1
                self.steps_run += 1
                seen += batch.target.shape[0] * self.world
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(f"loss became {logs['loss']} at {stage} step {step}; lower train.lr and resume")
                if self.rank == 0 and (self.state.step % cfg.train.log_every == 0 or self.state.step == total):
                    rate = seen / max(1e-9, time.perf_counter() - tic)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{rate:.1f}")
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"stage": stage, "step": self.state.step, "lr": self.opt.param_groups[0]["lr"],
                                            "grad_norm": float(grad_norm), "img_s": rate, **logs}) + "\n")
                bar.update(1)
                if self.state.step < total and (
                    self.state.step % cfg.train.checkpoint_every == 0
                    or (self.rank == 0 and self.checkpoint_every_s is not None
                        and time.monotonic() - self._saved_at >= self.checkpoint_every_s)):
                    self.save()
        except KeyboardInterrupt:
            if self.rank == 0:
                path = self.save()
                print(f"\ninterrupted: checkpoint saved at {path}; run the same command to resume", file=sys.stderr)
            raise
        finally:
            bar.close()
        return True


# --------------------------------------------------------------------------- CLI


def resolve_config(preset: str, overrides: list[str], steps: int | None) -> ModelConfig:
    cfg = load_preset(preset)
    values = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use section.key=value, e.g. --set train.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in values or not isinstance(values[parts[0]], dict):
            raise ConfigError(f"--set {item!r}: {key!r} is not section.key; sections: {sorted(k for k in values if k != 'name')}")
        try:
            values[parts[0]][parts[1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); "
                              f"lists are written [32, 64]") from None
    if steps is not None:
        values["train"]["steps"] = steps
    return from_dict(values, where=f"preset {preset!r} with overrides")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None: this rank's GPU (LOCAL_RANK under torchrun) where CUDA is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    name = device or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                              "use --device cpu, or install a CUDA build of torch on a GPU machine")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name != "cpu":
        raise ConfigError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def tidy_after_crash(out: Path, stage: str, step: int) -> None:
    """Before a resume from (stage, step): remove checkpoint folders a killed run left half
    written, and the log records of steps after the checkpoint (they are trained again, and would
    otherwise be logged twice)."""
    for partial in (out / "checkpoints").glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    log_path = out / "log.jsonl"
    if not log_path.exists():
        return
    order = {STAGE_AE: 0, STAGE_MAIN: 1}
    kept, dropped = [], 0
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
            later = (order.get(rec["stage"], 0), rec["step"]) > (order[stage], step)
        except (ValueError, KeyError, TypeError):  # a line cut by the kill: drop it
            later = True
        if later:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        ckpt.atomic_write_bytes(log_path, "".join(f"{line}\n" for line in kept).encode())


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (what `kill`, schedulers and container stops send) end training with a
    checkpoint. A shell that starts a background job without job control sets SIGINT to ignored,
    and Python keeps that; so both are installed here explicitly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)


def check_codec_source(cfg: ModelConfig, path: Path) -> Path:
    """A checkpoint can give a new run its autoencoder only if its codec section equals the run's."""
    try:
        path = ckpt.check_checkpoint_dir(Path(path))
    except ckpt.CheckpointError as exc:
        raise ckpt.CheckpointError(f"--codec-from: {exc}".replace("pass --model with", "give")) from None
    src = from_dict(read_yaml(path / ckpt.CONFIG_FILE), where=str(path / ckpt.CONFIG_FILE))
    if src.codec != cfg.codec:
        raise ConfigError(f"--codec-from {path}: its codec section differs from this run's; "
                          f"take the codec of a checkpoint of the same preset")
    return path


def check_init_source(cfg: ModelConfig, path: Path) -> None:
    """A checkpoint can seed a run only if every model section of its config equals this run's
    (data and training settings may differ)."""
    try:
        path = ckpt.check_checkpoint_dir(Path(path))
    except ckpt.CheckpointError as exc:
        raise ckpt.CheckpointError(f"--init-from: {exc}".replace("pass --model with", "give")) from None
    src = from_dict(yaml.safe_load((path / ckpt.CONFIG_FILE).read_text()), where=str(path / ckpt.CONFIG_FILE))
    differ = [name for name in ("text", "codec", "gateway", "gate", "decoder")
              if getattr(src, name) != getattr(cfg, name)]
    if differ == ["decoder"] and cfg.decoder.step_size_cond and dataclasses.replace(src.decoder, step_size_cond=True) == cfg.decoder:
        return  # the step-size conditioning switched on: its new embedding starts at zero (`added_parameters`)
    if differ:
        hint = (" (switching decoder.step_size_cond off again is not possible: its trained embedding would be "
                "dropped)" if differ == ["decoder"] and src.decoder.step_size_cond and not cfg.decoder.step_size_cond else "")
        raise ConfigError(
            f"--init-from {path}: its model differs from this run's in {differ}{hint}; train with the "
            f"preset it was made with (its {ckpt.CONFIG_FILE} says name {src.name!r})")


def added_parameters(cfg: ModelConfig, src: ModelConfig) -> tuple[str, ...]:
    """Prefixes of the weights a run from a checkpoint of config `src` (`check_init_source`) may lack:
    the step-size embedding when the run switches decoder.step_size_cond on."""
    return ("decoder.d_embed.",) if cfg.decoder.step_size_cond and not src.decoder.step_size_cond else ()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qk-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help=f"preset name ({', '.join(preset_names())}) or a YAML file (default: small)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints/, final/, log.jsonl; resumed if it has checkpoints")
    parser.add_argument("--steps", type=int, default=None, help="total main-stage steps (overrides train.steps; raise it to train longer)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value, e.g. --set train.lr=1e-4")
    parser.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps in this call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train: auto (default) = this rank's GPU if CUDA is available, else the CPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="stop with a checkpoint once this much wall-clock time has passed since training started "
                             "(checked after every step); the same command continues the run")
    parser.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M",
                        help="also write a checkpoint every M minutes of wall-clock time (besides train.checkpoint_every "
                             "steps), so a killed run loses at most M minutes")
    parser.add_argument("--data", default="cpu", choices=DATA_PATHS,
                        help="where batches get their pixels: cpu (default: numpy, sample by sample) or device "
                             "(ShapeWorld layouts drawn ahead by --data-workers processes, pixels rendered by torch on "
                             "the training device; the same batches)")
    parser.add_argument("--data-workers", type=int, default=None, metavar="N",
                        help="with --data device: processes drawing layouts ahead (default: half the CPU cores, at "
                             "most 8; 0 = draw them in the training process)")
    parser.add_argument("--init-from", metavar="CKPT", default=None,
                        help="start a new run from the weights of checkpoint CKPT (e.g. engines/default/checkpoint): "
                             "fine-tuning or a warm restart; no autoencoder stage, fresh optimizer with warm-up")
    parser.add_argument("--codec-from", metavar="CKPT", default=None,
                        help="a new run takes the trained autoencoder of checkpoint CKPT (e.g. engines/default/checkpoint), "
                             "frozen: no autoencoder stage; the rest trains from scratch")
    parser.add_argument("--release", metavar="CKPT", default=None,
                        help="train nothing: write a weights-only copy of checkpoint CKPT (EMA weights, config, tokenizer) to --out")
    parser.add_argument("--dtype", default="float32", choices=sorted(ckpt.RELEASE_DTYPES),
                        help="with --release: how weights are stored (default float32; float16 halves the file)")
    args = parser.parse_args(argv)
    if args.release:
        try:
            path = ckpt.release(Path(args.release), Path(args.out), args.dtype)
        except ckpt.CheckpointError as exc:
            print(f"qk-train: error: {exc}", file=sys.stderr)
            return 2
        print(f"qk-train: released {args.release} as {path} ({args.dtype} weights)", file=sys.stderr)
        return 0
    from qk_runtime.errors import InputError
    from qk_runtime.files import check_output

    from .config import check_train_memory, machine_memory_bytes

    try:
        if args.threads is not None:
            cpus = os.cpu_count() or 1
            if not 1 <= args.threads <= cpus:
                raise ConfigError(f"--threads {args.threads}: must be from 1 to {cpus} (this machine's logical CPUs); "
                                  f"leave it out for torch's choice")
            torch.set_num_threads(args.threads)
        if args.max_steps is not None and args.max_steps < 1:
            raise ConfigError(f"--max-steps {args.max_steps}: must be >= 1 (leave it out to train to the end)")
        for flag, minutes, example, absent in (("--time-budget", args.time_budget, 9, "no limit"),
                                               ("--checkpoint-minutes", args.checkpoint_minutes, 1, "step checkpoints only")):
            if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
                raise ConfigError(f"{flag} {minutes:g}: must be a number of minutes > 0, e.g. {flag} {example} "
                                  f"(leave it out for {absent})")
        if args.data_workers is not None and args.data_workers < 0:
            raise ConfigError(f"--data-workers {args.data_workers}: must be >= 0 (0 draws layouts in the training process)")
        workers = args.data_workers if args.data_workers is not None else min(8, max(1, (os.cpu_count() or 2) // 2))
        if args.init_from:
            args.set = [*args.set, f"train.init_from={args.init_from}"]
        if args.codec_from:
            args.set = [*args.set, f"train.codec_from={args.codec_from}"]
        cfg = resolve_config(args.preset, args.set, args.steps)
        if args.data == "device":
            from .device_data import check_device_data

            check_device_data(cfg)
        device = resolve_device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        check_train_memory(cfg, machine_memory_bytes(device), "--preset/--set")
        if cfg.train.init_from:
            check_init_source(cfg, Path(cfg.train.init_from))
        if cfg.train.codec_from:
            check_codec_source(cfg, Path(cfg.train.codec_from))
        out = Path(args.out)
        try:  # the run folder must not replace or hold what this run reads
            preset = Path(args.preset) if Path(args.preset).suffix in (".yaml", ".yml") else None
            check_output("--out", out, folder_output=True,
                         inputs=[("--preset", preset), ("data.edit_manifest", cfg.data.edit_manifest and Path(cfg.data.edit_manifest)),
                                 ("data.caption_json", cfg.data.caption_json and Path(cfg.data.caption_json))],
                         folders=[("the checkpoint --init-from", cfg.train.init_from and Path(cfg.train.init_from)),
                                  ("the checkpoint --codec-from", cfg.train.codec_from and Path(cfg.train.codec_from))])
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        ckpt.check_run_folder(out)
        existing = out / "hyperparameters.yaml"
        if existing.exists() and ckpt.latest_checkpoint(out) is not None:
            old = from_dict(read_yaml(existing), where=str(existing))
            if old.replace(train={"steps": cfg.train.steps}) != cfg:
                raise ConfigError(
                    f"{out} holds a run with a different config ({existing}); resume it with the same "
                    f"--preset/--set, or train into a new --out folder"
                )
            if old.train.steps != cfg.train.steps:
                existing.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if cfg.data.edit_manifest:
            _user_edits(cfg.data.edit_manifest)  # read (and check) once, before any training
        if cfg.data.caption_json:
            _user_captions(cfg.data.caption_json)
    except (ConfigError, ckpt.CheckpointError, DataError) as exc:
        print(f"qk-train: error: {exc}", file=sys.stderr)
        return 2
    _stop_on_signals()
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        Trainer(cfg, out, progress=not args.no_progress, max_steps=args.max_steps, device=device,
                time_budget_s=None if args.time_budget is None else args.time_budget * 60,
                checkpoint_every_s=None if args.checkpoint_minutes is None else args.checkpoint_minutes * 60,
                data=args.data, data_workers=workers).run()
    except KeyboardInterrupt:
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
