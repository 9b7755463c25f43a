"""OpenVINO backend for CPUs: reads the bundle's ONNX files (FP32 or Q/DQ INT8) directly.

Precision: OpenVINO's CPU plugin runs in bf16 by default on CPUs that have it; this backend asks
for `INFERENCE_PRECISION_HINT = f32` unless `precision="bf16"` is given, so that its results stay
within the FP32 parity bound. Q/DQ INT8 graphs run their quantized ops in int8 either way.

The graphs of a `qk-export --weight-only` bundle (`Bundle.weight_only` holds its decoder) are
compiled with `DYNAMIC_QUANTIZATION_GROUP_SIZE = 0`, the counterpart of the Q/DQ fusion the ONNX
Runtime backends switch off for weight-only graphs: by default OpenVINO's CPU plugin quantizes the
activations of a MatMul with int8 weights on the fly (groups of 32), as ONNX Runtime's fusion does,
and such a bundle is made for the same pixels in every runtime. Measured on the tiny test model's
weight-only graphs: 2.4e-5 to 3.0e-3 of the output's largest value apart from ONNX Runtime by
default, 6e-8 to 2.6e-7 without. The weight-only text encoder of a static INT8 bundle keeps
OpenVINO's default, which is faster: on the shipped one (batch 3, 16 tokens, 1 thread, 2-core
Xeon beside a training run) 6.2 ms per call and 1.4e-2 apart from ONNX Runtime, against 9.6 ms
and 7.4e-7 without (ONNX Runtime: 11.4 ms).

Compilation: each graph is compiled straight from its file with its dynamic axes, at activation
for the graphs asked for and otherwise the first time it is used, and kept. Compiled models are cached on disk (OpenVINO's CACHE_DIR, default
`~/.cache/qk-runtime/openvino`, or `$QK_RUNTIME_CACHE/openvino`; `cache_dir=False` turns it off):
a later process imports the compiled blob without parsing the ONNX file again. OpenVINO keys that
cache by the model, the device and the settings.

`static_shapes=True` compiles each graph once per set of input shapes instead (batch 1, 2 or 3,
each region bucket). Measured on the 2-core machine this was written on (default-size model,
decoder at batch 3): static shapes ran a step about 5 % faster than dynamic ones but took 2-3x
longer to compile and about 1.6x the memory, so dynamic shapes are the default.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .backend import Backend, graph_error
from .bundle import Bundle

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}


def default_cache_dir() -> Path:
    root = os.environ.get("QK_RUNTIME_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qk-runtime"
    return Path(root) / "openvino"


class OpenVinoBackend(Backend):
    name = "ov-cpu"

    def __init__(self, bundle: Bundle, *, threads: int | None = None, precision: str = "f32",
                 static_shapes: bool = False, device: str = "CPU", cache_dir: str | Path | bool | None = None):
        super().__init__(bundle)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}; choose 'f32' (parity, default) or 'bf16' (faster where the CPU has bf16)")
        self.precision = PRECISIONS[precision]
        self.threads = threads
        self.static_shapes = static_shapes
        self.device = device
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        self._core = None
        self._compiled: dict = {}  # (graph, input shapes or None) -> (infer request, [(output name, port)])
        self._lock = threading.Lock()

    def _config(self, graph: str) -> dict:
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(int(self.threads))
        if graph in self.bundle.weight_only and "decoder" in self.bundle.weight_only:  # a --weight-only bundle
            cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"  # float activations, as the other runtimes run it
        return cfg

    def activate(self, graphs: list[str] | None = None) -> None:
        import openvino as ov

        self._core = ov.Core()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self._core.set_property({"CACHE_DIR": str(self.cache_dir)})
            except OSError:  # an unwritable cache folder: compile every time instead
                self.cache_dir = None
        self.is_active = True
        if not self.static_shapes:  # static shapes are known only when a graph is called
            for graph in self.bundle.graphs if graphs is None else graphs:
                self._compiled[(graph, None)] = self._compile_checked(graph, None)

    def _compile(self, graph: str, shapes):
        info = self.bundle.graphs[graph]
        if shapes is None:
            compiled = self._core.compile_model(str(info.path), self.device, self._config(graph))
        else:
            model = self._core.read_model(str(info.path))
            model.reshape({n: list(s) for n, s in shapes})
            compiled = self._core.compile_model(model, self.device, self._config(graph))
        ports = []
        for out_name in info.output_names:
            port = next((p for p in compiled.outputs if out_name in p.get_names()), None)
            if port is None:
                raise RuntimeError(f"{info.path.name} has no output named {out_name!r}")
            ports.append((out_name, port))
        return compiled.create_infer_request(), ports

    def _request(self, graph: str, feeds: dict[str, np.ndarray]):
        shapes = None
        if self.static_shapes:
            shapes = tuple((n, feeds[n].shape) for n in self.bundle.graphs[graph].input_names)
        key = (graph, shapes)
        entry = self._compiled.get(key)
        if entry is None:
            with self._lock:
                entry = self._compiled.get(key)
                if entry is None:
                    entry = self._compiled[key] = self._compile_checked(graph, shapes)
        return entry

    def _compile_checked(self, graph: str, shapes):
        try:
            return self._compile(graph, shapes)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's own exception types
            raise graph_error(self.bundle, graph, exc, "OpenVINO", loading=True) from None

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, ports = self._request(graph, feeds)
        try:
            result = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's own exception types
            raise graph_error(self.bundle, graph, exc, "OpenVINO", loading=False) from None
        return {name: np.array(result[port], copy=True) for name, port in ports}

    def deactivate(self) -> None:
        self._compiled.clear()
        self._core = None
        self.is_active = False
