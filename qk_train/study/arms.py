"""The study's arms and what every run of it shares: the arms and the models each trains, the dual
pipeline's sizing at matched trainable parameters, the options a study runs with and when a run
is only a smoke run."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import ModelConfig

PROBE_PAIRS: tuple[tuple[str, str], ...] = (("red", "triangle"), ("blue", "diamond"), ("yellow", "square"), ("cyan", "circle"))
PROBE_BACKGROUND = "olive"
DEPTHS = (1, 2, 4)
EDIT_WEIGHTS = (0.5, 1.0, 2.0)
SMOKE_MIN_STEPS = 1000
SMOKE_MIN_EDITS = 50
SMOKE_WARNING = ("TINY SMOKE RUN - NOT EVIDENCE. These figures only show that every arm trains, evaluates and is "
                 "tabulated; they say nothing about the claims.")


class StudyError(ValueError):
    """A study folder or option that cannot be used; the message says how to fix it."""


# --------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Member:
    """One model of an arm: its role ("model", or "gen"/"edit" for the dual pipeline) and config changes."""

    role: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arm:
    name: str
    what: str
    members: tuple[Member, ...] = (Member("model"),)
    alias_of: str | None = None  # the same config as another arm: not trained again
    probe_sets: bool = False  # also scored on the held-out probe sets

    @property
    def dual(self) -> bool:
        return len(self.members) > 1


def _number(x: float) -> str:
    return f"{x:g}"


def build_arms(base: ModelConfig, dual_width: int) -> list[Arm]:
    """Every arm of the study for a resolved preset (see the table of `qk-study --help`, in `cli`)."""
    pairs = ", ".join(f"[{c}, {s}]" for c, s in PROBE_PAIRS)
    arms = [
        Arm("full", "the preset as it is", probe_sets=True),
        Arm("no_cmg", "no Cross-Modal Gate", (Member("model", ("gate.enabled=false",)),)),
        Arm("no_gateway", "no query gateway (text-only conditioning)", (Member("model", ("gateway.enabled=false",)),)),
        Arm("dual", f"generation-only + editing-only models, decoder width {dual_width} each (params matched)",
            (Member("gen", ("train.edit_fraction=0.0", "gate.enabled=false", f"decoder.width={dual_width}")),
             Member("edit", ("train.edit_fraction=1.0", f"decoder.width={dual_width}")))),
    ]
    for d in DEPTHS:
        same = d == base.gateway.layers
        arms.append(Arm(f"depth{d}", f"gateway.layers={d}" + (" (the preset: = full)" if same else ""),
                        (Member("model", () if same else (f"gateway.layers={d}",)),), alias_of="full" if same else None))
    for w in EDIT_WEIGHTS:
        same = w == base.train.edit_loss_weight and base.train.gen_loss_weight == 1.0
        arms.append(Arm(f"edit_w{_number(w)}", f"edit loss weight {_number(w)} vs generation 1" + (" (the preset: = full)" if same else ""),
                        (Member("model", () if same else (f"train.edit_loss_weight={w}",)),), alias_of="full" if same else None))
    arms.append(Arm("probe", "full, trained with the probe pairs excluded",
                    (Member("model", (f"data.exclude_pairs=[{pairs}]",)),), probe_sets=True))
    return arms


def select_arms(arms: list[Arm], names: tuple[str, ...] | None) -> list[Arm]:
    """The arms named in --arms (all when None), with the aliases of the selected ones."""
    if names is None:
        return arms
    known = {a.name for a in arms}
    unknown = sorted(set(names) - known)
    if unknown:
        raise StudyError(f"--arms: unknown arm(s) {unknown}; choose from {sorted(known)}")
    for a in arms:
        if a.name in names and a.alias_of and a.alias_of not in names:
            raise StudyError(f"--arms: {a.name} is {a.alias_of}'s config (not trained separately); add {a.alias_of} to --arms")
    return [a for a in arms if a.name in names or a.alias_of in names]


# --------------------------------------------------------------------------- sizes


def _trainable_count(cfg: ModelConfig, text_width: int, channels: int, text_trainable: int) -> int:
    """Parameters the joint stage trains (decoder, gateway, CMG, a trainable text encoder), counted
    on torch's meta device (no memory, no weights loaded)."""
    import torch
    import torch.nn as nn

    from ..models.cmg import CrossModalGate
    from ..models.dit import DiT
    from ..models.gateway import QueryGateway

    D, p = cfg.decoder.width, cfg.decoder.patch
    with torch.device("meta"):
        parts: list[nn.Module] = [DiT(cfg.decoder, channels, text_width)]
        if cfg.gateway.enabled:
            parts.append(QueryGateway(cfg.gateway, D, text_width, channels, p))
        if cfg.gate.enabled:
            parts.append(CrossModalGate(cfg.gate, D, channels, p))
            if not cfg.gateway.enabled:
                parts.append(nn.Linear(text_width, D))
    return sum(q.numel() for m in parts for q in m.parameters()) + text_trainable


