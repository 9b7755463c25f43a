"""torch module -> clean, checked ONNX file.

The exporter is torch's TorchScript-based one (`torch.onnx.export(..., dynamo=False)`). On
torch 2.13 it exports every graph here with the contract's dynamic batch / token axes, keeps
the torch module paths as node names (`/decoder/blocks.0/ada/ada.1/Gemm`, which the INT8
exclusion patterns rely on) and matches torch to ~1e-7. The dynamo exporter gives fewer nodes
but names them `node_linear_3`, emits opset 18 and, converted down to 17, writes a `Split` that
ONNX Runtime rejects; it also needs `dynamic_shapes` per argument.

Clean-up: onnxslim (constant folding, shape-chain simplification, LayerNorm fusion: the DiT
step goes from ~630 to ~230 nodes) when it is installed, else onnxscript's optimizer (constant
folding only); then ONNX shape inference and `onnx.checker`. A graph whose weights pass
`EXTERNAL_DATA_BYTES` is saved with its tensors in one side file `<name>.onnx.data` (protobuf
cannot serialise 2 GB).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from qk_runtime.contract import GraphSpec

EXTERNAL_DATA_BYTES = 1_500_000_000  # weights above this go to a side file; protobuf's hard limit is 2 GiB


def cleanup_tool() -> str:
    """Name and version of the graph clean-up used (recorded in the manifest)."""
    try:
        import onnxslim

        return f"onnxslim {onnxslim.__version__}"
    except ImportError:
        import onnxscript

        return f"onnxscript.optimizer {onnxscript.__version__} (onnxslim not installed: pip install onnxslim)"


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (and Constant node tensors), loaded or external."""
    total = 0
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def save_model(proto: onnx.ModelProto, path: Path, external_threshold: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Save a graph; tensors go to `<file>.data` beside it when the weights pass the threshold.
    Returns the files written."""
    path = Path(path)
    if weight_bytes(proto) > external_threshold:
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(proto, str(path))
    return [path]


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        import onnxscript.optimizer

        return onnxscript.optimizer.optimize(proto)
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(proto)


def export_onnx(module: torch.nn.Module, spec: GraphSpec, args: tuple[torch.Tensor, ...], path: Path, opset: int,
                external_threshold: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Export `module(*args)` as `path` with the contract's names and dynamic axes; simplify,
    infer shapes and check it. Returns the files written (the graph, and its data file if any)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".raw-", dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module, args, str(raw),
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load(str(raw))  # external tensors (a > 2 GB export) are read into memory here
    large = weight_bytes(proto) > external_threshold
    if not large:  # onnxslim and in-memory shape inference serialise the proto: only below 2 GB
        proto = _simplify(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    proto.doc_string = f"qk-export graph {spec.name}"
    files = save_model(proto, path, external_threshold)
    if large:
        onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path), full_check=not large)
    return files


SHARE_MIN_BYTES = 1024  # initializers smaller than this stay inside their graph
SHARE_ALIGN = 64  # byte alignment of each tensor in the shared weights file


def share_weights(folder: Path, files: list[str], weights_file: str) -> dict[str, int]:
    """Store the weights of the graphs `files` (in `folder`) once, in one external-data file.

    Initializers of at least SHARE_MIN_BYTES are deduplicated by content (dtype, shape and
    bytes): the dense and the region decoder are two graphs over the same weights, so their
    tensors land in `weights_file` once and both graphs point at them by offset (ONNX external
    data, which ONNX Runtime, OpenVINO and TensorRT's parser read from files). Graph files'
    former side files (`<file>.data`) are removed. Returns bytes written and bytes saved."""
    import hashlib

    import os

    from onnx import numpy_helper

    blob = folder / weights_file
    offsets: dict[str, tuple[int, int]] = {}
    written = total = 0
    protos = {}
    with open(blob, "wb") as out:
        for name in files:
            proto = onnx.load(str(folder / name))  # with its external data, if any
            for t in proto.graph.initializer:
                raw = numpy_helper.to_array(t).tobytes() if not t.HasField("raw_data") else t.raw_data
                if len(raw) < SHARE_MIN_BYTES:
                    continue
                total += len(raw)
                key = hashlib.sha256(f"{t.data_type}:{list(t.dims)}:".encode() + raw).hexdigest()
                if key not in offsets:
                    pad = (-written) % SHARE_ALIGN
                    out.write(b"\0" * pad)
                    written += pad
                    out.write(raw)
                    offsets[key] = (written, len(raw))
                    written += len(raw)
                offset, length = offsets[key]
                t.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                    t.ClearField(field)
                del t.external_data[:]
                for key_, value in (("location", weights_file), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key_, value
                t.data_location = onnx.TensorProto.EXTERNAL
            protos[name] = proto
        out.flush()
        os.fsync(out.fileno())
    for name, proto in protos.items():
        side = folder / (name + ".data")
        (folder / name).write_bytes(proto.SerializeToString())
        if side.exists():
            side.unlink()
        onnx.checker.check_model(str(folder / name))
    return {"bytes": written, "saved": total - sum(n for _, n in offsets.values())}
