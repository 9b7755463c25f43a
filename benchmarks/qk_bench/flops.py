"""FLOPs of one decoder step, counted from the config (`qk_train/models/dit.py`, read top to bottom).

Counted: every matrix product, 2 FLOPs per multiply-add (`2 * m * k * n`), the convention of
`torch.utils.flop_counter.FlopCounterMode`, which the torch worker and `scaling.py` check this
against. Not counted: biases, LayerNorm, softmax, GELU and the other elementwise work (a few % of
the products at these widths), and the gating outside the DiT.

For `B` images, `N` tokens (`A` of them run in the `region` mode), width `D`, `S = L + K`
conditioning tokens (text + kontext), MLP width `F`:

    x_embed      2 B N (in_ch p^2) D      every token is embedded before the active ones are gathered
    t_embed      2 B (128 D + D D)        the timestep MLP
    d_embed      2 B (128 D + D D)        the step-size MLP (models with step-size conditioning, bundle format 5)
    pool_proj    2 B Wt D,  flag_embed 2 B 2 D,  text_proj 2 B L Wt D
    per block:   ada 2 B D 6D; self q, kv, out 2 B A D (D + 2D + D); scores and weights x v 2 x 2 B A A' D
                 (A' = A dense, w^2 in w x w windows); cross q, out 2 B A D 2D; cross kv 2 B S D 2D;
                 cross scores and weights x v 2 x 2 B A S D; MLP 2 B A D F x 2
    final        ada 2 B D 2D, linear 2 B A D (C p^2)

Bundles of format 3 compute pool_proj, flag_embed, text_proj and every block's cross kv once per
edit (the `decoder_cond` graph), so their step has none of those (`DecoderShape.step_condition`).

`int8_flops` is the share that an INT8 bundle runs as integer GEMMs: the MatMul/Gemm nodes that
`qk_export.quantize` quantizes (everything but the parts in `FLOAT_PARTS`, its SENSITIVE list,
and the attention products of two activations).
"""
from __future__ import annotations

from dataclasses import dataclass

TIMESTEP_FREQ_DIM = 128  # TimestepEmbedding's sinusoid width (qk_train.models.layers)

# parts an INT8 bundle keeps in float (qk_export.quantize.SENSITIVE["decoder"] plus attention products)
FLOAT_PARTS = frozenset({"x_embed", "source_embed", "t_embed", "d_embed", "pool_proj", "flag_embed", "ada",
                         "self_attn_products", "cross_attn_products", "final_ada", "final_linear"})


