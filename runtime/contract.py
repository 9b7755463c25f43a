"""The export contract: one description per exported network of its inputs, outputs, dynamic
axes and TensorRT optimization profiles (min / opt / max shapes).

Export writes graphs to match it, `qk-build` reads its profiles, and the runtimes bind tensors
by these names. It is plain Python so that the runtime (which never imports torch) and the
export code (which does) read the same description.
"""
from __future__ import annotations

from dataclasses import dataclass

# 2: the text encoder's token axis is dynamic ("text_tokens"), so runtimes may run it on the
# longest prompt of a batch instead of all `max_length` tokens. Runtimes still read 1 (fixed).
# 3: the decoder's per-edit conditioning is its own graph, `decoder_cond` (text, text mask,
# kontext, flags -> every block's cross-attention keys and values, their padding bias, the
# pooled-text + flags embedding), run once per edit; the decoder steps take its outputs instead
# of text / text_mask / kontext / flags. Runtimes still read 1 and 2.
# 4: the manifest's `composite` entry says how an edit's output is composited with its source
# (`composite.py`: kind "gate", or "changed" with lo / hi / widen, which decodes the source latent
# too); graphs as in 3. Bundles of formats 1-3 have no entry and composite by the gate only.
# 5: few-step sampling. A model trained with step-size conditioning (shortcut models) has one more
# decoder input, `step_size` (B,) float32 (after `sigma`), in `decoder` and `decoder_region`, and
# the manifest's `few_step` entry says at which step counts the sampler runs the uniform schedule
# feeding step_size = sigma - sigma_next (`FEW_STEP_FIELDS`); every other count runs the ordinary
# schedule with step_size 0. Only such models are written as 5: every other bundle stays 4.
FORMAT_VERSION = 5
# the first format whose manifest carries `composite`
COMPOSITE_FORMAT_VERSION = 4
# the first format whose decoders may take `step_size` (with the manifest's `few_step`)
FEW_STEP_FORMAT_VERSION = 5
# the manifest's `few_step` entry: `steps` (the step counts, increasing integers) and these fixed
# values, which say what the sampler does (runtimes refuse other values):
#   sigmas "uniform": at n steps sigma_k = (n - k) / n, k = 0..n, in float64 rounded to float32, no shift
#   step_size "sigma - sigma_next": each step's decoder input, the float32 difference of the two
#   other_step_size 0.0: at every other step count the ordinary schedule (with the sampler's shift)
#     and step_size 0 (the instantaneous velocity)
FEW_STEP_FIELDS = {"sigmas": "uniform", "step_size": "sigma - sigma_next", "other_step_size": 0.0}
MIN_FORMAT_VERSION = 1
# the decoder_cond outputs every step of an edit reads (format 3)
STEP_CONDITION = ("cond_kv", "cond_bias", "cond_emb")

# Weight-only INT8 graphs (int8 weights behind DequantizeLinear, float activations). Runtimes open
# them in ONNX Runtime with `session.disable_quant_qdq` = 1: its Q/DQ fusion would otherwise turn
# them into integer GEMMs that quantize the activations on the fly, slower and less accurate here
# (all-MiniLM-L6-v2: 8.5 vs 6.0 ms per call, 3.7 % vs 3.0 % of the output's spread as error against
# FP32); without it the weights are dequantized once at load.
# Which graphs are weight-only is the manifest's `quantization.weight_only` (WEIGHT_ONLY_KEY): the
# names of the INT8 graphs stored so, every quantized graph with `qk-export --int8 --weight-only`.
# A manifest without that list (bundles written before it, and FP32 / FP16 bundles that share an
# INT8 bundle's text encoder) has WEIGHT_ONLY_INT8_GRAPHS weight-only where their precision is
# int8: the graphs every INT8 export stores weight-only. Runtimes that do not read the list open a
# weight-only decoder with the fusion on: it runs, slower and a little further from FP32.
WEIGHT_ONLY_INT8_GRAPHS = ("text_encoder",)
WEIGHT_ONLY_KEY = "weight_only"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
# `qk-build --golden`: fixed inputs and ONNX Runtime CPU outputs of every graph (runtime/golden.py),
# listed in `files` like every file but left out of the bundle's hash that keys TensorRT engines
# (they change no engine: saving them leaves built engines valid)
GOLDEN = "golden.json"
GOLDEN_DATA = "golden.npz"
GOLDEN_FILES = (GOLDEN, GOLDEN_DATA)

