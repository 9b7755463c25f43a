"""The machine a run measured: CPU model and flags, cores, memory, load, GPU and driver, library
versions and the repository's commit. Read from /proc, `nvidia-smi` and package metadata; nothing
here imports torch.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from qk_runtime.backend import cpu_flags

# flags that matter for these runtimes' kernels
KEY_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimddp", "bf16", "sve")
PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "onnx", "tokenizers", "diffusers",
            "tensorrt", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cpuinfo_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what `platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _gpu() -> dict | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        run = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    rows = [r.split(", ") for r in run.stdout.strip().splitlines() if r.strip()]
    return {"gpus": [{"name": r[0], "driver": r[1] if len(r) > 1 else None, "memory": r[2] if len(r) > 2 else None}
                     for r in rows]} if rows else {"error": run.stderr.strip()[:200]}


def _git() -> dict:
    git = shutil.which("git")
    if git is None:
        return {}
    def run(*args):
        r = subprocess.run([git, "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20, check=False)
        return r.stdout.strip() if r.returncode == 0 else None
    # the checkout's date, not its hash: result files name the machine and the date (history is git's)
    return {"commit_date": run("show", "-s", "--format=%cs", "HEAD"),
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def describe(machine_id: str) -> dict:
    flags = cpu_flags()
    return {
        "id": machine_id,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags_key": [f for f in KEY_FLAGS if f in flags],
        "cpu_flags": sorted(flags),
        "memory_gb": _mem_total_gb(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "niceness": os.nice(0),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": _gpu(),
        "versions": _versions(),
        "repository": _git(),
    }


def summary_line(m: dict) -> str:
    gpu = "no GPU" if not m.get("gpu") else ", ".join(g["name"] for g in m["gpu"].get("gpus", [])) or "GPU: ?"
    v = m["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "openvino", "torch") if k in v)
    return (f"{m['cpu_model']}, {m['cpu_cores']} cores ({' '.join(m['cpu_flags_key']) or 'no SIMD flags read'}), "
            f"{m['memory_gb']} GB, {gpu}; load {m['load_average_at_start'][0]} at start; {libs}")
