"""INT8: explicit symmetric Q/DQ (zero point 0; S8 weights per output channel, S8 activations
per tensor), so that one file serves ONNX Runtime and OpenVINO on CPUs and strongly typed
TensorRT builds.

Calibration uses real inputs. The torch reference pipeline runs ShapeWorld edits (half with a
box) and generations of the training split; forward hooks record what the decoder, the gateway
and the CMG receive, the decoder at a few steps of each trajectory chosen so that together they
cover every timestep of the default schedule. The same procedure on the `val` split gives the
held-out inputs that the INT8 parity in the manifest is measured on.

What is quantized: MatMul and Gemm (weights and inputs) of the decoder, gateway and CMG. Kept in
float by default, in three groups that `qk-export --int8-float` can change (`FLOAT_GROUPS`):
`adaln` (the timestep embedding and adaLN modulation, `t_embed`, `ada`), `io` (the input
projections `x_embed`, `source_embed`, the output projections `final`, the CMG's `head`) and
`attention` (the score and value MatMuls of two activations). The decoder's per-edit
conditioning graph (`decoder_cond`: every block's cross-attention keys and values of the text
and kontext, the pooled-text and flags embedding) stays float as a whole: it runs once per
edit, not per step. Softmax and LayerNorm are never quantized (only MatMul / Gemm are).

Measured (`benchmarks/int8_float_study.py`, shipped step-14000 checkpoint, 500 validation edits
per bundle, AVX2 CPU, `benchmarks/results/cpu-2core/int8_float_study.md`): quantizing any of the
three groups too raised the decoder's held-out error (0.017 of the output's std with all three
float; 0.020-0.031 with one group quantized, 0.036 with none float) and made the ONNX Runtime step
slower, not faster (dense 12.5 ms with the default, 12.7-13.7 ms otherwise: each extra Q/DQ pair
costs more than its small GEMM gains), while edit success stayed within noise (0.610-0.620 vs
0.618; FP32 0.626). So the default keeps all three groups float.

The text encoder gets weight-only INT8 (`weight_only_int8`): its MatMul / Gemm weights and its
embedding table become int8 with per-channel scales behind a DequantizeLinear; activations stay
float. Per-tensor INT8 activations do not hold a BERT encoder's outliers: quantizing them too
gave 43 % of the output's spread as error on all-MiniLM-L6-v2, weight-only 3 %, at a quarter
of the 90 MB.

`qk-export --int8 --weight-only` stores the decoder, gateway and CMG weight-only too, the same
way: the MatMul / Gemm weights that static INT8 would quantize (the float groups stay float) become
int8 per output channel (full range: ONNX Runtime runs no integer GEMM on them), no activation is
quantized and nothing is calibrated. The runtimes dequantize the weights once at load (ONNX
Runtime's Q/DQ fusion off, OpenVINO's dynamic quantization off), so every kernel is a float one
and the browser gave the Python runtime's pixels within a level (7 of 7 outputs, against 1 of 7
with static INT8, whose quantizers turn last-bit float differences between kernel families into
whole quantization steps), at FP32 speed, for an INT8-size download
(benchmarks/results/cpu-2core-xeon/browser_int8_parity.md, emulated). The manifest's
`quantization.weight_only` lists the weight-only graphs (`qk_runtime.contract.WEIGHT_ONLY_KEY`).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from qk_runtime.contract import STEP_CONDITION, WEIGHT_ONLY_INT8_GRAPHS, WEIGHT_ONLY_KEY, GraphSpec
from qk_train.data.shapeworld import make_edit, make_generation
from qk_train.models.unified import QKModel
from qk_train.pipeline import Pipeline, active_token_indices

from .exporter import EXTERNAL_DATA_BYTES, weight_bytes
from .graphs import wrap
from .parity import int8_parity, int8_problem

QUANTIZED_GRAPHS = ("text_encoder", "gateway", "cmg", "decoder", "decoder_region")
OP_TYPES = ("MatMul", "Gemm")  # static Q/DQ, and weight-only (--weight-only) of the graphs but the text encoder
# graph -> op types whose weights go int8 in the graphs every INT8 export stores weight-only
# (qk_runtime.contract.WEIGHT_ONLY_INT8_GRAPHS): the text encoder's embedding table (Gather) too
WEIGHT_ONLY = {name: ("MatMul", "Gemm", "Gather") for name in WEIGHT_ONLY_INT8_GRAPHS}


def weight_only_graphs(weight_only: bool) -> tuple[str, ...]:
    """The graphs an INT8 export stores weight-only: the text encoder always, every quantized
    graph with `weight_only` (`qk-export --weight-only`)."""
    return QUANTIZED_GRAPHS if weight_only else tuple(WEIGHT_ONLY)

# The layers an INT8 bundle may keep in float, in named groups (`qk-export --int8-float`): node-name
# fragments per graph (the names are the torch module paths), and "attention", the score and value
# MatMuls of two activations. benchmarks/int8_float_study.py measures what each group is worth.
FLOAT_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "adaln": {"decoder": ("/t_embed/", "/d_embed/", "/ada/")},  # timestep (and step-size) embedding, adaLN modulation
    "io": {"decoder": ("/x_embed/", "/source_embed/", "/final/"),  # input and output projections
           "gateway": ("/source_embed/", "/flag_embed/"),
           "cmg": ("/source_embed/", "/head/")},
    "attention": {},
}
DEFAULT_FLOAT = ("adaln", "io", "attention")


def float_layers(groups: tuple[str, ...] | list[str]) -> tuple[dict[str, tuple[str, ...]], bool]:
    """(node-name fragments kept in float per graph, whether attention MatMuls stay float) for
    the named groups; raises ValueError naming an unknown group."""
    unknown = [g for g in groups if g not in FLOAT_GROUPS]
    if unknown:
        raise ValueError(f"unknown INT8 float group(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(FLOAT_GROUPS)} (or none)")
    frags: dict[str, tuple[str, ...]] = {}
    for g in FLOAT_GROUPS:  # a fixed order, whatever the order asked
        if g in groups:
            for graph, fs in FLOAT_GROUPS[g].items():
                frags[graph] = frags.get(graph, ()) + fs
    if "decoder" in frags:
        frags["decoder_region"] = frags["decoder"]
    return frags, "attention" in groups


# the default: node-name fragments kept in float, per graph, and the attention products
SENSITIVE, EXCLUDE_ATTENTION = float_layers(DEFAULT_FLOAT)

STEPS_PER_TRAJECTORY = 4  # decoder calls recorded per denoising trajectory
HELDOUT_TRAJECTORIES = 4  # `val` trajectories for the INT8 parity report


# --------------------------------------------------------------------------- calibration data


@dataclass
class Recording:
    """Graph inputs, name -> array, as the graphs receive them in the reference pipeline."""

    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    description: str = ""

    def add(self, graph: str, feed: dict[str, np.ndarray]) -> None:
        self.feeds.setdefault(graph, []).append(feed)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def record_trajectories(model: QKModel, split: str, samples: int, first_index: int = 0) -> Recording:
    """Run the reference pipeline on `split` edits and generations and record graph inputs.

    `samples` decoder steps are recorded, STEPS_PER_TRAJECTORY per trajectory, at steps that
    shift from one trajectory to the next so that every timestep gets covered. Every fourth
    sample is a generation (batch 2), the others edits (batch 3), every other edit with a box.
    """
    pipe = Pipeline(model)
    steps = pipe.steps
    per = min(STEPS_PER_TRAJECTORY, steps)
    trajectories = max(1, math.ceil(samples / per))
    side = model.cfg.data.image_size
    rec = Recording()
    has_kontext = model.gateway is not None
    state = {"call": 0, "keep": set()}

    def on_decoder(module, args, kwargs):
        x, sigma, text, text_mask, kontext, source, region, gate_map, flags = args[:9]
        if state["call"] in state["keep"] and len(rec.feeds.get("decoder", [])) < samples:
            feed = {"x": _np(x), "sigma": _np(sigma), "text": _np(text), "text_mask": _np(text_mask)}
            if kwargs.get("step_size") is not None:  # a few-step model (bundle format 5)
                feed["step_size"] = _np(kwargs["step_size"])
            if has_kontext:
                feed["kontext"] = _np(kontext)
            feed.update(source=_np(source), region=_np(region), gate_map=_np(gate_map), flags=_np(flags))
            rec.add("decoder", feed)
        state["call"] += 1

    def on_gateway(module, args):
        text, text_mask, source, region, flags = args
        rec.add("gateway", {"text": _np(text), "text_mask": _np(text_mask), "source": _np(source),
                            "region": _np(region), "flags": _np(flags)})

    def on_cmg(module, args):
        kontext, _, source, region = args
        rec.add("cmg", {"kontext": _np(kontext), "source": _np(source), "region": _np(region)})

    handles = [model.decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)]
    if model.gateway is not None:
        handles.append(model.gateway.register_forward_pre_hook(on_gateway))
        if model.cmg is not None:
            handles.append(model.cmg.register_forward_pre_hook(on_cmg))
    texts = []
    try:
        for i in range(trajectories):
            index = first_index + i
            offset = (i * per) % steps
            state["call"] = 0
            state["keep"] = {(offset + j * steps // per) % steps for j in range(per)}
            if i % 4 == 3:
                _, caption, _ = make_generation(split, index, side)
                pipe.generate(caption, seed=index)
                texts.append(caption)
            else:
                s = make_edit(split, index, side)
                pipe.edit(s.source, s.instruction, s.box if i % 2 == 0 else None, seed=index)
                texts.append(s.instruction)
    finally:
        for h in handles:
            h.remove()
    ids, mask = model.embedder.tokenize(texts + [""])
    for k in range(ids.shape[0]):
        rec.add("text_encoder", {"input_ids": _np(ids[k:k + 1]), "attention_mask": _np(mask[k:k + 1])})
    rec.feeds["decoder_region"] = [{**f, "active": region_active(model, f["gate_map"])} for f in rec.feeds["decoder"]]
    rec.description = (f"{split}-split ShapeWorld trajectories ({trajectories} x {steps} steps, "
                       f"{len(rec.feeds['decoder'])} decoder steps recorded)")
    return rec


def with_step_condition(model: QKModel, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A recorded decoder call (text, text_mask, kontext, flags) as a format-3 step takes it: the
    edit's conditioning made by decoder_cond (`DiT.condition`) in place of those four."""
    with torch.no_grad():
        cond = model.decoder.condition(torch.from_numpy(feed["text"]), torch.from_numpy(feed["text_mask"]),
                                       torch.from_numpy(feed["kontext"]) if "kontext" in feed else None,
                                       torch.from_numpy(feed["flags"]))
    rest = {k: v for k, v in feed.items() if k not in ("text", "text_mask", "kontext", "flags")}
    return {**rest, **dict(zip(STEP_CONDITION, map(_np, cond)))}