# Guidance batches: an edit runs 3 branches (text+image, image only, neither), generation 2.
MAX_BATCH = 3

# Token counts the region decoder runs at, as fractions of all tokens (rounded half to even): an
# edit's active tokens plus their halo are padded to the smallest that holds them, so that engines
# with static shapes see a few sizes only. Eighths, measured on 2026-11-28: on 150 val edits of the shipped
# model (64 tokens) the mean count fell from 32.9 (quarters) to 29.7 and the INT8 region edit's
# denoising loop got 3 % faster (paired median; medians 178 -> 169 ms), success within noise
# (500 val edits: 0.612 vs 0.618). benchmarks/results/cpu-2core/region_buckets.md
# Exports write these into the manifest (`sampler.region_buckets`); a bundle is run with its own.
REGION_BUCKETS = tuple(k / 8 for k in range(1, 9))
# what a manifest without `region_buckets` was written with
LEGACY_REGION_BUCKETS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Dims:
    """Every size the graphs depend on, read from the model config."""

    image_size: int  # S: pixels per side of the exported resolution
    latent_channels: int  # C
    factor: int  # pixels per latent pixel
    patch: int  # latent pixels per token side
    max_length: int  # L: text tokens
    text_width: int  # Wt
    kontext_tokens: int  # K (0 without a gateway)
    width: int  # D: decoder width
    depth: int = 0  # decoder blocks (format 3's cond_kv holds 2D per block; 0 in older manifests)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor

    @property
    def grid(self) -> int:
        return self.latent_size // self.patch

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def cond_tokens(self) -> int:
        """Conditioning tokens every decoder block attends to: the text's, then the kontext's."""
        return self.max_length + self.kontext_tokens

    @property
    def cond_width(self) -> int:
        """Last axis of cond_kv: keys and values (2D) of each of the `depth` blocks."""
        return 2 * self.width * self.depth

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch * self.patch

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple  # ints, or strings naming dynamic axes ("batch", "active")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # TensorRT profile: each dynamic axis name -> (min, opt, max)
    axis_ranges: tuple[tuple[str, tuple[int, int, int]], ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The torch.onnx.export form: tensor name -> {axis index: axis name}."""
        out: dict[str, dict[int, str]] = {}
        for t in self.inputs + self.outputs:
            axes = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if axes:
                out[t.name] = axes
        return out

    def profile(self) -> dict[str, dict[str, list[int]]]:
        """Input name -> {"min": shape, "opt": shape, "max": shape} for TensorRT."""
        ranges = dict(self.axis_ranges)
        prof = {}
        for t in self.inputs:
            prof[t.name] = {
                key: [ranges[d][i] if isinstance(d, str) else d for d in t.shape]
                for i, key in enumerate(("min", "opt", "max"))
            }
        return prof

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "dynamic_axes": {k: {str(i): n for i, n in v.items()} for k, v in self.dynamic_axes().items()},
            "profile": self.profile(),
        }


def _f(name: str, *shape) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


def graph_specs(d: Dims, *, gateway: bool = True, gate: bool = True, region: bool = False,
                format_version: int = FORMAT_VERSION, step_size: bool = False) -> dict[str, GraphSpec]:
    """The graphs of a bundle. `region` adds the sparse decoder that runs on active tokens only.
    `format_version` 1 describes older bundles, whose text encoder takes exactly `max_length`
    tokens; 1 and 2 have no decoder_cond graph (their decoder steps take the text themselves).
    `step_size` (format 5): the decoder steps take the sampler's step size after sigma."""
    if step_size and format_version < FEW_STEP_FORMAT_VERSION:
        raise ValueError(f"a step_size input needs format {FEW_STEP_FORMAT_VERSION} or newer, got {format_version}")
    B = "batch"
    S, C, h = d.image_size, d.latent_channels, d.latent_size
    batch = (B, (1, MAX_BATCH, MAX_BATCH))
    cond = (_f("text", B, d.max_length, d.text_width), _f("text_mask", B, d.max_length))
    image_inputs = (_f("source", B, C, h, h), _f("region", B, 1, h, h))
    if format_version >= 2:  # padding is masked everywhere, so the encoder may run on fewer tokens
        T, text_axes = "text_tokens", (batch, ("text_tokens", (1, min(16, d.max_length), d.max_length)))
    else:
        T, text_axes = d.max_length, (batch,)
    specs = {
        "text_encoder": GraphSpec(
            "text_encoder", "text_encoder.onnx",
            (TensorSpec("input_ids", "int64", (B, T)), TensorSpec("attention_mask", "int64", (B, T))),
            (_f("hidden", B, T, d.text_width),),
            text_axes,
        ),
        "image_encoder": GraphSpec(
            "image_encoder", "image_encoder.onnx", (_f("image", B, 3, S, S),), (_f("latent", B, C, h, h),), ((B, (1, 1, 2)),)
        ),
        "image_decoder": GraphSpec(
            "image_decoder", "image_decoder.onnx", (_f("latent", B, C, h, h),), (_f("image", B, 3, S, S),), ((B, (1, 1, 2)),)
        ),
    }
    if gateway:
        specs["gateway"] = GraphSpec(
            "gateway", "gateway.onnx", cond + image_inputs + (_f("flags", B, 2),),
            (_f("kontext", B, d.kontext_tokens, d.width),), (batch,),
        )
    if gate and gateway:
        specs["cmg"] = GraphSpec(
            "cmg", "cmg.onnx", (_f("kontext", B, d.kontext_tokens, d.width),) + image_inputs,
            (_f("gate", B, d.tokens),), ((B, (1, 1, MAX_BATCH)),),
        )
    kontext = (_f("kontext", B, d.kontext_tokens, d.width),) if gateway else ()
    if format_version >= 3:
        if d.depth < 1:
            raise ValueError(f"format {format_version} needs the decoder depth in dims, got {d.depth}")
        n_cond = d.cond_tokens if gateway else d.max_length
        step_condition = (_f("cond_kv", B, n_cond, d.cond_width), _f("cond_bias", B, n_cond), _f("cond_emb", B, d.width))
        specs["decoder_cond"] = GraphSpec(
            "decoder_cond", "decoder_cond.onnx", cond + kontext + (_f("flags", B, 2),), step_condition, (batch,),
        )
        step_inputs = ((_f("x", B, C, h, h), _f("sigma", B)) + ((_f("step_size", B),) if step_size else ())
                       + step_condition + image_inputs + (_f("gate_map", B, 1, h, h),))
    else:
        step_inputs = (
            (_f("x", B, C, h, h), _f("sigma", B)) + cond + kontext
            + image_inputs + (_f("gate_map", B, 1, h, h), _f("flags", B, 2))
        )
    specs["decoder"] = GraphSpec("decoder", "decoder.onnx", step_inputs, (_f("velocity", B, C, h, h),), (batch,))
    if region:
        n = d.tokens
        specs["decoder_region"] = GraphSpec(
            "decoder_region", "decoder_region.onnx",
            step_inputs + (TensorSpec("active", "int64", (B, "active")),),
            (_f("velocity", B, C, h, h),),
            # min: the smallest bucket (n // 8 <= round(n / 8)); opt: an edit over a quarter of the image
            (batch, ("active", (max(1, n // 8), max(1, n // 4), n))),
        )
    return specs
