"""INT8: explicit symmetric Q/DQ (zero point 0; S8 weights per output channel, S8 activations
per tensor), so that one file serves ONNX Runtime and OpenVINO on CPUs and strongly typed
TensorRT builds.

Calibration uses real inputs. The torch reference pipeline runs ShapeWorld edits (half with a
box) and generations of the training split; forward hooks record what the decoder, the gateway
and the CMG receive, the decoder at a few steps of each trajectory chosen so that together they
cover every timestep of the default schedule. The same procedure on the `val` split gives the
held-out inputs that the INT8 parity in the manifest is measured on.

What is quantized: MatMul and Gemm (weights and inputs) of the decoder, gateway and CMG. Kept in
float, by node-name pattern (names are the torch module paths): the timestep embedding and the
adaLN modulation with the conditioning vector that feeds it (`t_embed`, `ada`, `pool_proj`,
`flag_embed`), the input projections (`x_embed`, `source_embed`) and the output projections
(`final`, the CMG's `head`). The attention MatMuls of two activations (scores = q k^T, weights
x v) stay float too: in INT8 they cost accuracy (the softmax output uses half of the symmetric
range) and TensorRT then loses its fused attention kernel. Softmax and LayerNorm are never
quantized (only MatMul / Gemm are).

The text encoder gets weight-only INT8 (`weight_only_int8`): its MatMul / Gemm weights and its
embedding table become int8 with per-channel scales behind a DequantizeLinear; activations stay
float. Per-tensor INT8 activations do not hold a BERT encoder's outliers: quantizing them too
gave 43 % of the output's spread as error on all-MiniLM-L6-v2, weight-only 3 %, at a quarter
of the 90 MB.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from qk_runtime.contract import GraphSpec
from qk_train.data.shapeworld import make_edit, make_generation
from qk_train.models.unified import QKModel
from qk_train.pipeline import Pipeline, active_token_indices

from .exporter import EXTERNAL_DATA_BYTES, weight_bytes
from .graphs import wrap
from .parity import int8_parity, int8_problem

QUANTIZED_GRAPHS = ("text_encoder", "gateway", "cmg", "decoder", "decoder_region")
WEIGHT_ONLY = {"text_encoder": ("MatMul", "Gemm", "Gather")}  # graph -> op types whose weights go int8
OP_TYPES = ("MatMul", "Gemm")  # static Q/DQ of the other graphs

# node-name fragments kept in float, per graph
SENSITIVE = {
    "decoder": ("/t_embed/", "/ada/", "/pool_proj/", "/flag_embed/", "/x_embed/", "/source_embed/", "/final/"),
    "gateway": ("/source_embed/", "/flag_embed/"),
    "cmg": ("/source_embed/", "/head/"),
}
SENSITIVE["decoder_region"] = SENSITIVE["decoder"]

EXCLUDE_ATTENTION = True  # attention score / value MatMuls (two activations) stay float

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

    def on_decoder(module, args):
        x, sigma, text, text_mask, kontext, source, region, gate_map, flags = args[:9]
        if state["call"] in state["keep"] and len(rec.feeds.get("decoder", [])) < samples:
            feed = {"x": _np(x), "sigma": _np(sigma), "text": _np(text), "text_mask": _np(text_mask)}
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

    handles = [model.decoder.register_forward_pre_hook(on_decoder)]
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


def region_active(model: QKModel, gate_map: np.ndarray) -> np.ndarray:
    """The `active` input the runtime would pass for this gate: its tokens plus a halo, bucketed."""
    p = model.cfg.decoder.patch
    B, _, h, w = gate_map.shape
    tokens = gate_map.reshape(B, h // p, p, w // p, p).max(axis=(2, 4)).reshape(B, -1)  # (B, N)
    idx = active_token_indices(tokens[0] > 0.5, h // p, w // p)
    return np.tile(idx[None], (B, 1)).astype(np.int64)


# --------------------------------------------------------------------------- quantization


class _Reader:
    """onnxruntime's CalibrationDataReader over recorded feeds, one batch row at a time (the
    histogram calibrators need equal shapes; edits are recorded as batches of 3, generations 2)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        rows = (dict((k, v[b:b + 1]) for k, v in f.items()) for f in feeds for b in range(next(iter(f.values())).shape[0]))
        self._feeds = iter(rows)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # pragma: no cover - part of the reader protocol, unused by MinMax
        pass


