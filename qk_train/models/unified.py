"""The unified Query-Kontext model: text encoder, image codec, query gateway, Cross-Modal Gate
and one DiT decoder, with the joint single-pass objective.

Conventions (the same as diffusers' FlowMatchEulerDiscreteScheduler): x_t = sigma * noise +
(1 - sigma) * x_0 with sigma in [0, 1] (1 = pure noise); the network predicts the velocity
v = noise - x_0; an Euler step is x <- x + (sigma_next - sigma) * v.

Editing samples carry a source image, an instruction and (most of the time) a region query;
generation samples carry a caption only (no source, gate m = 1). Every batch mixes both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from .. import checkpoint as ckpt
from ..config import SHORTCUT_MIN_STEP, ModelConfig, from_dict
from .autoencoder import build_codec
from .cmg import CrossModalGate
from .dit import DiT, Route
from .gateway import QueryGateway
from .layers import key_bias_from_mask, map_to_tokens, tokens_to_map
from .text_encoder import TextEmbedder, build_text_encoder, load_tokenizer, pretrained_folder
from tokenizers import Tokenizer

SIGMA_MIN = 1e-3  # the source path's velocity (x_t - source) / sigma is taken at sigma >= this


def shortcut_draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortcut training points: the half-step d (n,), a power of two from SHORTCUT_MIN_STEP / 2 to
    1/2 (each level equally often), and sigma (n,) on the grid of the whole step 2d: 2d, 4d, ..., 1,
    uniformly, so that the step from sigma to sigma - 2d is one a uniform 1 / (2d)-step sampler takes."""
    levels = round(math.log2(1 / SHORTCUT_MIN_STEP)) + 1  # whole steps 2d = SHORTCUT_MIN_STEP * 2^k, k < levels
    k = torch.randint(0, levels, (n,), generator=gen)
    whole = SHORTCUT_MIN_STEP * torch.pow(2.0, k.to(torch.float32))  # (n,) 2d
    cells = torch.round(1 / whole)  # (n,) steps of size 2d from 1 to 0
    j = torch.floor(torch.rand(n, generator=gen) * cells) + 1  # (n,) in 1..cells
    return j * whole, whole / 2