@lru_cache(maxsize=8)
def _text_facts(text_cfg) -> tuple[int, int]:
    """(text width, trainable text-encoder parameters); a pretrained encoder's width is read from its
    config.json (it is frozen: nothing of it is trained, and its weights need not be loaded)."""
    from ..models.text_encoder import build_text_encoder, load_tokenizer, pretrained_folder

    if text_cfg.kind == "pretrained":
        return int(json.loads((pretrained_folder(text_cfg) / "config.json").read_text())["hidden_size"]), 0
    encoder = build_text_encoder(text_cfg, load_tokenizer(text_cfg))
    return int(encoder.width), sum(p.numel() for p in encoder.parameters())


def trainable_parameters(cfg: ModelConfig) -> int:
    width, text_trainable = _text_facts(cfg.text)
    return _trainable_count(cfg, width, cfg.latent_channels, text_trainable)


def dual_sizing(base: ModelConfig) -> dict:
    """The decoder width of the dual pipeline's two models whose summed trainable parameters come
    nearest to the full model's (widths in steps that every head count and the 2-D position
    embedding divide; depth, gateway queries and layers stay the preset's)."""
    step = math.lcm(base.decoder.heads, base.gateway.heads, base.gate.heads, 4)
    full = trainable_parameters(base)
    best = None
    lo = max(step, int(0.4 * base.decoder.width) // step * step)  # half the budget: about width / sqrt(2)
    for width in range(lo, base.decoder.width + 1, step):
        gen = trainable_parameters(base.replace(decoder={"width": width}, gate={"enabled": False}))
        edit = trainable_parameters(base.replace(decoder={"width": width}))
        if best is None or abs(gen + edit - full) < abs(best["gen"] + best["edit"] - full):
            best = {"width": width, "gen": gen, "edit": edit}
    if best is None:
        raise StudyError(f"decoder.width={base.decoder.width} is below the smallest width step {step}; no dual pipeline fits")
    total = best["gen"] + best["edit"]
    return {"full_width": base.decoder.width, "width": best["width"], "full": full, "gen": best["gen"], "edit": best["edit"],
            "dual_total": total, "ratio": total / full,
            "how": "trainable joint-stage parameters (decoder + gateway + CMG + a trainable text encoder), summed over "
                   "the two models; the frozen text encoder and the codec (trained before, then frozen) are not counted; "
                   "the decoder, gateway and CMG width (one width for all three, the same for both models) is searched "
                   f"in steps of {step}, depth unchanged"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    preset: str
    steps: int | None
    seeds: tuple[int, ...]
    out: Path
    json_path: Path
    table_path: Path
    sets: tuple[str, ...] = ()
    arms: tuple[str, ...] | None = None
    n: int = 200
    gen_n: int = 200
    sample_steps: int | None = None
    stability_seeds: int = 4
    stability_n: int = 100
    probe_n: int = 100
    progress: bool = True
    command: str = ""


def member_config(opts: Options, member: Member, seed: int) -> ModelConfig:
    from ..train import resolve_config

    return resolve_config(opts.preset, [*opts.sets, *member.overrides, f"train.seed={seed}"], opts.steps)


def smoke_reasons(opts: Options, cfg: ModelConfig) -> list[str]:
    reasons = []
    if opts.preset == "tiny" or cfg.name == "tiny":
        reasons.append("the tiny test preset (0.1 M parameters, pixel space)")
    if cfg.train.steps < SMOKE_MIN_STEPS:
        reasons.append(f"{cfg.train.steps} training steps (< {SMOKE_MIN_STEPS})")
    if opts.n < SMOKE_MIN_EDITS:
        reasons.append(f"{opts.n} test edits (< {SMOKE_MIN_EDITS})")
    return reasons
