"""FP32 ONNX graph -> half-precision graph that keeps FP32 where it matters (`qk-export --fp16`).

Every node computes in float16 unless a float group keeps it in float32 (`FLOAT_GROUPS`):

| group | nodes kept in FP32 |
|---|---|
| `norm` | LayerNormalization and the other normalisation ops |
| `softmax` | Softmax, LogSoftmax |
| `time` | the timestep embedding (`/t_embed/`: sinusoids and their MLP), and the step-size one (`/d_embed/`) |
| `gating` | the step's own arithmetic outside the network's modules: CMG gating and the back-to-source velocity `(x - source) / max(sigma, 1e-3)` |

Graph inputs and outputs stay float32, so a bundle's tensor contract (and every runtime's feeds)
is the FP32 bundle's. Where an FP16 node reads a float32 tensor (a graph input, the output of a
node kept in FP32) a `Cast` to float16 is inserted once per tensor, and the other way round; float
initializers read only by FP16 nodes are stored in float16 (half the bytes), ones read by both
kinds are stored in both. A constant whose values do not fit float16 (|x| > 65504) keeps its
readers in FP32. Inputs that ONNX types as float32 whatever the data (Resize's `roi` and
`scales`) are left alone. The graph is then shape-inferred and checked like every export.

Which groups matter was measured against torch FP32 on the shipped checkpoint, through ONNX
Runtime's CPU provider (`benchmarks/fp16_groups.py`, `benchmarks/results/cpu-2core/fp16_groups.md`);
`DEFAULT_FLOAT` is the result.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
HALF_MAX = float(np.finfo(np.float16).max)  # 65504

NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
            "RMSNormalization", "LpNormalization", "SimplifiedLayerNormalization")
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
FLOAT_GROUPS = ("norm", "softmax", "time", "gating")
DEFAULT_FLOAT = ("norm", "softmax", "time", "gating")
# inputs typed float32 by the ONNX schema whatever the data type (op -> input indices)
FLOAT32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


# graphs whose top-level ops (named "/Sub", "/Clip": outside any module) are the step's gating
GATED_GRAPHS = ("decoder", "decoder_region")


def keeps_float(node: onnx.NodeProto, groups: tuple[str, ...], graph: str = "") -> bool:
    """Whether `node` of the graph named `graph` stays FP32 under the float `groups`."""
    if "norm" in groups and node.op_type in NORM_OPS:
        return True
    if "softmax" in groups and node.op_type in SOFTMAX_OPS:
        return True
    if "time" in groups and ("/t_embed/" in node.name or "/d_embed/" in node.name):
        return True
    # the decoder wrappers' own ops are named at the top level ("/Sub", "/Clip"); the DiT's by module path
    return ("gating" in groups and graph in GATED_GRAPHS and node.name.startswith("/")
            and node.name.count("/") == 1)


def check_groups(groups) -> tuple[str, ...]:
    unknown = [g for g in groups if g not in FLOAT_GROUPS]
    if unknown:
        raise ValueError(f"unknown FP16 float group(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(FLOAT_GROUPS)} (or none)")
    return tuple(g for g in FLOAT_GROUPS if g in groups)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def _attr_tensor(node: onnx.NodeProto) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)


def _fits_half(arr: np.ndarray) -> bool:
    finite = arr[np.isfinite(arr)]
    return finite.size == 0 or float(np.abs(finite).max()) <= HALF_MAX


def _half_tensor(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    out = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), name)
    return out


def convert_float16(model: onnx.ModelProto, keep: Callable[[onnx.NodeProto], bool]) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` (float32, shape-inferred, weights loaded) computing in float16 except the
    nodes `keep` names; float32 graph inputs and outputs. Returns (model, counts)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = _elem_types(model)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == FLOAT

    # constants that do not fit float16 keep their readers in float32
    too_big = {n for n, t in inits.items() if t.data_type == FLOAT and not _fits_half(numpy_helper.to_array(t))}
    for node in g.node:
        a = _attr_tensor(node)
        if node.op_type == "Constant" and a is not None and a.t.data_type == FLOAT and not _fits_half(numpy_helper.to_array(a.t)):
            too_big.add(node.output[0])
    half_nodes = set()
    for i, node in enumerate(g.node):
        floats = [n for n in list(node.input) + list(node.output) if is_float(n)]
        if floats and not keep(node) and not any(n in too_big for n in node.input):
            half_nodes.add(i)

    new_nodes: list[onnx.NodeProto] = []
    half_of: dict[str, str] = {}  # float32 tensor -> its float16 twin
    float_of: dict[str, str] = {}  # float16 tensor -> its float32 twin
    half_tensors: set[str] = set()  # tensors now typed float16
    new_inits: list[onnx.TensorProto] = []
    counts = {"half_nodes": len(half_nodes), "float_nodes": 0, "casts": 0, "half_initializers": 0}

    def cast(src: str, to: int, dst: str) -> None:
        new_nodes.append(helper.make_node("Cast", [src], [dst], name=f"{dst}/Cast", to=to))
        counts["casts"] += 1

    def as_half(name: str) -> str:
        if name in half_tensors:
            return name
        if name not in half_of:
            twin = f"{name}/fp16"
            if name in inits:  # a weight: stored in float16 (the float32 copy goes if nothing else reads it)
                new_inits.append(_half_tensor(inits[name], twin))
                counts["half_initializers"] += 1
            else:
                cast(name, HALF, twin)
            half_of[name] = twin
        return half_of[name]

    def as_float(name: str) -> str:
        if name not in half_tensors:
            return name
        if name not in float_of:
            float_of[name] = f"{name}/fp32"
            cast(name, FLOAT, float_of[name])
        return float_of[name]

    for i, node in enumerate(g.node):
        if i in half_nodes:
            fixed = FLOAT32_INPUTS.get(node.op_type, ())
            for k, name in enumerate(node.input):
                if is_float(name) and k not in fixed:
                    node.input[k] = as_half(name)
            a = _attr_tensor(node)
            if node.op_type in ("Constant", "ConstantOfShape") and a is not None and a.t.data_type == FLOAT:
                a.t.CopyFrom(_half_tensor(a.t, a.t.name))
            if node.op_type == "Cast":
                to = next(x for x in node.attribute if x.name == "to")
                if to.i == FLOAT:
                    to.i = HALF
            for name in node.output:
                if is_float(name):
                    half_tensors.add(name)
        else:
            counts["float_nodes"] += 1
            for k, name in enumerate(node.input):
                if name in half_tensors:
                    node.input[k] = as_float(name)
        new_nodes.append(node)

    # graph outputs stay float32: the producer writes a float16 twin, a Cast restores the name
    outputs = {o.name for o in g.output}
    renamed = {}
    for name in outputs & half_tensors:
        renamed[name] = f"{name}/fp16"
    for node in new_nodes:
        for k, name in enumerate(node.output):
            if name in renamed:
                node.output[k] = renamed[name]
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for name, twin in renamed.items():
        cast(twin, FLOAT, name)

    # float32 initializers that no node reads any more are dropped (their float16 twins replace them)
    still_read = {n for node in new_nodes for n in node.input}
    kept_inits = [t for t in g.initializer if t.name in still_read or t.name in outputs]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model, counts


def convert_file(path, groups: tuple[str, ...], graph: str = "") -> dict:
    """Convert the graph file `path` (weights inside it; `graph`: its name in the contract) to
    FP16 in place, keeping `groups` in FP32; checks the result. Returns the node and cast counts."""
    from .exporter import save_model

    model = onnx.load(str(path))
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        raise ValueError(f"{path}: graphs with subgraphs (If, Loop, Scan) are not converted to FP16")
    groups = check_groups(groups)
    half, counts = convert_float16(model, lambda node: keeps_float(node, groups, graph))
    half.doc_string = model.doc_string
    save_model(half, path)
    onnx.checker.check_model(str(path), full_check=True)
    return counts