def region_active(model: QKModel, gate_map: np.ndarray) -> np.ndarray:
    """The `active` input the runtime would pass for this gate: its tokens plus a halo, bucketed."""
    p = model.cfg.decoder.patch
    B, _, h, w = gate_map.shape
    tokens = gate_map.reshape(B, h // p, p, w // p, p).max(axis=(2, 4)).reshape(B, -1)  # (B, N)
    idx = active_token_indices(tokens[0] > 0.5, h // p, w // p)
    return np.tile(idx[None], (B, 1)).astype(np.int64)


# --------------------------------------------------------------------------- quantization


def attention_matmuls(proto: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and weighted values), not linear layers."""
    consts = {t.name for t in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def _weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a 2-D weight: 1 for MatMul (K, N), 0 for Gemm with transB."""
    return 0 if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else 1


def weight_levels(bits: int) -> int:
    """Largest |q| of a symmetric int8 weight with `bits` bits: 127 for 8, 63 for 7."""
    if bits not in (7, 8):
        raise ValueError(f"weight bits {bits!r}: use 8 (full int8 range) or 7 (range -63..63, exact on CPUs without VNNI)")
    return (1 << (bits - 1)) - 1


def _quantize_weight(w: np.ndarray, axis: int, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: (q, scale) with w ~= q * scale along `axis`, |q| <= levels."""
    amax = np.abs(w).max(axis=1 - axis)
    scale = (np.where(amax > 0, amax, 1.0) / levels).astype(np.float32)
    shape = (-1, 1) if axis == 0 else (1, -1)
    return np.clip(np.rint(w / scale.reshape(shape)), -levels, levels).astype(np.int8), scale


CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)  # candidate clips, as fractions of max |x|
SAMPLE_VALUES = 1 << 16  # values kept per tensor for choosing its clip


def _clip_mse(values: np.ndarray, amax: float) -> float:
    """The int8 clip of `values` (symmetric, 127 levels a side) with the least mean squared
    error, among CLIP_RATIOS of their max |x|: MinMax wastes levels on rare outliers."""
    best, best_err = amax, np.inf
    for ratio in CLIP_RATIOS:
        clip = amax * ratio
        scale = clip / 127.0
        err = float(np.mean((np.clip(np.rint(values / scale), -127, 127) * scale - values) ** 2))
        if err < best_err:
            best, best_err = clip, err
    return best


def activation_ranges(proto: onnx.ModelProto, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The int8 clip of each tensor over the calibration feeds (symmetric): max |x| (MinMax),
    lowered where that cuts the mean squared quantization error of a sample of its values
    (see `_clip_mse`). Runs the float graph in ONNX Runtime with those tensors as outputs."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    if weight_bytes(probe) > EXTERNAL_DATA_BYTES:  # a protobuf cannot hold 2 GB: go through a file
        scratch = tempfile.TemporaryDirectory(prefix=".calib-")
        path = Path(scratch.name) / "probe.onnx"
        onnx.save_model(probe, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="probe.data")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        scratch.cleanup()  # the session holds the weights; the files are no longer needed
    else:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    per_feed = max(1, SAMPLE_VALUES // max(1, len(feeds)))
    amax = dict.fromkeys(tensors, 0.0)
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds:
        values = dict(zip(names, session.run(None, {k: v for k, v in feed.items() if k in wanted})))
        for t in tensors:
            flat = np.asarray(values[t], np.float32).ravel()
            amax[t] = max(amax[t], float(np.abs(flat).max(initial=0.0)))
            samples[t].append(flat if flat.size <= per_feed else flat[rng.integers(0, flat.size, per_feed)])
    return {t: _clip_mse(np.concatenate(samples[t]), amax[t]) if amax[t] > 0 else 0.0 for t in tensors}


def _int8_weight(init: onnx.TensorProto, axis: int, levels: int, new_inits: list, nodes: list) -> str:
    """Append `init` quantized to int8 per channel along `axis` (initializers: values, scales,
    zero points 0) and its DequantizeLinear; return the float tensor's name."""
    from onnx import helper, numpy_helper

    q, scale = _quantize_weight(numpy_helper.to_array(init), axis, levels)
    base = init.name.replace("/", "_").strip("_") or "w"
    new_inits += [numpy_helper.from_array(q, f"{base}_quantized"), numpy_helper.from_array(scale, f"{base}_scale"),
                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")]
    nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                  [f"{base}_dequantized"], name=f"{base}_DequantizeLinear", axis=axis))
    return f"{base}_dequantized"


def _save_with_nodes(proto: onnx.ModelProto, nodes: list, dst: Path) -> None:
    """Give `proto` these nodes, drop the initializers no node reads, check it and save it to `dst`
    (weights in `dst.name + ".data"` beside it when large)."""
    used = {i for n in nodes for i in n.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(dst), save_as_external_data=weight_bytes(proto) > EXTERNAL_DATA_BYTES,
                    all_tensors_to_one_file=True, location=dst.name + ".data")


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...],
                   exclude: tuple[str, ...] = (), exclude_attention: bool = False, weight_bits: int = 7) -> list[str]:
    """Symmetric S8S8 Q/DQ quantization of `src` into `dst`; returns the node names kept in float.

    With `exclude_attention` False the attention MatMuls of two activations get a Q/DQ pair on
    each input (the second with the weights' range). Each quantized MatMul / Gemm with a constant weight gets `QuantizeLinear -> DequantizeLinear`
    on its activation input (int8, one scale per tensor from calibration, zero point 0)
    and an int8 weight with one scale per output
    channel behind a `DequantizeLinear`. Outputs are not re-quantized: the product stays float
    into the bias Add that follows, which is the pattern ONNX Runtime runs as an integer GEMM
    with a float result (MatMulIntegerToFloat) and that TensorRT fuses into an INT8 GEMM. (An
    output Q/DQ pair, as onnxruntime's quantize_static writes, cost more in Q/DQ nodes than the
    integer GEMMs won at the decoder's size.) Every consumer gets its own pair with its own
    scale and zero-point initializers (equal values): ONNX Runtime fuses DQ -> MatMul into an
    integer GEMM only where the quantized tensor feeds one MatMul, and its common-subexpression
    pass would merge identical pairs that share initializers.

    `weight_bits` 7 keeps weights in -63..63. x86 CPUs without VNNI multiply u8 x s8 pairs into
    int16 (vpmaddubsw) and saturate with full-range weights: on this project's AVX2 CPU ONNX
    Runtime's integer GEMM then ran a tiny gateway with 0.11 of its output's std as error where
    the same Q/DQ arithmetic in float gave 0.006. 8 is exact on VNNI / AMX CPUs and TensorRT.
    """
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    inits = {t.name: t for t in proto.graph.initializer}
    candidates = [n for n in proto.graph.node if n.op_type in op_types]
    excluded = [n.name for n in candidates if any(frag in n.name for frag in exclude)]
    products = [n for n in attention_matmuls(proto) if n not in excluded]
    if exclude_attention:
        excluded += products
        products = []
    chosen = [n for n in candidates if n.name not in excluded and n.name not in products and len(n.input) > 1
              and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
              and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
              and not (n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute))]
    excluded += [n.name for n in candidates if n not in chosen and n.name not in excluded and n.name not in products]
    product_names = set(products)
    activations = sorted({n.input[0] for n in chosen}
                         | {i for n in proto.graph.node if n.name in product_names for i in n.input[:2]})
    amax = activation_ranges(proto, activations, feeds)

    new_inits, weight_dq, nodes = [], {}, []

    def qdq(act: str, base: str, levels: int = 127) -> str:
        """The activation's own Q/DQ pair, scale and zero point, right before its consumer."""
        scale = np.float32(max(amax[act], 1e-8) / levels)
        new_inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{base}_act_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), f"{base}_act_zero_point")])
        nodes.extend([
            helper.make_node("QuantizeLinear", [act, f"{base}_act_scale", f"{base}_act_zero_point"], [f"{base}_act_q"],
                             name=f"{base}_act_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{base}_act_q", f"{base}_act_scale", f"{base}_act_zero_point"],
                             [f"{base}_act_dq"], name=f"{base}_act_DequantizeLinear"),
        ])
        return f"{base}_act_dq"

    chosen_names = {n.name for n in chosen}
    for node in proto.graph.node:
        if node.name in product_names:  # both inputs are activations; the second takes the weights' range
            base = node.name.replace("/", "_").strip("_")
            node.input[0] = qdq(node.input[0], f"{base}_a")
            node.input[1] = qdq(node.input[1], f"{base}_b", weight_levels(weight_bits))
            nodes.append(node)
            continue
        if node.name not in chosen_names:
            nodes.append(node)
            continue
        act = node.input[0]
        node.input[0] = qdq(act, (node.name or act).replace("/", "_").strip("_"))
        w_name = node.input[1]
        if w_name not in weight_dq:
            axis = _weight_axis(node)
            weight_dq[w_name] = _int8_weight(inits[w_name], axis, weight_levels(weight_bits), new_inits, nodes)
        node.input[1] = weight_dq[w_name]
        nodes.append(node)
    proto.graph.initializer.extend(new_inits)
    _save_with_nodes(proto, nodes, dst)
    return excluded