def route_draw(changed: torch.Tensor, is_edit: torch.Tensor, grid: tuple[int, int], fraction: float,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token routing's draw for one batch: which image tokens run the routed blocks.
    changed (B, N) the change mask at token resolution (ones for generation samples), is_edit (B,).
    An edit's changed tokens, dilated by one token, are protected: always kept. Each sample keeps
    K = max(N - round(fraction * N), its protected count, over the batch) tokens: its protected
    ones and the rest at random (scores from the CPU generator `gen`, so a run is reproducible).
    -> keep (B, K) token indices, ascending; protected (B, N) bool."""
    B, N = changed.shape
    dilated = F.max_pool2d(changed.reshape(B, 1, *grid).float(), 3, stride=1, padding=1).flatten(1)  # (B, N)
    protected = (dilated > 0) & (is_edit[:, None] > 0)
    keep_n = max(N - round(fraction * N), int(protected.sum(1).max()))
    score = torch.rand(B, N, generator=gen).to(changed.device).masked_fill(protected, -1.0)  # protected first
    keep = torch.argsort(score, dim=1)[:, :keep_n]  # (B, K)
    return torch.sort(keep, dim=1).values, protected


@dataclass
class Batch:
    """Pixels in [-1, 1]; masks in {0, 1} at pixel resolution."""

    target: torch.Tensor  # (B, 3, H, W)
    source: torch.Tensor  # (B, 3, H, W), zeros for generation samples
    change: torch.Tensor  # (B, 1, H, W) true change mask, ones for generation samples
    region: torch.Tensor  # (B, 1, H, W) region query (box or mask), zeros when absent
    is_edit: torch.Tensor  # (B,) 1 for editing samples
    texts: list[str]  # captions (generation) or instructions (editing)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.target.to(device), self.source.to(device), self.change.to(device), self.region.to(device),
                     self.is_edit.to(device), self.texts)


class QKModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.text)
        self.text_encoder = build_text_encoder(cfg.text, self.tokenizer)
        self.codec = build_codec(cfg.codec)
        C, D, p = self.codec.channels, cfg.decoder.width, cfg.decoder.patch
        text_width = self.text_encoder.width
        self.gateway = QueryGateway(cfg.gateway, D, text_width, C, p) if cfg.gateway.enabled else None
        self.cmg = CrossModalGate(cfg.gate, D, C, p) if cfg.gate.enabled else None
        if self.cmg is not None and self.gateway is None:
            self.gate_text_proj = nn.Linear(text_width, D)  # the CMG reads projected text instead
        self.decoder = DiT(cfg.decoder, C, text_width)
        self.embedder = TextEmbedder(self.text_encoder, self.tokenizer)

    # ------------------------------------------------------------------ parts

    @property
    def patch(self) -> int:
        return self.cfg.decoder.patch

    @property
    def factor(self) -> int:
        return self.codec.factor

    def trainable_prefixes(self) -> tuple[str, ...]:
        parts = ["decoder.", "gateway.", "cmg.", "gate_text_proj."]
        if not getattr(self.text_encoder, "frozen", False):
            parts.append("text_encoder.")
        return tuple(parts)

    def main_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the joint objective (the codec is trained before, then frozen)."""
        prefixes = self.trainable_prefixes()
        return [p for n, p in self.named_parameters() if n.startswith(prefixes)]

    def saved_state(self) -> dict[str, torch.Tensor]:
        """Weights that go into a checkpoint: everything but a frozen pretrained text encoder."""
        skip = "text_encoder." if getattr(self.text_encoder, "frozen", False) else "\0"
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def count_parameters(self) -> dict[str, int]:
        def n(module):
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        return {
            "text_encoder": n(self.text_encoder),
            "codec": n(self.codec),
            "gateway": n(self.gateway),
            "cmg": n(self.cmg),
            "decoder": n(self.decoder),
        }

    # ------------------------------------------------------------------ conditioning

    def latent_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, 1, h, w): a latent pixel is in if any of its pixels is."""
        return F.max_pool2d(pixel_mask, self.factor) if self.factor > 1 else pixel_mask

    def text_states(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embedder(texts)

    def kontext(self, text, text_mask, source, region, flags) -> torch.Tensor | None:
        if self.gateway is None:
            return None
        return self.gateway(text, text_mask, source, region, flags)  # (B, K, D)

    def gate_logits(self, kontext, text, text_mask, source, region) -> torch.Tensor:
        """(B, N) logits of the Cross-Modal Gate."""
        if self.gateway is not None:
            return self.cmg(kontext, None, source, region)
        return self.cmg(self.gate_text_proj(text), key_bias_from_mask(text_mask), source, region)

    def gate_map(self, gate: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, N) per-token gate -> (B, 1, h, w) at latent resolution."""
        p = self.patch
        return tokens_to_map(gate, h // p, w // p, p)

    @staticmethod
    def gated_velocity(v_pred, x, source, sigma, gate_map) -> torch.Tensor:
        """v = m * v_pred + (1 - m) * v_back_to_source, with v_back = (x_t - source) / sigma."""
        back = (x - source) / sigma.clamp_min(SIGMA_MIN)[:, None, None, None]
        return gate_map * v_pred + (1.0 - gate_map) * back

    # ------------------------------------------------------------------ objective

    def loss(self, batch: Batch, gen: torch.Generator, text_states=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow velocity loss on generation and editing samples plus the gate's BCE. With
        `train.shortcut_fraction` (a model with `decoder.step_size_cond`) the batch's first samples
        regress v(x, sigma, 2d) onto `shortcut_target` instead (weighted by `train.shortcut_weight`),
        the others the flow-matching target at step size 0. With `train.route_fraction` the
        decoder's forward routes that share of the image tokens past `train.route_blocks`
        (`route_draw`: never an edit's changed tokens); the loss still covers every token, and the
        shortcut target is the full model's."""
        t = self.cfg.train
        B = batch.target.shape[0]
        dev = batch.target.device  # random draws come from the CPU generator `gen` (reproducible anywhere), then move
        with torch.no_grad():
            x0 = self.codec.encode(batch.target)  # (B, C, h, w)
            src = self.codec.encode(batch.source) * batch.is_edit[:, None, None, None]
        _, _, h, w = x0.shape
        region = self.latent_mask(batch.region)  # (B, 1, h, w)
        change = self.latent_mask(batch.change)
        token_mask = map_to_tokens(change, self.patch)  # (B, N)

        # condition dropout for classifier-free guidance on text and image
        u = torch.rand(B, generator=gen).to(dev)
        drop_both = u < t.drop_both
        drop_text = drop_both | ((u >= t.drop_both) & (u < t.drop_both + t.drop_text))
        lo = t.drop_both + t.drop_text
        drop_image = drop_both | ((u >= lo) & (u < lo + t.drop_image))
        drop_image = drop_image & (batch.is_edit > 0)
        keep_img = (~drop_image).float() * batch.is_edit  # (B,)
        texts = ["" if d else s for s, d in zip(batch.texts, drop_text.tolist())]
        if text_states is None:
            text_states = self.text_states(texts)
        text, text_mask = text_states
        used = max(1, int(text_mask.sum(1).max()))  # keys past the longest text are padding: masked anyway
        text, text_mask = text[:, :used], text_mask[:, :used]  # (B, used, Wt), (B, used)
        src = src * keep_img[:, None, None, None]
        region = region * keep_img[:, None, None, None]
        has_region = (region.flatten(1).amax(1) > 0).float()
        flags = torch.stack([keep_img, has_region], 1)  # (B, 2)

        kontext = self.kontext(text, text_mask, src, region, flags)
        is_edit = batch.is_edit
        gate_in = torch.ones_like(token_mask)
        gate_loss = torch.zeros((), device=dev)
        if self.cmg is not None:
            logits = self.gate_logits(kontext, text, text_mask, src, region)  # (B, N)
            bce = F.binary_cross_entropy_with_logits(logits, token_mask, reduction="none").mean(1)
            gate_w = keep_img
            gate_loss = (bce * gate_w).sum() / gate_w.sum().clamp_min(1.0)
            use_true = (torch.rand(B, generator=gen) < t.true_gate_prob).float()[:, None].to(dev)
            predicted = torch.sigmoid(logits).detach()
            gate_in = use_true * token_mask + (1 - use_true) * predicted
            gate_in = is_edit[:, None] * gate_in + (1 - is_edit[:, None])  # m = 1 for text-to-image
        gate_map = self.gate_map(gate_in, h, w)

        noise = torch.randn(x0.shape, generator=gen).to(dev)
        sigma = torch.sigmoid(torch.randn(B, generator=gen)).to(dev)  # logit-normal timesteps
        v_target = noise - x0
        step_size, part_w, logs = None, torch.ones(B, device=dev), {}
        if self.cfg.decoder.step_size_cond:
            step_size = torch.zeros(B, device=dev)  # the flow-matching part: the instantaneous velocity
        n_sc = round(B * t.shortcut_fraction)
        if n_sc:
            sc = slice(0, n_sc)  # the batch's samples are drawn independently: its first n_sc take the shortcut loss
            sigma_sc, d = shortcut_draw(n_sc, gen)
            sigma, step_size = sigma.clone(), step_size.clone()
            sigma[sc], step_size[sc] = sigma_sc.to(dev), 2 * d.to(dev)
            s = sigma[sc, None, None, None]
            x_sc = s * noise[sc] + (1 - s) * x0[sc]
            v_target = v_target.clone()
            v_target[sc] = self.shortcut_target(x_sc, sigma[sc], d.to(dev), text[sc], text_mask[sc],
                                                None if kontext is None else kontext[sc], src[sc], region[sc],
                                                gate_map[sc], flags[sc])
            part_w[sc] = t.shortcut_weight
        route = None
        if t.route_fraction > 0:  # the step's last draw: every draw above is what it is without routing
            keep, _ = route_draw(token_mask, is_edit, (h // self.patch, w // self.patch), t.route_fraction, gen)
            logs["routed"] = 1.0 - keep.shape[1] / token_mask.shape[1]  # share of image tokens routed
            if keep.shape[1] < token_mask.shape[1]:
                route = Route(keep, *t.route_blocks)
        s = sigma[:, None, None, None]
        x_t = s * noise + (1 - s) * x0
        v_pred = self.decoder(x_t, sigma, text, text_mask, kontext, src, region, gate_map, flags, step_size=step_size,
                              route=route)
        inside = self.gate_map(token_mask, h, w) * is_edit[:, None, None, None]
        weight = 1.0 + t.inside_weight * inside
        per_sample = (weight * (v_pred - v_target) ** 2).mean((1, 2, 3)) / weight.mean((1, 2, 3))
        sample_w = (is_edit * t.edit_loss_weight + (1 - is_edit) * t.gen_loss_weight) * part_w
        v_loss = (per_sample * sample_w).sum() / B
        if n_sc:
            logs["v_shortcut"] = float(per_sample[:n_sc].detach().mean())
        total = v_loss + t.gate_loss_weight * gate_loss
        return total, {"loss": total.item(), "v": v_loss.item(), "gate": float(gate_loss.detach()), **logs}

    @torch.no_grad()
    def shortcut_target(self, x, sigma, d, text, text_mask, kontext, source, region, gate_map, flags) -> torch.Tensor:
        """The shortcut models' self-consistency target for a step of size 2d from x at sigma (the
        step ends at sigma - 2d, nearer the data): the mean of two steps of size d of the model
        itself, without gradient. x moves from noise (sigma 1) to data (sigma 0) as
        x <- x - d v, so v_target = (v(x, sigma, d) + v(x - d v(x, sigma, d), sigma - d, d)) / 2. The
        finest level's half-steps (d < SHORTCUT_MIN_STEP) take the instantaneous velocity (d = 0),
        the one flow matching trains. -> (n, C, h, w) float32."""
        cond = self.decoder.condition(text, text_mask, kontext, flags)
        half = torch.where(d < SHORTCUT_MIN_STEP, torch.zeros_like(d), d)
        dd = d[:, None, None, None]
        v1 = self.decoder(x, sigma, None, None, None, source, region, gate_map, None, cond=cond, step_size=half).float()
        x1 = x - dd * v1  # (n, C, h, w)
        v2 = self.decoder(x1, sigma - d, None, None, None, source, region, gate_map, None, cond=cond, step_size=half).float()
        return (v1 + v2) / 2

    # ------------------------------------------------------------------ checkpoints

    def pretrained_refs(self) -> dict:
        if not getattr(self.text_encoder, "frozen", False):
            return {}
        folder = self.text_encoder.folder
        return {
            "text_encoder": {
                "package": None if self.cfg.text.path else self.cfg.text.package,
                "path": self.cfg.text.path,
                "sha256": ckpt.sha256_file(folder / "model.safetensors"),
            }
        }

    def save(self, path: Path, weights: dict[str, torch.Tensor] | None = None, **train) -> Path:
        return ckpt.save_checkpoint(
            Path(path),
            config_yaml=yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
            weights=weights if weights is not None else self.saved_state(),
            tokenizer_json=self.tokenizer.to_str(),
            pretrained=self.pretrained_refs(),
            **train,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "QKModel":
        path = ckpt.check_checkpoint_dir(Path(path))
        damaged = "; the checkpoint is damaged: copy it again or use another one (qk-train writes them whole)"
        try:
            values = yaml.safe_load((path / ckpt.CONFIG_FILE).read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ckpt.CheckpointError(f"{path / ckpt.CONFIG_FILE} is not valid YAML ({type(exc).__name__}){damaged}") from None
        cfg = from_dict(values, where=str(path / ckpt.CONFIG_FILE))
        try:
            tokenizer = Tokenizer.from_str((path / ckpt.TOKENIZER_FILE).read_text())
        except Exception as exc:  # tokenizers raises its own exception type
            raise ckpt.CheckpointError(f"{path / ckpt.TOKENIZER_FILE} is not a tokenizer file ({exc}){damaged}") from None
        model = cls(cfg, tokenizer)
        refs_file = path / ckpt.PRETRAINED_FILE
        if refs_file.exists():
            import json

            refs = json.loads(refs_file.read_text())
            te = refs.get("text_encoder")
            if te:
                have = ckpt.sha256_file(pretrained_folder(cfg.text) / "model.safetensors")
                if have != te["sha256"]:
                    raise ckpt.CheckpointError(
                        f"{path} was trained with a text encoder whose model.safetensors has sha256 {te['sha256']}, "
                        f"but the installed one has {have}; install the same version of {te.get('package') or te.get('path')}"
                    )
        weights = ckpt.load_weights(path)
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # tensors of the wrong shape: weights and config from different models
            first = str(exc).split("\n")[1].strip() if "\n" in str(exc) else str(exc)
            raise ckpt.CheckpointError(f"{path}/model.safetensors does not match its hyperparameters.yaml ({first}); "
                                       f"the two files come from different models") from None
        frozen = "text_encoder." if getattr(model.text_encoder, "frozen", False) else "\0"
        missing = [k for k in missing if not k.startswith(frozen)]
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"{path}/model.safetensors does not match its hyperparameters.yaml: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        return model
