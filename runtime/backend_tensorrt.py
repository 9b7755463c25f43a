"""Native TensorRT backend: runs the engines `qk-build` wrote for this bundle and this GPU.

`tensorrt` and `cuda-python` are imported only here, and only when the backend is used.

Per graph: the engine is deserialized and one execution context made; one device buffer per
I/O tensor is allocated once, at the size of the profile's largest shape, and bound with
`set_tensor_address` for good. A call sets the input shapes (`set_input_shape`) when they
changed, copies the inputs in, runs `execute_async_v3` on the backend's stream and copies the
outputs back. With `cuda_graphs=True` the second call with a given set of shapes is captured into
a CUDA graph and every later call with those shapes replays it (shapes within an edit are static:
batch 3 and one region bucket, so the denoising loop replays one graph per step).

At activation the engines' cache key (engines.json) is checked against the bundle, the TensorRT
version and the GPU; a mismatch is refused with the qk-build command that rebuilds them.

Verified statically only on the machines this was written on (no TensorRT there): API names
follow NVIDIA's TensorRT 10 Python documentation.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .backend import Backend
from .bundle import Bundle
from .engines import ENGINES_FILE, cache_key, check_key, default_engine_dir, engine_precision, read_engines_json, rebuild_command
from .errors import BackendUnavailable

PIP_TRT = "pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU"


def cudart():
    """The CUDA runtime bindings of cuda-python (new and old module layouts)."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt
        except ImportError as exc:
            raise BackendUnavailable(f"the TensorRT backend needs cuda-python, which is not installed: {PIP_TRT}") from exc
    return rt


def cuda_check(result):
    """cuda-python calls return (error, *values): raise on error, return the values."""
    rt = cudart()
    err, rest = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {err}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of `device`."""
    rt = cudart()
    props = cuda_check(rt.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, (bytes, bytearray)) else str(props.name)
    return name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}"


def expected_key(bundle: Bundle, trt) -> dict:
    name, cc = gpu_info()
    precision = engine_precision(bundle.precision, hasattr(trt.BuilderFlag, "FP16"))
    return cache_key(bundle, precision=precision, trt_version=trt.__version__, gpu_name=name, compute_capability=cc)


def resolve_engine_dir(bundle: Bundle, engine_dir: str | Path | None, trt) -> Path:
    if engine_dir is not None:
        return Path(engine_dir)
    name, _ = gpu_info()
    return default_engine_dir(bundle.path, name, trt.__version__)


def engines_ready(bundle: Bundle, engine_dir: str | Path | None = None) -> tuple[bool, str]:
    """(True, '') when TensorRT, cuda-python, a GPU and matching engines are all here; else (False, why)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"TensorRT is not installed: {PIP_TRT}"
    try:
        import tensorrt as trt

        folder = resolve_engine_dir(bundle, engine_dir, trt)
        if not (folder / ENGINES_FILE).is_file():
            return False, f"no engines were built for this bundle and GPU in {folder}; build them with: {rebuild_command(bundle.path, folder)}"
        data = read_engines_json(folder)
        check_key(data.get("key"), expected_key(bundle, trt), bundle_path=bundle.path, engine_dir=folder)
    except Exception as exc:  # no GPU, no driver, mismatched engines: all say "not ready" with the reason
        return False, str(exc)
    return True, ""


