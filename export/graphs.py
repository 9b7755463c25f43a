"""Torch wrappers of the exported networks, one per graph of `qk_runtime.contract`, and sample
inputs for export and parity checks."""
from __future__ import annotations

import torch
import torch.nn as nn

from qk_runtime.contract import Dims, GraphSpec, graph_specs
from qk_train.models.layers import patchify, unpatchify
from qk_train.models.unified import SIGMA_MIN, QKModel


def model_dims(model: QKModel) -> Dims:
    cfg = model.cfg
    return Dims(
        image_size=cfg.data.image_size,
        latent_channels=model.codec.channels,
        factor=model.codec.factor,
        patch=cfg.decoder.patch,
        max_length=cfg.text.max_length,
        text_width=model.text_encoder.width,
        kontext_tokens=cfg.gateway.num_queries if model.gateway is not None else 0,
        width=cfg.decoder.width,
    )


def model_specs(model: QKModel, region: bool) -> dict[str, GraphSpec]:
    return graph_specs(model_dims(model), gateway=model.gateway is not None, gate=model.cmg is not None, region=region)


class TextEncoderGraph(nn.Module):
    def __init__(self, model: QKModel):
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


class ImageEncoderGraph(nn.Module):
    def __init__(self, model: QKModel):
        super().__init__()
        self.codec = model.codec

    def forward(self, image):
        return self.codec.encode(image)


class ImageDecoderGraph(nn.Module):
    def __init__(self, model: QKModel):
        super().__init__()
        self.codec = model.codec

    def forward(self, latent):
        return self.codec.decode(latent)


class GatewayGraph(nn.Module):
    def __init__(self, model: QKModel):
        super().__init__()
        self.gateway = model.gateway

    def forward(self, text, text_mask, source, region, flags):
        return self.gateway(text, text_mask, source, region, flags)


class CMGGraph(nn.Module):
    def __init__(self, model: QKModel):
        super().__init__()
        self.cmg = model.cmg

    def forward(self, kontext, source, region):
        return torch.sigmoid(self.cmg(kontext, None, source, region))  # (B, N) gate in [0, 1]


class DecoderGraph(nn.Module):
    """One denoising step with the CMG's gating: the output is the gated velocity."""

    def __init__(self, model: QKModel):
        super().__init__()
        self.decoder = model.decoder
        self.has_kontext = model.gateway is not None

    def forward(self, x, sigma, text, text_mask, *rest):
        kontext, (source, region, gate_map, flags) = (rest[0], rest[1:]) if self.has_kontext else (None, rest)
        v = self.decoder(x, sigma, text, text_mask, kontext, source, region, gate_map, flags)
        return QKModel.gated_velocity(v, x, source, sigma, gate_map)


class DecoderRegionGraph(nn.Module):
    """The sparse `region` step: the DiT runs on the `active` tokens only; every other token
    follows the source path (x - source) / sigma; then the same gating as the dense step."""

    def __init__(self, model: QKModel):
        super().__init__()
        self.decoder = model.decoder
        self.patch = model.cfg.decoder.patch
        self.has_kontext = model.gateway is not None

    def forward(self, x, sigma, text, text_mask, *rest):
        active = rest[-1]
        rest = rest[:-1]
        kontext, (source, region, gate_map, flags) = (rest[0], rest[1:]) if self.has_kontext else (None, rest)
        v_tok = self.decoder(x, sigma, text, text_mask, kontext, source, region, gate_map, flags, active=active)  # (B, M, P)
        B, C, h, w = x.shape
        back = (x - source) / sigma.clamp_min(SIGMA_MIN)[:, None, None, None]
        flat = patchify(back, self.patch)  # (B, N, P)
        flat = flat.scatter(1, active[:, :, None].expand(-1, -1, flat.shape[-1]), v_tok)
        v = unpatchify(flat, self.patch, C, h, w)
        return QKModel.gated_velocity(v, x, source, sigma, gate_map)


WRAPPERS = {
    "text_encoder": TextEncoderGraph,
    "image_encoder": ImageEncoderGraph,
    "image_decoder": ImageDecoderGraph,
    "gateway": GatewayGraph,
    "cmg": CMGGraph,
    "decoder": DecoderGraph,
    "decoder_region": DecoderRegionGraph,
}


def sample_inputs(spec: GraphSpec, model: QKModel, gen: torch.Generator, batch: int | None = None,
                  active: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs with the right dtypes and ranges for one graph (batch: the profile's max)."""
    ranges = dict(spec.axis_ranges)
    b = batch or ranges["batch"][2]
    m_active = active or ranges.get("active", (1, 1, 1))[1]
    vocab = model.tokenizer.get_vocab_size()
    out = []
    for t in spec.inputs:
        shape = [b if d == "batch" else m_active if d == "active" else d for d in t.shape]
        if t.name == "input_ids":
            ids = torch.randint(4, vocab, shape, generator=gen)
            ids[:, 0] = model.tokenizer.token_to_id("[CLS]") or 0
            out.append(ids)
        elif t.name in ("attention_mask", "text_mask"):
            lengths = torch.randint(3, shape[1] + 1, (shape[0],), generator=gen)
            mask = (torch.arange(shape[1])[None] < lengths[:, None])
            out.append(mask.to(torch.int64 if t.dtype == "int64" else torch.float32))
        elif t.name == "sigma":
            out.append(torch.rand(shape, generator=gen) * 0.98 + 0.02)
        elif t.name in ("region", "gate_map"):
            out.append((torch.rand(shape, generator=gen) > 0.5).float())
        elif t.name == "flags":
            out.append((torch.rand(shape, generator=gen) > 0.3).float())
        elif t.name == "image":
            out.append(torch.rand(shape, generator=gen) * 2 - 1)
        elif t.name == "active":
            n = spec_tokens(model)
            out.append(torch.stack([torch.randperm(n, generator=gen)[:m_active].sort().values for _ in range(b)]))
        else:
            out.append(torch.randn(shape, generator=gen))
    return tuple(out)


def spec_tokens(model: QKModel) -> int:
    return model_dims(model).tokens
