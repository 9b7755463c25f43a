"""How a decoder step grows with the image side and the preset: latency, memory and FLOPs.

One point = (preset, image side, mode) run in its own process (`python -m qk_bench.worker`), so
its peak memory is its own. The DiT is built from the preset with the side changed
(`data.image_size`) and **random weights** (latency and memory do not depend on the values), at
batch 1, torch FP32 eager, a few repeats after one warm-up call:

- `dense`: every token, full self-attention;
- `window`: self-attention in w x w token windows, w = half the grid (what `--sparse-attn window` exports);
- `region`: a quarter of the tokens active (the `region` mode's smallest bucket).

Memory: the process's peak RSS (VmHWM) is reset after the model and inputs are built
(`/proc/self/clear_refs`), so `step_peak_mb` is the step's own growth over the resident weights;
`weights_mb` is the parameters' size. FLOPs: `flops.decoder_step_flops`, checked against torch's
FlopCounterMode on the same call.
"""
from __future__ import annotations

import dataclasses

import json
import time
from pathlib import Path

from .flops import DecoderShape, decoder_step_flops
from .timing import summarize

MODES = ("dense", "window", "region")
SIDES = (64, 128, 256)
PRESETS = ("small", "base")


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def text_width(cfg) -> int:
    """The text encoder's output width, without loading its weights."""
    if cfg.text.kind == "tiny":
        return cfg.text.width
    from qk_train.models.text_encoder import pretrained_folder

    return int(json.loads((pretrained_folder(cfg.text) / "config.json").read_text())["hidden_size"])


def point_config(preset: str, side: int, mode: str):
    from qk_train.config import load_preset

    if mode not in MODES:
        raise ValueError(f"scaling mode {mode!r}; choose one of {MODES}")
    cfg = load_preset(preset)
    grid = side // cfg.token_pixels
    window = max(1, grid // 2) if mode == "window" else 0
    return cfg.replace(data={"image_size": side, "buckets": [side], "bucket_weights": [1.0]},
                       decoder={"attn_window": window})


def run_point(preset: str, side: int, mode: str, *, repeats: int = 3, threads: int = 2, batch: int = 1) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qk_train.models.dit import DiT

    torch.set_num_threads(threads)
    cfg = point_config(preset, side, mode)
    tw = text_width(cfg)
    # the DiT's whole forward is timed and counted: the per-edit conditioning is recomputed in it
    shape = dataclasses.replace(DecoderShape.from_config(cfg, tw), step_condition=False)
    torch.manual_seed(0)
    dit = DiT(cfg.decoder, cfg.latent_channels, tw).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in dit.parameters()) / 2**20
    B, C, h, L, K = batch, shape.latent_channels, shape.latent_size, shape.text_length, shape.kontext_tokens
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(B, C, h, h, generator=g), torch.full((B,), 0.5), torch.randn(B, L, tw, generator=g),
            torch.ones(B, L), torch.randn(B, K, shape.width, generator=g) if K else None,
            torch.randn(B, C, h, h, generator=g), torch.ones(B, 1, h, h), torch.ones(B, 1, h, h), torch.ones(B, 2))
    active = shape.tokens // 4 if mode == "region" else None
    kwargs = {"active": torch.arange(active)[None].expand(B, -1).contiguous()} if active else {}
    rss_before_mb = (_status_kb("VmRSS") or 0) / 1024
    reset = _reset_peak_rss()
    times = []
    with torch.inference_mode():
        dit(*args, **kwargs)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            dit(*args, **kwargs)
            times.append((time.perf_counter() - t0) * 1000.0)
        peak_mb = (_status_kb("VmHWM") or 0) / 1024
        with FlopCounterMode(display=False) as counter:
            dit(*args, **kwargs)
    flops = decoder_step_flops(shape, B, active)
    stats = summarize(times)
    return {
        "preset": preset, "side": side, "mode": mode, "batch": B, "tokens": shape.tokens,
        "active_tokens": active or shape.tokens, "window": shape.window, "width": shape.width, "depth": shape.depth,
        "step_ms": stats, "step_ms_median": stats["median"],
        "gflop": flops["total"] / 1e9, "gflop_counted": counter.get_total_flops() / 1e9,
        "achieved_gflops": flops["total"] / stats["median"] / 1e6 if stats["median"] else None,
        "weights_mb": weights_mb, "rss_before_mb": rss_before_mb, "peak_rss_mb": peak_mb,
        "step_peak_mb": (peak_mb - rss_before_mb) if reset else None,
        "peak_reset": reset, "threads": threads, "weights": "random",
    }


def parameter_counts(presets=PRESETS) -> dict:
    """Parameters of the gateway, CMG and decoder of each preset (random weights, counted exactly)."""
    import torch

    from qk_train.config import load_preset
    from qk_train.models.cmg import CrossModalGate
    from qk_train.models.dit import DiT
    from qk_train.models.gateway import QueryGateway

    out = {}
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        for preset in presets:
            cfg = load_preset(preset)
            tw, D, C, p = text_width(cfg), cfg.decoder.width, cfg.latent_channels, cfg.decoder.patch
            parts = {"decoder": DiT(cfg.decoder, C, tw)}
            if cfg.gateway.enabled:
                parts["gateway"] = QueryGateway(cfg.gateway, D, tw, C, p)
            if cfg.gate.enabled:
                parts["cmg"] = CrossModalGate(cfg.gate, D, C, p)
            out[preset] = {k: int(sum(x.numel() for x in m.parameters())) for k, m in parts.items()}
    return out


def checkpoint_decoder(checkpoint: Path) -> dict:
    """The `DecoderShape` of a checkpoint (from its hyperparameters.yaml), as a dict."""
    import dataclasses

    import yaml

    from qk_train.config import from_dict

    path = Path(checkpoint) / "hyperparameters.yaml"
    cfg = from_dict(yaml.safe_load(path.read_text()), where=str(path))
    return dataclasses.asdict(DecoderShape.from_config(cfg, text_width(cfg)))