class _Graph:
    """One engine, its context, persistent device buffers and captured CUDA graphs."""

    def __init__(self, trt, rt, runtime, plan: Path, stream):
        self.rt = rt
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan}; rebuild the engines with qk-build")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        self.inputs, self.outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            (self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.inputs + self.outputs}
        # size every buffer for the profile's largest shapes, then bind it once
        for n in self.inputs:
            self.context.set_input_shape(n, tuple(self.engine.get_tensor_profile_shape(n, 0)[2]))
        self.buffers = {}
        for n in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            nbytes = max(1, int(np.prod(shape)) * self.dtypes[n].itemsize)
            self.buffers[n] = (cuda_check(rt.cudaMalloc(nbytes)), nbytes)
            self.context.set_tensor_address(n, int(self.buffers[n][0]))
        self.shapes: dict[str, tuple] = {}
        self.seen: set = set()
        self.graphs: dict = {}  # shapes -> (cudaGraph, cudaGraphExec)

    def run(self, feeds: dict[str, np.ndarray], use_graph: bool) -> dict[str, np.ndarray]:
        rt = self.rt
        for n in self.inputs:
            arr = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
            if self.shapes.get(n) != arr.shape:
                if not self.context.set_input_shape(n, arr.shape):
                    raise ValueError(f"input {n!r} shape {arr.shape} is outside the engine's profile; rebuild with qk-build")
                self.shapes[n] = arr.shape
            ptr, cap = self.buffers[n]
            if arr.nbytes > cap:
                raise ValueError(f"input {n!r} of {arr.nbytes} bytes exceeds its buffer ({cap}); shape {arr.shape} is outside the profile")
            cuda_check(rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        key = tuple(self.shapes[n] for n in self.inputs)
        if use_graph and key in self.graphs:
            cuda_check(rt.cudaGraphLaunch(self.graphs[key][1], self.stream))
        elif use_graph and key in self.seen:  # second call with these shapes: capture, then replay
            cuda_check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            ok = self.context.execute_async_v3(int(self.stream))
            graph = cuda_check(rt.cudaStreamEndCapture(self.stream))
            if not ok:
                raise RuntimeError("TensorRT execute_async_v3 failed during CUDA graph capture")
            exec_ = cuda_check(rt.cudaGraphInstantiate(graph, 0))
            self.graphs[key] = (graph, exec_)
            cuda_check(rt.cudaGraphLaunch(exec_, self.stream))
        else:
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            self.seen.add(key)
        out = {}
        for n in self.outputs:
            host = np.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n])
            cuda_check(rt.cudaMemcpyAsync(host.ctypes.data, self.buffers[n][0], host.nbytes,
                                          rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            out[n] = host
        cuda_check(rt.cudaStreamSynchronize(self.stream))
        return out

    def free(self) -> None:
        rt = self.rt
        for graph, exec_ in self.graphs.values():
            rt.cudaGraphExecDestroy(exec_)
            rt.cudaGraphDestroy(graph)
        self.graphs.clear()
        for ptr, _ in self.buffers.values():
            rt.cudaFree(ptr)
        self.buffers.clear()
        self.context = None
        self.engine = None


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, *, engine_dir: str | Path | None = None, cuda_graphs: bool = True):
        super().__init__(bundle)
        self.engine_dir = engine_dir
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[str, _Graph] = {}
        self._stream = None

    def activate(self, graphs: list[str] | None = None) -> None:
        """Loads every engine (the engines are small; `graphs` is accepted for the interface)."""
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT is not installed: {PIP_TRT}") from exc
        rt = cudart()
        folder = resolve_engine_dir(self.bundle, self.engine_dir, trt)
        if not (folder / ENGINES_FILE).is_file():
            raise BackendUnavailable(f"no TensorRT engines in {folder}; build them with: {rebuild_command(self.bundle.path, folder)}")
        data = read_engines_json(folder)
        check_key(data.get("key"), expected_key(self.bundle, trt), bundle_path=self.bundle.path, engine_dir=folder)
        self._stream = cuda_check(rt.cudaStreamCreate())
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for name in self.bundle.graphs:
            plan = folder / data["engines"].get(name, f"{name}.plan")
            if not plan.is_file():
                raise BackendUnavailable(f"engine {plan} is missing; rebuild with: {rebuild_command(self.bundle.path, folder)}")
            self._graphs[name] = _Graph(trt, rt, runtime, plan, self._stream)
        self.engine_dir = folder
        self.is_active = True

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._graphs[graph].run(feeds, self.cuda_graphs)

    def deactivate(self) -> None:
        for g in self._graphs.values():
            g.free()
        self._graphs.clear()
        if self._stream is not None:
            cudart().cudaStreamDestroy(self._stream)
            self._stream = None
        self.is_active = False
