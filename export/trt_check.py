"""TensorRT readiness, checked without TensorRT: supported ops, symmetric Q/DQ, profiles.

The op list is the "Supported" column of onnx/onnx-tensorrt `docs/operators.md` for TensorRT
10.x (opsets 9 to 20), restricted to the ops an exported graph of this project can contain
plus the common ones around them. A node whose op is not listed is reported, not guessed at.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

TRT_OPSET_RANGE = (9, 20)
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN MatMul Max MaxPool Mean Min
Mish Mod Mul Neg NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())


class ReadinessError(ValueError):
    """A graph TensorRT would refuse; the message names the node and the reason."""


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def check_model(model: onnx.ModelProto, name: str = "graph") -> list[str]:
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not (TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]):
        problems.append(f"{name}: opset {opset} is outside TensorRT 10's range {TRT_OPSET_RANGE}")
    inits = _initializers(model)
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in model.graph.node:
        label = f"{name}: node {node.name or '(unnamed)'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom domain {node.domain!r} is not supported by TensorRT's ONNX parser")
            continue
        if node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{label}: op {node.op_type} is not in TensorRT 10's supported ONNX operators")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) < 3 or not node.input[2]:
                continue  # no zero point: symmetric by definition
            zp = inits.get(node.input[2], consts.get(node.input[2]))
            if zp is None:
                problems.append(f"{label}: zero point {node.input[2]} is not a constant; TensorRT needs a constant 0")
            elif np.any(zp != 0):
                problems.append(f"{label}: zero point is {zp.ravel()[:4].tolist()}, not 0; TensorRT accepts symmetric quantization only")
            elif zp.dtype != np.int8:
                problems.append(f"{label}: zero point type {zp.dtype} is not int8")
    return problems


def check_bundle(bundle: str | Path) -> list[str]:
    """Every problem TensorRT would have with a bundle, as sentences; empty when ready."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    problems = []
    for gname, graph in manifest["graphs"].items():
        model = onnx.load(str(bundle / graph["file"]), load_external_data=False)
        problems += check_model(model, gname)
        profile = graph.get("profile", {})
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
            if dynamic and inp.name not in profile:
                problems.append(f"{gname}: input {inp.name} has dynamic axes {dynamic} but no TensorRT profile in the manifest")
            elif dynamic:
                p = profile[inp.name]
                if any(len(p[k]) != len(dims) for k in ("min", "opt", "max")):
                    problems.append(f"{gname}: profile of {inp.name} does not have {len(dims)} dimensions")
                elif any(not (p["min"][i] <= p["opt"][i] <= p["max"][i]) for i in range(len(dims))):
                    problems.append(f"{gname}: profile of {inp.name} is not min <= opt <= max")
    return problems