def weight_only_int8(src: Path, dst: Path, op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather"),
                     exclude: tuple[str, ...] = ()) -> list[str]:
    """Weight-only symmetric INT8: each weight of a MatMul / Gemm / Gather becomes an int8
    initializer, per output channel (per row for an embedding table), with a scale and a
    DequantizeLinear (zero point 0) in front of its op; activations stay float. Nodes whose name
    holds one of the `exclude` fragments keep their float weights. Returns the names of the
    `op_types` nodes kept in float (excluded, or without a 2-D constant weight: the attention
    products). For encoders whose activations have outliers that per-tensor INT8 cannot hold
    (BERT-style text encoders), at a quarter of the FP32 size; for the denoising graphs, to run
    the same float kernels in every runtime (`qk-export --weight-only`)."""
    proto = onnx.load(str(src))
    inits = {t.name: t for t in proto.graph.initializer}
    done: dict[str, str] = {}
    new_nodes, kept = [], []
    for node in proto.graph.node:
        if node.op_type in op_types:
            index = 0 if node.op_type == "Gather" else 1
            name = node.input[index] if len(node.input) > index else ""
            if any(frag in node.name for frag in exclude):
                kept.append(node.name)
            elif name in inits and inits[name].data_type == onnx.TensorProto.FLOAT and len(inits[name].dims) == 2:
                if name not in done:
                    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                    axis = 0 if node.op_type == "Gather" or trans_b else 1  # the output-channel axis
                    new_inits: list[onnx.TensorProto] = []
                    done[name] = _int8_weight(inits[name], axis, 127, new_inits, new_nodes)
                    proto.graph.initializer.extend(new_inits)
                node.input[index] = done[name]
            else:
                kept.append(node.name)
        new_nodes.append(node)
    _save_with_nodes(proto, new_nodes, dst)
    return kept


