"""The backend interface and how a backend is chosen.

Every backend runs the bundle's graphs by name with numpy feeds and returns numpy outputs:

    with make_backend("ort-cpu", bundle) as be:
        out = be.infer("decoder", {"x": x, "sigma": sigma, ...})  # -> {"velocity": array}

like Polygraphy's runners (activate / infer / deactivate, usable as a context manager), so
parity between backends is one loop. `activate(graphs)` loads the graphs named (all by default)
so that their load time is paid there; a graph not loaded at activation loads on first use. Backends,
one small class per module, are listed in `REGISTRY` (name -> module, class, what it needs and
the pip command that provides it) and imported on first use:

| name     | module             | runs on                                         |
|----------|--------------------|-------------------------------------------------|
| ort-cpu  | backend_ort        | ONNX Runtime, CPU execution provider            |
| ort-cuda | backend_ort        | ONNX Runtime, CUDA execution provider           |
| ort-trt  | backend_ort        | ONNX Runtime, TensorRT execution provider       |
| ov-cpu   | backend_openvino   | OpenVINO on the CPU (reads the ONNX files)      |
| tensorrt | backend_tensorrt   | TensorRT engines built by `qk-build`            |

Aliases: `ort` = ort-cpu, `openvino` = ov-cpu, `trt` = tensorrt. `auto` picks the fastest one
available and says why (`Choice.reason`); a backend asked for by name that cannot run here is an
error naming what is missing and the pip command, never a silent fallback.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import EXPORT_HINT, Bundle
from .errors import BackendUnavailable, BundleError, QKRuntimeError

log = logging.getLogger("qk_runtime")

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "ov-cpu", "tensorrt")
ALIASES = {"ort": "ort-cpu", "onnxruntime": "ort-cpu", "openvino": "ov-cpu", "trt": "tensorrt"}
CHOICES = ("auto",) + BACKENDS + tuple(ALIASES)


@dataclass(frozen=True)
class BackendSpec:
    """A backend: where its class lives (imported on first use) and what it needs installed."""

    module: str  # this package's module holding the class
    cls: str
    needs: str  # the Python module that must be importable
    label: str  # its name for people
    install: str  # the fix when it is not
    provider: str | None = None  # ONNX Runtime's execution provider, for the ort-* backends
    options: tuple[tuple[str, str], ...] = ()  # fixed constructor arguments
    takes_threads: bool = True
    spins: bool = False  # takes `spinning` (ONNX Runtime's intra-op spin-wait)


# onnxruntime-gpu and the base install's onnxruntime write the same onnxruntime/ folder: the CPU wheel goes first
_ORT_GPU_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (query-kontext's gpu "
                "extra; an NVIDIA GPU and CUDA 12; runtime/README.md, \"ONNX Runtime on a GPU\")")
REGISTRY: dict[str, BackendSpec] = {
    "ort-cpu": BackendSpec("backend_ort", "OrtBackend", "onnxruntime", "ONNX Runtime", "pip install onnxruntime",
                           provider="CPUExecutionProvider", options=(("provider", "cpu"),), spins=True),
    "ort-cuda": BackendSpec("backend_ort", "OrtBackend", "onnxruntime", "ONNX Runtime", _ORT_GPU_FIX,
                            provider="CUDAExecutionProvider", options=(("provider", "cuda"),), spins=True),
    "ort-trt": BackendSpec("backend_ort", "OrtBackend", "onnxruntime", "ONNX Runtime",
                           _ORT_GPU_FIX + ", plus TensorRT's libraries (pip install 'query-kontext[trt]')",
                           provider="TensorrtExecutionProvider", options=(("provider", "trt"),), spins=True),
    "ov-cpu": BackendSpec("backend_openvino", "OpenVinoBackend", "openvino", "OpenVINO",
                          "pip install 'query-kontext[openvino]' (or pip install openvino)"),
    "tensorrt": BackendSpec("backend_tensorrt", "TensorRTBackend", "tensorrt", "TensorRT",
                            "pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU, then build engines with qk-build",
                            takes_threads=False),
}
assert tuple(REGISTRY) == BACKENDS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:400] if text else "") or type(exc).__name__


def graph_error(bundle: Bundle, graph: str, exc: BaseException, runtime: str, loading: bool) -> QKRuntimeError:
    """An error of ONNX Runtime / OpenVINO on one of the bundle's graphs -> the project's error,
    naming the file and what to do (a QKRuntimeError passes through unchanged)."""
    if isinstance(exc, QKRuntimeError):
        return exc
    info = bundle.graphs[graph]
    if loading:
        return BundleError(f"{runtime} cannot load graph {graph!r} from {info.path} ({_first_line(exc)}); the file or "
                           f"its external weights are damaged, truncated or not this bundle's ONNX model: {EXPORT_HINT}")
    return BundleError(f"{runtime} failed running graph {graph!r} ({info.path}): {_first_line(exc)}; the graph does not "
                       f"take what its manifest says: {EXPORT_HINT}")


class Backend:
    """Runs a bundle's graphs. Subclasses set `name` and implement the three methods below."""

    name = "base"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.is_active = False

    # -- the interface
    def activate(self, graphs: list[str] | None = None) -> None:
        """Get ready to run; load `graphs` now (None: all). Others load on first use."""
        raise NotImplementedError

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    # -- shared helpers
    def has(self, graph: str) -> bool:
        return graph in self.bundle.graphs

    def check_feeds(self, graph: str, feeds: dict[str, np.ndarray]) -> None:
        info = self.bundle.graphs.get(graph)
        if info is None:
            raise KeyError(f"graph {graph!r} is not in bundle {self.bundle.path} (it has {sorted(self.bundle.graphs)})")
        want, have = set(info.input_names), set(feeds)
        if want != have:
            raise ValueError(f"graph {graph!r} takes inputs {sorted(want)}, got {sorted(have)}")

    def __enter__(self):
        if not self.is_active:
            self.activate()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_active:
            self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bundle.path}, active={self.is_active})"


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name != "auto" and name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose(requested: str, bundle: Bundle) -> Choice:
    """Resolve `auto` (and aliases) to one backend, with the reason; check that it can run."""
    name = canonical(requested)
    if name != "auto":
        availability(name, bundle)  # raises BackendUnavailable with the fix
        return Choice(name, "requested")
    if _installed("tensorrt"):
        from .backend_tensorrt import engines_ready

        ready, why = engines_ready(bundle)
        if ready:
            return Choice("tensorrt", "TensorRT and engines built by qk-build for this GPU are present")
        log.info("auto: not using TensorRT: %s", why)
    providers = _ort_providers()
    if "CUDAExecutionProvider" in providers:
        return Choice("ort-cuda", "a CUDA build of ONNX Runtime is installed and no TensorRT engines were built for this bundle")
    if _installed("openvino"):
        if bundle.precision == "int8" and not cpu_has_int8_dot():
            return Choice("ort-cpu", "no GPU backend; this CPU has no INT8 dot-product instructions (VNNI/AMX), where "
                                     "OpenVINO ran the Q/DQ INT8 decoder no faster than FP32 and ONNX Runtime's integer "
                                     "GEMMs ran it 1.4x faster (benchmarks/results/cpu-2core)")
        return Choice("ov-cpu", "no GPU backend is available and OpenVINO is installed; on CPUs it ran this kind of DiT "
                                "faster than ONNX Runtime (1.25x FP32, about 2x on Q/DQ INT8 with VNNI: see deployment notes)")
    if bundle.precision == "int8" and not cpu_has_int8_dot():
        return Choice("ort-cpu", "no GPU backend; ONNX Runtime on the CPU (the choice here even with OpenVINO installed: "
                                 "this CPU has no INT8 dot-product instructions, VNNI/AMX)")
    return Choice("ort-cpu", "no GPU backend and no OpenVINO (pip install openvino, which auto prefers on CPUs); "
                             "using ONNX Runtime on the CPU")


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")  # x86 VNNI / AMX, Arm dot product


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`) from /proc/cpuinfo; empty when unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_int8_dot(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has INT8 dot-product instructions. Unknown (no flags read) counts as yes."""
    flags = cpu_flags(cpuinfo)
    return any(f in flags for f in INT8_DOT_FLAGS) if flags else True


def availability(name: str, bundle: Bundle) -> None:
    """Raise BackendUnavailable, naming what is missing and the fix, if `name` cannot run here."""
    spec = REGISTRY[name]
    if not _installed(spec.needs):
        raise BackendUnavailable(f"backend {name} needs {spec.label}, which is not installed: {spec.install}")
    if spec.provider is not None:
        providers = _ort_providers()
        if spec.provider not in providers:
            fix = spec.install
            raise BackendUnavailable(f"backend {name} needs ONNX Runtime's {spec.provider}, but this onnxruntime offers "
                                     f"only {providers}; {fix}")
    if name == "tensorrt":
        from .backend_tensorrt import engines_ready

        ready, why = engines_ready(bundle)
        if not ready:
            raise BackendUnavailable(f"backend tensorrt cannot run: {why}")


def make_backend(name: str, bundle: Bundle, *, threads: int | None = None, **options) -> Backend:
    """A backend instance by canonical name (not activated). `options` go to its constructor."""
    name = canonical(name)
    if name == "auto":
        raise ValueError("resolve 'auto' with choose() first")
    availability(name, bundle)
    spec = REGISTRY[name]
    cls = getattr(importlib.import_module(f".{spec.module}", __package__), spec.cls)
    if spec.takes_threads:
        options["threads"] = threads
    return cls(bundle, **dict(spec.options), **options)
