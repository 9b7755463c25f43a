"""The configurations one run measures, and the reasons some cannot run on this machine.

A configuration is an engine (the torch reference pipeline, a `qk_runtime` session, or the plain
OpenVINO peer), a backend, a precision and a sparsity:

| name | what |
|---|---|
| `torch-fp32-eager` | `qk_train.pipeline.Pipeline`, FP32, eager: the reference |
| `torch-fp32-compile` | the same with `torch.compile` on the decoder |
| `ort-{fp32,int8}-{dense,window,region}` | `qk_runtime.EditSession`, ONNX Runtime CPU |
| `ov-{fp32,bf16,int8}-{dense,window,region}` | `qk_runtime.EditSession`, OpenVINO CPU (bf16: precision hint on the FP32 bundle) |
| `peer-ov-int8-plain` | the strongest plain peer: the INT8 bundle's ONNX files compiled by OpenVINO with its defaults, a per-step Python loop, none of the runtime's optimisations |
| `trt-{fp16,int8}` | TensorRT engines from `qk-build`; only where TensorRT and an NVIDIA GPU are present |

`dense` runs `decoder.onnx`; `window` a bundle exported with `--sparse-attn window` (w x w token
windows, half the grid); `region` the region decoder on the CMG's active tokens.
"""
from __future__ import annotations

import fnmatch
import shutil
from dataclasses import asdict, dataclass

from qk_runtime.backend import _installed, cpu_flags

ENGINES = ("torch", "runtime", "peer", "tensorrt")
SPARSE = ("dense", "window", "region")
FRACTIONS = (0.05, 0.25, 1.0)  # the edit region's share of the image
QUICK_FRACTIONS = (0.25,)

# bundle variant -> qk-export options; dense runs use the region bundle's decoder.onnx
VARIANTS = {
    "fp32-region": {"int8": False, "sparse_attn": "region"},
    "fp32-window": {"int8": False, "sparse_attn": "window"},
    "int8-region": {"int8": True, "sparse_attn": "region"},
    "int8-window": {"int8": True, "sparse_attn": "window"},
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX, Arm bf16


@dataclass(frozen=True)
class BenchConfig:
    name: str
    engine: str  # one of ENGINES
    backend: str  # "torch" | "ort-cpu" | "ov-cpu" | "openvino-plain" | "tensorrt"
    precision: str  # "fp32" | "bf16" | "int8" | "fp16"
    sparse: str  # one of SPARSE
    compile: bool = False  # torch.compile (torch engine only)
    peer: bool = False  # the strongest plain peer

    @property
    def bundle_variant(self) -> str | None:
        """The cached bundle this configuration reads (None for torch)."""
        if self.engine in ("torch", "tensorrt"):
            return None
        bundle_precision = "int8" if self.precision == "int8" else "fp32"  # bf16 is a hint on the FP32 bundle
        return f"{bundle_precision}-{'window' if self.sparse == 'window' else 'region'}"

    @property
    def session_sparse(self) -> str:
        """What `EditSession.edit(sparse=...)` gets."""
        return "region" if self.sparse == "region" else "none"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def all_configs() -> list[BenchConfig]:
    out = [
        BenchConfig("torch-fp32-eager", "torch", "torch", "fp32", "dense"),
        BenchConfig("torch-fp32-compile", "torch", "torch", "fp32", "dense", compile=True),
    ]
    for backend, short, precisions in (("ort-cpu", "ort", ("fp32", "int8")), ("ov-cpu", "ov", ("fp32", "bf16", "int8"))):
        for precision in precisions:
            for sparse in SPARSE:
                out.append(BenchConfig(f"{short}-{precision}-{sparse}", "runtime", backend, precision, sparse))
    out.append(BenchConfig("peer-ov-int8-plain", "peer", "openvino-plain", "int8", "dense", peer=True))
    out.append(BenchConfig("trt-fp16", "tensorrt", "tensorrt", "fp16", "dense"))
    out.append(BenchConfig("trt-int8", "tensorrt", "tensorrt", "int8", "dense"))
    return out


def names() -> list[str]:
    return [c.name for c in all_configs()]


# --------------------------------------------------------------------------- what can run here


def skip_reason(c: BenchConfig, *, quick: bool, flags: set[str]) -> str | None:
    """Why `c` does not run in this run on this machine, or None."""
    if c.engine == "tensorrt":
        if not _installed("tensorrt"):
            return "TensorRT is not installed (pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU, then qk-build)"
        if shutil.which("nvidia-smi") is None:
            return "no NVIDIA GPU (nvidia-smi not found)"
        return "TensorRT engines are measured by benchmarks/gpu_bench.py on a GPU machine, not by the CPU run"
    if c.compile:
        if quick:
            return "skipped in --quick: torch.compile of the decoder takes about 90 s on this 2-core CPU"
        if shutil.which("g++") is None and shutil.which("c++") is None:
            return "torch.compile (inductor) needs a C++ compiler on the CPU, and none was found (apt-get install g++)"
    if c.backend in ("ov-cpu", "openvino-plain") and not _installed("openvino"):
        return "OpenVINO is not installed (pip install 'query-kontext[openvino]')"
    if c.precision == "bf16" and not (flags & set(BF16_FLAGS)):
        return ("this CPU has no BF16 instructions (none of " + ", ".join(BF16_FLAGS) + " in /proc/cpuinfo); "
                "OpenVINO would run the bf16 hint in f32, so it would only repeat ov-fp32")
    if quick and c.sparse == "window":
        return "skipped in --quick: window bundles need two more exports (about 6 min here)"
    return None


def select(patterns: list[str] | None, *, quick: bool, flags: set[str] | None = None) -> tuple[list[BenchConfig], list[Skipped]]:
    """The configurations to run and those skipped, with reasons. `patterns`: names or shell globs
    (`ort-*`); None: all. An unknown pattern is an error naming the choices."""
    flags = cpu_flags() if flags is None else flags
    configs = all_configs()
    if patterns:
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in configs)]
        if unknown:
            raise ValueError(f"--configs {','.join(unknown)} matches no configuration; choose from {', '.join(names())} "
                             f"(shell patterns such as 'ort-*' work)")
        configs = [c for c in configs if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    run, skipped = [], []
    for c in configs:
        why = skip_reason(c, quick=quick, flags=flags)
        if why:
            skipped.append(Skipped(c.name, why))
        else:
            run.append(c)
    # the reference runs first: the others compare their images with its outputs
    run.sort(key=lambda c: (c.engine != "torch" or c.compile, ))
    return run, skipped