def quantize_bundle(model: QKModel, specs: dict[str, GraphSpec], build: Path, calib_samples: int,
                    log=None, weight_bits: int = 7, float_groups: tuple[str, ...] = DEFAULT_FLOAT,
                    strict: bool = True, weight_only: bool = False) -> tuple[dict[str, dict], dict]:
    """Replace the FP32 graphs in `build` by INT8 ones. Returns (parity per graph, quantization
    record for the manifest). Raises ParityError when a graph misses its INT8 bound; with
    `strict` False the miss is recorded in that graph's report (`problem`) instead, for studies
    that measure what the bound would have refused. `weight_only`: every graph weight-only
    (`weight_only_graphs`; `weight_bits` then applies to none, and nothing is calibrated)."""
    from .parity import ParityError

    log = log or (lambda msg: None)
    sensitive, exclude_attention = float_layers(float_groups)
    stored_weight_only = weight_only_graphs(weight_only)
    todo = [n for n in QUANTIZED_GRAPHS if n in specs]
    static = [n for n in todo if n not in stored_weight_only]
    calib = record_trajectories(model, "train", calib_samples) if static else None
    held = record_trajectories(model, "val", HELDOUT_TRAJECTORIES * STEPS_PER_TRAJECTORY)
    if "decoder_cond" in specs:  # format 3: the steps take decoder_cond's outputs
        for rec in [r for r in (calib, held) if r is not None]:
            for graph in ("decoder", "decoder_region"):
                rec.feeds[graph] = [with_step_condition(model, f) for f in rec.feeds.get(graph, [])]
    if calib is not None:
        log(f"calibration: {calib.description}")
    report, excluded = {}, {}
    for name in todo:
        if not held.feeds.get(name):
            continue
        spec = specs[name]
        path = build / spec.file
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=build) as scratch:
            fp32 = Path(scratch) / spec.file
            path.rename(fp32)
            data = path.with_name(path.name + ".data")
            if data.exists():
                data.rename(fp32.with_name(data.name))
            if name in stored_weight_only:
                excluded[name] = weight_only_int8(fp32, path, WEIGHT_ONLY.get(name, OP_TYPES), sensitive.get(name, ()))
            else:
                excluded[name] = quantize_graph(fp32, path, calib.feeds[name], OP_TYPES, sensitive.get(name, ()),
                                                exclude_attention=exclude_attention, weight_bits=weight_bits)
        r = int8_parity(wrap(model, spec), spec, path, held.feeds[name], "held-out val-split recorded inputs",
                        weight_only=name in stored_weight_only)
        problem = int8_problem(name, r)
        if problem and strict:
            raise ParityError(problem)
        if problem:
            r["problem"] = problem
            log(f"warning: {problem} (kept: not strict)")
        report[name] = r
        log(f"quantized {name}{' weight-only' if name in stored_weight_only else ''}: mean abs error {r['mean_abs']:.2e}"
            + (f" ({r['mean_abs_over_std']:.3f} of std)" if "mean_abs_over_std" in r else ""))

    def description(n: str) -> str:
        if n in stored_weight_only:
            return ("weight-only: int8 symmetric per-channel weights of " + "/".join(WEIGHT_ONLY.get(n, OP_TYPES))
                    + ", float activations")
        return (f"static: int8 symmetric per-channel weights ({weight_bits}-bit range), "
                "int8 symmetric per-tensor activations of " + "/".join(OP_TYPES))

    def kept_float(n: str) -> list[str]:  # weight-only graphs never quantize a product of two activations
        attention = exclude_attention or n in stored_weight_only
        return list(sensitive.get(n, ())) + (["attention MatMuls of two activations"] if attention else [])

    grouped = [n for n in report if n not in WEIGHT_ONLY]  # the text encoder is quantized whole
    record = {
        "format": "QDQ",
        "graphs": {n: description(n) for n in report},
        # the graphs the runtimes open with ONNX Runtime's Q/DQ fusion off (qk_runtime.contract.WEIGHT_ONLY_KEY)
        WEIGHT_ONLY_KEY: [n for n in report if n in stored_weight_only],
        # the static graphs' weight range; weight-only weights use the full int8 range
        "weight_bits": weight_bits if static else 8,
        "calibration": None if calib is None else {
            "method": "MinMax clip lowered where it cuts the MSE (export/quantize.py activation_ranges)",
            "samples": calib_samples, "inputs": calib.description},
        "float_groups": [g for g in FLOAT_GROUPS if g in float_groups],
        "kept_float": {n: kept_float(n) for n in grouped},
        "kept_float_nodes": {n: excluded[n] for n in grouped},
    }
    return report, record