def attention_matmuls(proto: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and weighted values), not linear layers."""
    consts = {t.name for t in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...],
                   exclude: tuple[str, ...] = (), exclude_attention: bool = False, method: str = "MinMax") -> list[str]:
    """Symmetric S8S8 Q/DQ quantization of `src` into `dst`; returns the node names kept in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    large = weight_bytes(onnx.load(str(src), load_external_data=False)) > EXTERNAL_DATA_BYTES or \
        src.with_name(src.name + ".data").exists()
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=dst.parent) as scratch:
        pre = Path(scratch) / "pre.onnx"
        quant_pre_process(str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True)
        proto = onnx.load(str(pre), load_external_data=False)
        names = [n.name for n in proto.graph.node if n.op_type in op_types]
        excluded = [n for n in names if any(frag in n for frag in exclude)]
        if exclude_attention:
            excluded += [n for n in attention_matmuls(proto) if n not in excluded]
        quantize_static(
            str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
            op_types_to_quantize=list(op_types), nodes_to_exclude=excluded, calibrate_method=CalibrationMethod[method],
            use_external_data_format=large,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return excluded


def weight_only_int8(src: Path, dst: Path, op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather")) -> list[str]:
    """Weight-only symmetric INT8: each weight of a MatMul / Gemm / Gather becomes an int8
    initializer, per output channel (per row for an embedding table), with a scale and a
    DequantizeLinear (zero point 0) in front of its op; activations stay float. Returns the
    quantized weights' names. For encoders whose activations have outliers that per-tensor
    INT8 cannot hold (BERT-style text encoders), at a quarter of the FP32 size."""
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    inits = {t.name: t for t in proto.graph.initializer}
    done: dict[str, str] = {}
    new_nodes = []
    for node in proto.graph.node:
        if node.op_type in op_types:
            index = 0 if node.op_type == "Gather" else 1
            name = node.input[index] if len(node.input) > index else ""
            if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT and len(inits[name].dims) == 2:
                if name not in done:
                    w = numpy_helper.to_array(inits[name])
                    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                    axis = 0 if node.op_type == "Gather" or trans_b else 1  # the output-channel axis
                    amax = np.abs(w).max(axis=1 - axis)
                    scale = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
                    shape = (-1, 1) if axis == 0 else (1, -1)
                    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                    base = name.replace("/", "_").strip("_") or "w"
                    proto.graph.initializer.extend([
                        numpy_helper.from_array(q, f"{base}_quantized"),
                        numpy_helper.from_array(scale, f"{base}_scale"),
                        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
                    ])
                    new_nodes.append(helper.make_node(
                        "DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                        [f"{base}_dequantized"], name=f"{base}_DequantizeLinear", axis=axis))
                    done[name] = f"{base}_dequantized"
                node.input[index] = done[name]
        new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(dst), save_as_external_data=weight_bytes(proto) > EXTERNAL_DATA_BYTES,
                    all_tensors_to_one_file=True, location=dst.name + ".data")
    return list(done)


def quantize_bundle(model: QKModel, specs: dict[str, GraphSpec], build: Path, calib_samples: int,
                    log=None) -> tuple[dict[str, dict], dict]:
    """Replace the FP32 graphs in `build` by INT8 ones. Returns (parity per graph, quantization
    record for the manifest). Raises ParityError when a graph misses its INT8 bound."""
    from .parity import ParityError

    log = log or (lambda msg: None)
    calib = record_trajectories(model, "train", calib_samples)
    held = record_trajectories(model, "val", HELDOUT_TRAJECTORIES * STEPS_PER_TRAJECTORY)
    log(f"calibration: {calib.description}")
    report, excluded = {}, {}
    for name in QUANTIZED_GRAPHS:
        if name not in specs or not calib.feeds.get(name):
            continue
        spec = specs[name]
        path = build / spec.file
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=build) as scratch:
            fp32 = Path(scratch) / spec.file
            path.rename(fp32)
            data = path.with_name(path.name + ".data")
            if data.exists():
                data.rename(fp32.with_name(data.name))
            if name in WEIGHT_ONLY:
                weight_only_int8(fp32, path, WEIGHT_ONLY[name])
                excluded[name] = []
            else:
                excluded[name] = quantize_graph(fp32, path, calib.feeds[name], OP_TYPES, SENSITIVE.get(name, ()),
                                                exclude_attention=EXCLUDE_ATTENTION)
        r = int8_parity(wrap(model, spec), spec, path, held.feeds[name], "held-out val-split recorded inputs")
        problem = int8_problem(name, r)
        if problem:
            raise ParityError(problem)
        report[name] = r
        log(f"quantized {name}: mean abs error {r['mean_abs']:.2e}"
            + (f" ({r['mean_abs_over_std']:.3f} of std)" if "mean_abs_over_std" in r else ""))
    record = {
        "format": "QDQ",
        "graphs": {n: ("weight-only: int8 symmetric per-channel weights of " + "/".join(WEIGHT_ONLY[n]) + ", float activations"
                       if n in WEIGHT_ONLY else "static: int8 symmetric per-channel weights, int8 symmetric per-tensor "
                       "activations of " + "/".join(OP_TYPES)) for n in report},
        "calibration": {"method": "MinMax", "samples": calib_samples, "inputs": calib.description},
        "kept_float": {n: list(SENSITIVE.get(n, ())) + (["attention MatMuls of two activations"] if EXCLUDE_ATTENTION else [])
                       for n in report if n not in WEIGHT_ONLY},
        "kept_float_nodes": {n: v for n, v in excluded.items() if n not in WEIGHT_ONLY},
    }
    return report, record
