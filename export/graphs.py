"""The exported networks as small torch modules, one per graph of `qk_runtime.contract`, and
random inputs of the right dtypes and ranges for export and parity checks.

Each wrapper's `forward(*inputs)` takes the graph's inputs in the contract's order and returns
its outputs in the contract's order (one tensor, or a tuple for decoder_cond), so
`torch.onnx.export` names them exactly as the contract does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from qk_runtime.contract import FEW_STEP_FORMAT_VERSION, Dims, GraphSpec, graph_specs
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
        depth=cfg.decoder.depth,
    )


def has_step_size(model: QKModel) -> bool:
    """Whether the model's DiT takes the sampler's step size (few-step sampling, bundle format 5)."""
    return model.cfg.decoder.step_size_cond


def bundle_format(model: QKModel) -> int:
    """The format a bundle of `model` is written in: 5 with the step-size input, else 4 (so that a
    model without it gives the bundle every runtime of format 4 reads)."""
    return FEW_STEP_FORMAT_VERSION if has_step_size(model) else FEW_STEP_FORMAT_VERSION - 1


def model_specs(model: QKModel, region: bool, format_version: int | None = None) -> dict[str, GraphSpec]:
    return graph_specs(model_dims(model), gateway=model.gateway is not None, gate=model.cmg is not None, region=region,
                       format_version=bundle_format(model) if format_version is None else format_version,
                       step_size=has_step_size(model))


# --------------------------------------------------------------------------- wrappers


class _Graph(nn.Module):
    """Binds positional graph inputs to the contract's names."""

    def __init__(self, spec: GraphSpec):
        super().__init__()
        self.input_names = tuple(t.name for t in spec.inputs)

    def named(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected inputs {self.input_names}, got {len(inputs)} tensors")
        return dict(zip(self.input_names, inputs))


class TextEncoderGraph(_Graph):
    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.encoder = model.text_encoder

    def forward(self, input_ids, attention_mask):
        # by keyword: a Hugging Face model's positional parameters are not (ids, mask)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)  # (B, L, Wt)


class ImageEncoderGraph(_Graph):
    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.codec = model.codec

    def forward(self, image):
        return self.codec.encode(image)  # (B, 3, S, S) -> (B, C, h, w)


class ImageDecoderGraph(_Graph):
    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.codec = model.codec

    def forward(self, latent):
        return self.codec.decode(latent)  # (B, C, h, w) -> (B, 3, S, S)


class GatewayGraph(_Graph):
    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.gateway = model.gateway

    def forward(self, text, text_mask, source, region, flags):
        return self.gateway(text, text_mask, source, region, flags)  # (B, K, D)


class CMGGraph(_Graph):
    """The Cross-Modal Gate as probabilities; the runtime thresholds them."""

    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.cmg = model.cmg

    def forward(self, kontext, source, region):
        return torch.sigmoid(self.cmg(kontext, None, source, region))  # (B, N) in [0, 1]


class DecoderCondGraph(_Graph):
    """The decoder's per-edit conditioning (`DiT.condition`): three outputs, run once per edit."""

    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.decoder = model.decoder

    def forward(self, *inputs):
        a = self.named(inputs)
        return self.decoder.condition(a["text"], a["text_mask"], a.get("kontext"), a["flags"])


def _conditioning(a: dict) -> dict:
    """The DiT's conditioning arguments: decoder_cond's outputs where the step takes them (format
    3), else the text, kontext and flags it conditions itself on (formats 1 and 2)."""
    if "cond_kv" in a:
        return {"text": None, "text_mask": None, "kontext": None, "flags": None,
                "cond": (a["cond_kv"], a["cond_bias"], a["cond_emb"])}
    return {"text": a["text"], "text_mask": a["text_mask"], "kontext": a.get("kontext"), "flags": a["flags"]}


class DecoderGraph(_Graph):
    """One denoising step: the DiT's velocity gated by the CMG's map (`QKModel.gated_velocity`).
    Format 5 (a model with step-size conditioning) also takes `step_size` (B,)."""

    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.decoder = model.decoder

    def forward(self, *inputs):
        a = self.named(inputs)
        v = self.decoder(a["x"], a["sigma"], source=a["source"], region=a["region"], gate_map=a["gate_map"],
                         step_size=a.get("step_size"), **_conditioning(a))  # (B, C, h, w)
        return QKModel.gated_velocity(v, a["x"], a["source"], a["sigma"], a["gate_map"])


class DecoderRegionGraph(_Graph):
    """The sparse `region` step. The DiT runs on the `active` tokens only; every other token
    takes the back-to-source velocity (x - source) / max(sigma, 1e-3); then the same gating as
    the dense step. The output is the full (B, C, h, w) velocity."""

    def __init__(self, model: QKModel, spec: GraphSpec):
        super().__init__(spec)
        self.decoder = model.decoder
        self.patch = model.cfg.decoder.patch

    def forward(self, *inputs):
        a = self.named(inputs)
        x, sigma, source, gate_map, active = a["x"], a["sigma"], a["source"], a["gate_map"], a["active"]
        B, C, h, w = x.shape
        v_active = self.decoder(x, sigma, source=source, region=a["region"], gate_map=gate_map, active=active,
                                step_size=a.get("step_size"), **_conditioning(a))  # (B, M, C*p*p)
        back = (x - source) / sigma.clamp_min(SIGMA_MIN)[:, None, None, None]  # (B, C, h, w)
        tokens = patchify(back, self.patch)  # (B, N, C*p*p)
        index = active[:, :, None].expand(-1, -1, tokens.shape[-1])  # (B, M, C*p*p)
        tokens = tokens.scatter(1, index, v_active)  # ScatterElements: active tokens take the DiT's velocity
        v = unpatchify(tokens, self.patch, C, h, w)  # (B, C, h, w)
        return QKModel.gated_velocity(v, x, source, sigma, gate_map)


WRAPPERS: dict[str, type[_Graph]] = {
    "text_encoder": TextEncoderGraph,
    "image_encoder": ImageEncoderGraph,
    "image_decoder": ImageDecoderGraph,
    "gateway": GatewayGraph,
    "cmg": CMGGraph,
    "decoder_cond": DecoderCondGraph,
    "decoder": DecoderGraph,
    "decoder_region": DecoderRegionGraph,
}


def wrap(model: QKModel, spec: GraphSpec) -> _Graph:
    return WRAPPERS[spec.name](model, spec).eval()


# --------------------------------------------------------------------------- inputs


def sample_inputs(spec: GraphSpec, model: QKModel, gen: torch.Generator, batch: int | None = None,
                  active: int | None = None, text_tokens: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs with the contract's dtypes and realistic ranges.

    batch: default the profile's max (3 for the guidance graphs); active: default the
    profile's opt (a quarter of the tokens); text_tokens: default the profile's max. Token ids lie in the vocabulary and start with
    [CLS]; masks have leading ones; sigma lies in (0, 1], step_size in [0, 1); masks and flags are 0/1.
    """
    ranges = dict(spec.axis_ranges)
    b = batch or ranges["batch"][2]
    if any(t.name == "cond_kv" for t in spec.inputs):
        # a step of format 3: its conditioning is what decoder_cond makes of random text and kontext
        dims = model_dims(model)
        specs = graph_specs(dims, gateway=model.gateway is not None, gate=model.cmg is not None)
        cond_spec = specs["decoder_cond"]
        with torch.no_grad():
            made = dict(zip((t.name for t in cond_spec.outputs),
                            wrap(model, cond_spec)(*sample_inputs(cond_spec, model, gen, batch=b))))
        other = GraphSpec(spec.name, spec.file, tuple(t for t in spec.inputs if t.name not in made), spec.outputs,
                          spec.axis_ranges)
        rest = dict(zip((t.name for t in other.inputs),
                        sample_inputs(other, model, gen, batch=b, active=active, text_tokens=text_tokens)))
        return tuple(made[t.name] if t.name in made else rest[t.name] for t in spec.inputs)
    m_active = active or ranges.get("active", (1, 1, 1))[1]
    n_text = text_tokens or ranges.get("text_tokens", (1, 1, 1))[2]
    n_tokens = model_dims(model).tokens
    vocab = model.tokenizer.get_vocab_size()
    out = []
    for t in spec.inputs:
        named = {"batch": b, "active": m_active, "text_tokens": n_text}
        shape = [named[d] if isinstance(d, str) else d for d in t.shape]
        if t.name == "input_ids":
            ids = torch.randint(4, vocab, shape, generator=gen)
            ids[:, 0] = model.tokenizer.token_to_id("[CLS]") or 0
            out.append(ids)
        elif t.name in ("attention_mask", "text_mask"):
            lengths = torch.randint(2, shape[1] + 1, (shape[0],), generator=gen)
            mask = torch.arange(shape[1])[None] < lengths[:, None]  # leading ones
            out.append(mask.to(torch.int64 if t.dtype == "int64" else torch.float32))
        elif t.name == "sigma":
            out.append(1.0 - torch.rand(shape, generator=gen) * 0.999)  # (0.001, 1]
        elif t.name == "step_size":
            out.append(torch.rand(shape, generator=gen))  # [0, 1): a few-step sampler's sigma - sigma_next
        elif t.name in ("region", "gate_map"):
            out.append((torch.rand(shape, generator=gen) > 0.5).float())
        elif t.name == "flags":
            out.append((torch.rand(shape, generator=gen) > 0.3).float())
        elif t.name == "image":
            out.append(torch.rand(shape, generator=gen) * 2 - 1)
        elif t.name == "active":
            rows = [torch.randperm(n_tokens, generator=gen)[:m_active].sort().values for _ in range(b)]
            out.append(torch.stack(rows))
        else:
            out.append(torch.randn(shape, generator=gen))
    return tuple(out)
