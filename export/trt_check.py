"""TensorRT readiness, checked here without TensorRT.

For every graph of a bundle: the opset is one TensorRT's parser reads, every node's op is in
its supported list (`trt_ops.py`, from onnx-tensorrt's operator table), the table's checkable
restrictions hold (constant `axes`, no ScatterND reduction, one LayerNormalization output),
every QuantizeLinear / DequantizeLinear has a constant zero point of 0 (TensorRT accepts
symmetric quantization only), and every dynamic input axis has a min/opt/max profile in the
manifest that agrees with the graph's static axes. Each problem is a sentence naming the graph,
the node and the reason; `require_ready` raises them all at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from . import trt_ops


class ReadinessError(ValueError):
    """A bundle TensorRT would refuse; the message names each node and the reason."""


class _Constants(dict):
    """Names of constant tensors -> tensor; values are read on demand (external data too)."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None):
        super().__init__()
        self.base_dir = base_dir
        for t in model.graph.initializer:
            self[t.name] = t
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                self[node.output[0]] = value

    def value(self, name: str) -> np.ndarray | None:
        t = self[name]
        if t is None:
            return None
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if self.base_dir is None:
                return None
            from qk_runtime.errors import BundleError
            from qk_runtime.files import contained

            location = next((e.value for e in t.external_data if e.key == "location"), "")
            contained(self.base_dir, location, f"tensor {name!r} external data", BundleError)  # never read outside
            t = onnx.TensorProto.FromString(t.SerializeToString())
            load_external_data_for_tensor(t, str(self.base_dir))
        return numpy_helper.to_array(t)


def _opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_model(model: onnx.ModelProto, name: str = "graph", base_dir: Path | None = None) -> list[str]:
    """Problems TensorRT's ONNX parser would have with one graph (empty when none); `base_dir`:
    where its external data lives, if any."""
    problems = []
    opset = _opset(model)
    lo, hi = trt_ops.OPSET_RANGE
    if opset is None or not lo <= opset <= hi:
        problems.append(f"{name}: opset {opset} is outside the range {lo}..{hi} of {trt_ops.TARGET}; export with --opset {lo}..{hi}")
    consts = _Constants(model, base_dir)
    for node in model.graph.node:
        where = f"{name}: node {node.name or '(unnamed)'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}; TensorRT's parser reads only the default ONNX domain")
            continue
        if node.op_type not in trt_ops.SUPPORTED:
            problems.append(f"{where}: op {node.op_type} is not supported by {trt_ops.TARGET}")
            continue
        if node.op_type in trt_ops.CONSTANT_INPUTS:
            index, rule = trt_ops.CONSTANT_INPUTS[node.op_type]
            if len(node.input) > index and node.input[index] and node.input[index] not in consts:
                problems.append(f"{where}: input {node.input[index]!r} is computed at run time; TensorRT: {rule}")
        if node.op_type in trt_ops.ZERO_POINT_INPUT:
            problems += _zero_point_problems(node, where, consts)
        for attr in node.attribute:
            allowed = trt_ops.ATTRIBUTE_LIMITS.get(node.op_type, {}).get(attr.name)
            value = onnx.helper.get_attribute_value(attr)
            value = value.decode() if isinstance(value, bytes) else value
            if allowed is not None and value not in allowed:
                problems.append(f"{where}: attribute {attr.name}={value!r} is not supported by TensorRT (allowed {list(allowed)})")
        limit = trt_ops.OUTPUT_LIMITS.get(node.op_type)
        if limit is not None and any(o for o in node.output[limit:]):
            problems.append(f"{where}: uses {len([o for o in node.output if o])} outputs; TensorRT supports only the first {limit}")
    return problems


def _zero_point_problems(node: onnx.NodeProto, where: str, consts: _Constants) -> list[str]:
    index = trt_ops.ZERO_POINT_INPUT[node.op_type]
    if len(node.input) <= index or not node.input[index]:
        return []  # no zero point: 0 by definition
    zp_name = node.input[index]
    if zp_name not in consts:
        return [f"{where}: zero point {zp_name!r} is computed at run time; TensorRT needs a constant 0 (symmetric quantization)"]
    zp = consts.value(zp_name)
    if zp is None:
        return [f"{where}: zero point {zp_name!r} could not be read (external data without its folder, or a non-tensor Constant); TensorRT needs a constant 0"]
    if np.any(zp != 0):
        shown = zp.ravel()[:4].tolist()
        return [f"{where}: zero point {zp_name!r} is {shown}, not 0; TensorRT accepts symmetric quantization only "
                f"(re-export with qk-export --int8, which writes zero points 0)"]
    if zp.dtype != np.int8:
        return [f"{where}: zero point {zp_name!r} has type {zp.dtype}; TensorRT's Q/DQ take int8 (S8S8)"]
    return []


