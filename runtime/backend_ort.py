"""ONNX Runtime backend: the CPU, CUDA or TensorRT execution provider.

Session options: all graph optimizations, `threads` intra-op threads (ONNX Runtime's default,
one per core, when None), sequential execution, and no thread spinning unless `spinning=True`
(then only in the denoising loop's graphs, `SPIN_GRAPHS`);
on the CPU, Q/DQ fusion off for the INT8 graphs the manifest says are weight-only
(`Bundle.weight_only`: `quantization.weight_only`, or the text encoder of bundles without it).

The CUDA and TensorRT providers run through I/O binding: the inputs are bound from host memory
and the outputs are allocated on the device and copied back once per call. Inputs that stay the
same over the denoising loop are still copied every step: kept simple, and on the CPU provider
(the one verified here) a plain `run` is already copy-free, so it is used as is.

On the CPU provider, sessions are created at activation for the graphs asked for and for the
others the first time they run (a session that never uses the region decoder does not pay for
it); the GPU providers create every session at activation, so that a missing CUDA or TensorRT
library fails there.

The TensorRT provider builds its engines on first use from the manifest's profiles, with its
engine cache and timing cache in `cache_dir` (default: `<bundle>/.ort-trt-cache/`).
A provider that ONNX Runtime drops when it creates a session (missing CUDA libraries, say) is
an error, not a silent fallback to the CPU.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .backend import Backend, graph_error
from .bundle import Bundle
from .errors import BackendUnavailable

_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


def _shape_list(profile: dict, key: str) -> str:
    """{input: {min, opt, max}} -> 'name:1x3x32x32,name2:...' as the TensorRT provider wants it."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in p[key])}" for name, p in profile.items())


# Graphs whose sessions spin with `spinning=True`: the ones called back to back in the denoising
# loop. Every session has its own thread pool; when all of them spun, the once-per-edit graphs'
# idle threads kept spinning into the next graph's run and, on 2 cores, an edit took 1.6x longer
# (qk-bench --spin, benchmarks/results/cpu-2core/spin/).
SPIN_GRAPHS = ("decoder", "decoder_region")


class OrtBackend(Backend):
    def __init__(self, bundle: Bundle, *, provider: str = "cpu", threads: int | None = None,
                 cache_dir: str | Path | None = None, fp16: bool = True, spinning: bool = False,
                 weight_only_fusion: bool = False):
        super().__init__(bundle)
        if provider not in _EP:
            raise ValueError(f"provider {provider!r}; choose one of {sorted(_EP)}")
        self.provider = provider
        self.name = f"ort-{provider}"
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir else bundle.path / ".ort-trt-cache"
        self.fp16 = fp16 and bundle.precision != "int8"
        self.spinning = spinning
        # True: leave ONNX Runtime's Q/DQ fusion on for weight-only INT8 graphs too (its default, and
        # what Triton's ONNX Runtime backend does: it has no setting for it)
        self.weight_only_fusion = weight_only_fusion
        self.sessions: dict = {}  # graph -> InferenceSession, made on first use
        self._lock = threading.Lock()

    def _providers(self, graph: str) -> list:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if self.provider == "cuda":
            return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        profile = self.bundle.graphs[graph].profile
        trt_opts = {
            "device_id": 0,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.cache_dir),
            "trt_fp16_enable": self.fp16,
            "trt_profile_min_shapes": _shape_list(profile, "min"),
            "trt_profile_opt_shapes": _shape_list(profile, "opt"),
            "trt_profile_max_shapes": _shape_list(profile, "max"),
        }
        return [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]

    def _session_options(self, graph: str):
        spin = self.spinning and graph in SPIN_GRAPHS
        if self.provider == "cpu" and not self.weight_only_fusion and graph in self.bundle.weight_only:
            opts = self._make_options(spin=spin)  # a weight-only decoder still spins with `spinning`
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            return opts
        return self._make_options(spin=True) if spin else self._options

    def activate(self, graphs: list[str] | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self._options = self._make_options()
        self.is_active = True
        if graphs is None or self.provider != "cpu":  # GPU providers: all now, so a missing library fails here
            graphs = list(self.bundle.graphs)
        for graph in graphs:
            self._session(graph)

    def _make_options(self, spin: bool = False):
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: on a CPU shared with other work (an app,
        # a training job) spinning threads steal its cycles and make latency erratic. With
        # `spinning`, only the denoising loop's graphs spin (SPIN_GRAPHS).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return opts

    def _session(self, graph: str):
        sess = self.sessions.get(graph)
        if sess is None:
            with self._lock:
                sess = self.sessions.get(graph)
                if sess is None:
                    info = self.bundle.graphs[graph]
                    try:
                        sess = self._ort.InferenceSession(str(info.path), sess_options=self._session_options(graph),
                                                          providers=self._providers(graph))
                    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
                        raise graph_error(self.bundle, graph, exc, "ONNX Runtime", loading=True) from None
                    if _EP[self.provider] not in sess.get_providers():
                        raise BackendUnavailable(
                            f"ONNX Runtime could not start {_EP[self.provider]} for {info.path.name} (it offered "
                            f"{sess.get_providers()}); check the CUDA/TensorRT libraries, or choose --backend ort-cpu"
                        )
                    self.sessions[graph] = sess
        return sess

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self._session(graph)
        outputs = self.bundle.graphs[graph].output_names
        try:
            if self.provider == "cpu":
                return dict(zip(outputs, sess.run(list(outputs), feeds)))
            binding = sess.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in outputs:
                binding.bind_output(name, "cuda", 0)
            sess.run_with_iobinding(binding)
            return dict(zip(outputs, binding.copy_outputs_to_cpu()))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
            raise graph_error(self.bundle, graph, exc, "ONNX Runtime", loading=False) from None

    def deactivate(self) -> None:
        self.sessions.clear()
        self.is_active = False