@dataclass(frozen=True)
class DecoderShape:
    """What a decoder step's cost depends on."""

    width: int  # D
    depth: int
    heads: int
    patch: int  # p
    mlp_ratio: float
    latent_channels: int  # C
    latent_size: int  # h (latent pixels per side)
    text_length: int  # L
    text_width: int  # Wt
    kontext_tokens: int  # K (0 without a gateway)
    source_mode: str = "channel"  # "channel" | "sequence"
    window: int = 0  # w: self-attention in w x w token windows; 0 dense
    step_condition: bool = True  # the step takes decoder_cond's outputs (format 3), not the text
    step_size_cond: bool = False  # the step also embeds the sampler's step size (few-step models)

    @property
    def tokens(self) -> int:
        """Image tokens of the decoder: (latent_size / patch) squared, as `qk_runtime.contract.Dims` counts them."""
        return (self.latent_size // self.patch) ** 2

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "DecoderShape":
        """From a bundle's manifest.json: the sizes from its `dims` (read as the runtime reads them),
        the decoder's layout from its `model_config`."""
        from qk_runtime.contract import Dims

        d = Dims(**{k: v for k, v in manifest["dims"].items() if k in Dims.__dataclass_fields__})
        dec = manifest["model_config"]["decoder"]
        return cls(width=d.width, depth=dec["depth"], heads=dec["heads"], patch=d.patch,
                   mlp_ratio=float(dec["mlp_ratio"]), latent_channels=d.latent_channels,
                   latent_size=d.latent_size, text_length=d.max_length,
                   text_width=d.text_width, kontext_tokens=d.kontext_tokens,
                   source_mode=dec.get("source_mode", "channel"), window=int(dec.get("attn_window") or 0),
                   step_condition=int(manifest.get("format_version", 1)) >= 3,
                   step_size_cond=bool(dec.get("step_size_cond", False)))

    @classmethod
    def from_config(cls, cfg, text_width: int) -> "DecoderShape":
        """From a `qk_train.config.ModelConfig` (and the text encoder's width, which it does not hold
        for pretrained encoders)."""
        dec = cfg.decoder
        return cls(width=dec.width, depth=dec.depth, heads=dec.heads, patch=dec.patch, mlp_ratio=float(dec.mlp_ratio),
                   latent_channels=cfg.latent_channels, latent_size=cfg.data.image_size // cfg.factor,
                   text_length=cfg.text.max_length, text_width=text_width,
                   kontext_tokens=cfg.gateway.num_queries if cfg.gateway.enabled else 0,
                   source_mode=dec.source_mode, window=dec.attn_window, step_size_cond=dec.step_size_cond)


def decoder_step_flops(s: DecoderShape, batch: int, active: int | None = None) -> dict:
    """FLOPs of one decoder call on `batch` images; `active` tokens in the region mode (None: all).

    Returns {"total", "int8", "float", "parts": {part: flops}}."""
    if batch < 1:
        raise ValueError(f"batch={batch}; need at least 1")
    N = s.tokens
    A = N if active is None else int(active)
    if not 1 <= A <= N:
        raise ValueError(f"active={active}; must lie in 1..{N} (the token count)")
    window = s.window if s.source_mode == "channel" and active is None else 0  # as DiT.forward decides
    B, D, p, C, F = batch, s.width, s.patch, s.latent_channels, s.mlp_width
    S = s.text_length + s.kontext_tokens
    T = 2 * A if s.source_mode == "sequence" else A  # tokens in the blocks
    in_ch = (2 * C + 2) if s.source_mode == "channel" else (C + 1)
    keys = window * window if window else T  # keys each query attends to in self-attention

    def mm(m: int, k: int, n: int) -> int:
        return 2 * m * k * n

    parts = {
        "x_embed": mm(B * N, in_ch * p * p, D),
        "source_embed": mm(B * N, (C + 1) * p * p, D) if s.source_mode == "sequence" else 0,
        "t_embed": mm(B, TIMESTEP_FREQ_DIM, D) + mm(B, D, D),
        "d_embed": mm(B, TIMESTEP_FREQ_DIM, D) + mm(B, D, D) if s.step_size_cond else 0,
        "pool_proj": mm(B, s.text_width, D),
        "flag_embed": mm(B, 2, D),
        "text_proj": mm(B * s.text_length, s.text_width, D),
        "ada": s.depth * mm(B, D, 6 * D),
        "self_attn_proj": s.depth * (mm(B * T, D, D) + mm(B * T, D, 2 * D) + mm(B * T, D, D)),
        "self_attn_products": s.depth * 2 * mm(B * T, D, keys),  # q k^T and weights v, summed over heads
        "cross_q_out": s.depth * 2 * mm(B * T, D, D),
        "cross_kv": s.depth * mm(B * S, D, 2 * D),
        "cross_attn_products": s.depth * 2 * mm(B * T, D, S),
        "mlp": s.depth * (mm(B * T, D, F) + mm(B * T, F, D)),
        "final_ada": mm(B, D, 2 * D),
        "final_linear": mm(B * A, D, C * p * p),
    }
    if s.step_condition:  # computed once per edit by decoder_cond, not by the step
        for k in ("pool_proj", "flag_embed", "text_proj", "cross_kv"):
            parts[k] = 0
    total = sum(parts.values())
    flt = sum(v for k, v in parts.items() if k in FLOAT_PARTS)
    return {"total": total, "int8": total - flt, "float": flt, "parts": parts}


def floor_ms(flops: dict, peak_gflops: dict, precision: str) -> float | None:
    """The fastest a step could run at the measured peak: FP32 FLOPs at the FP32 peak, and for
    INT8 bundles the quantized share at the INT8 peak plus the rest at the FP32 peak.
    `peak_gflops`: {"fp32": GFLOP/s, "int8": GFLOP/s} of one runtime."""
    fp32 = peak_gflops.get("fp32")
    if not fp32:
        return None
    if precision == "int8":
        int8 = peak_gflops.get("int8")
        if not int8:
            return None
        return (flops["int8"] / int8 + flops["float"] / fp32) / 1e6
    return flops["total"] / fp32 / 1e6