def check_profiles(model: onnx.ModelProto, graph: dict, name: str) -> list[str]:
    """Every dynamic input axis has a profile entry; profiles agree with the static axes."""
    problems = []
    profile = graph.get("profile") or {}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if not dynamic:
            continue
        where = f"{name}: input {inp.name}"
        p = profile.get(inp.name)
        if p is None:
            problems.append(f"{where} has dynamic axes {dynamic} but no TensorRT profile (min/opt/max) in the manifest")
            continue
        if set(p) != {"min", "opt", "max"} or any(len(p[k]) != len(dims) for k in p):
            problems.append(f"{where}: profile {p} must give min, opt and max shapes of rank {len(dims)}")
            continue
        for i, d in enumerate(dims):
            lo, opt, hi = p["min"][i], p["opt"][i], p["max"][i]
            if d.HasField("dim_value") and not lo == opt == hi == d.dim_value:
                problems.append(f"{where}: axis {i} is {d.dim_value} in the graph but {lo}/{opt}/{hi} in the profile")
            elif not 1 <= lo <= opt <= hi:
                problems.append(f"{where}: axis {i} ({d.dim_param or '?'}) profile {lo}/{opt}/{hi} is not 1 <= min <= opt <= max")
    return problems


def check_bundle(bundle: str | Path) -> list[str]:
    """Every problem TensorRT would have with a bundle, as sentences; empty when it is ready. The
    bundle is opened by the runtime's loader (manifest limits, every file inside the bundle); a
    graph file that is not a readable ONNX model is a BundleError naming it."""
    from qk_runtime.bundle import EXPORT_HINT, open_bundle
    from qk_runtime.errors import BundleError

    opened = open_bundle(Path(bundle), verify=False)
    problems = []
    for name, info in opened.graphs.items():
        try:
            model = onnx.load(str(info.path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
            raise BundleError(f"{info.path} (graph {name!r}) is not a readable ONNX model ({type(exc).__name__}: "
                              f"{str(exc).strip()[:300]}); the file is damaged or truncated: {EXPORT_HINT}") from None
        problems += check_model(model, name, base_dir=info.path.parent)
        problems += check_profiles(model, opened.manifest["graphs"][name], name)
    return problems


POLYGRAPHY_MISSING = "Polygraphy is not installed: pip install polygraphy onnx-graphsurgeon (in the export extra)"


def load_with_weights(path: Path, base_dir: Path) -> onnx.ModelProto:
    """A graph with its external tensors read in (each from a file inside `base_dir`, by offset and
    length). Read here rather than by onnx, which refuses weights files with several hard links."""
    from qk_runtime.errors import BundleError
    from qk_runtime.files import contained

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        where = contained(base_dir, info.get("location", ""), f"tensor {t.name!r} external data", BundleError)
        with open(where, "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"])) if "length" in info else f.read()
        t.raw_data = raw
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return model


def folding_report(bundle: str | Path) -> list[tuple[str, int, int]]:
    """Polygraphy's ONNX sanitization (constant folding with shape inference, as `polygraphy
    surgeon sanitize --fold-constants`) on every graph of the bundle, in memory: (graph, nodes
    before, nodes after). Nothing is written; a graph that folds further than its export did
    carries work TensorRT would fold at build time. Raises ImportError without Polygraphy."""
    from qk_runtime.bundle import open_bundle

    try:
        from polygraphy.backend.onnx import fold_constants
        from polygraphy.logger import G_LOGGER
        import onnx_graphsurgeon  # noqa: F401 - Polygraphy's folding runs on it
    except ImportError as exc:
        raise ImportError(POLYGRAPHY_MISSING) from exc
    opened = open_bundle(Path(bundle), verify=False)
    rows = []
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        for name, info in opened.graphs.items():
            model = load_with_weights(info.path, info.path.parent)
            before = len(model.graph.node)
            folded = fold_constants(model, do_shape_inference=True, error_ok=True, copy=True)
            rows.append((name, before, len(folded.graph.node)))
    finally:
        G_LOGGER.module_severity = severity
    return rows


def require_ready(bundle: str | Path) -> None:
    problems = check_bundle(bundle)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ReadinessError(f"{len(problems)} TensorRT readiness problem(s):\n  {shown}")
