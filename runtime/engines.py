"""Where TensorRT engines live and what makes them valid: the engine cache key.

Plain Python (no TensorRT needed), shared by `qk-build` and the TensorRT backend.

Layout: `engines/<bundle-name>/<gpu>-trt<version>/` holding one `<graph>.plan` per graph,
`timing.cache`, and `engines.json` with the cache key. `engines/` is the nearest folder of that
name above the bundle (so `engines/default/int8` builds into `engines/default-int8/...`), or an
`engines/` folder beside the bundle.

Everything that changes an engine is in the key: the bundle's hash (of the manifest's files
map), the engine precision, every graph's TensorRT profile, the TensorRT version, and the GPU's
name and compute capability. Engines whose key differs from the current one are refused with
the command that rebuilds them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from pathlib import Path

from .bundle import Bundle
from .errors import EngineMismatchError
from .files import read_json

ENGINES_FILE = "engines.json"
TIMING_CACHE = "timing.cache"
ENGINES_FORMAT = "qk-engines"
KEY_FIELDS = ("bundle_sha", "precision", "profiles", "tensorrt", "gpu", "compute_capability")


def engines_root(bundle_path: Path) -> Path:
    bundle_path = Path(bundle_path).resolve()
    for parent in bundle_path.parents:
        if parent.name == "engines":
            return parent
    return bundle_path.parent / "engines"


def bundle_label(bundle_path: Path) -> str:
    """engines/default/int8 -> 'default-int8'; any other folder -> its name."""
    bundle_path = Path(bundle_path).resolve()
    root = engines_root(bundle_path)
    try:
        return "-".join(bundle_path.relative_to(root).parts)
    except ValueError:
        return bundle_path.name


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def default_engine_dir(bundle_path: Path, gpu_name: str, trt_version: str) -> Path:
    return engines_root(bundle_path) / bundle_label(bundle_path) / f"{slug(gpu_name)}-trt{trt_version}"


def engine_precision(bundle_precision: str, has_fp16_flag: bool) -> str:
    """What the engines compute in: Q/DQ INT8 (strongly typed), the FP16 bundle's own types
    (strongly typed), FP16 (TensorRT 10's builder flag on an FP32 bundle), or the ONNX file's own
    FP32 (strongly typed, where the FP16 flag no longer exists: TensorRT 11)."""
    if bundle_precision == "int8":
        return "int8-qdq-strongly-typed"
    if bundle_precision == "fp16":
        return "fp16-strongly-typed"
    return "fp16" if has_fp16_flag else "fp32-strongly-typed"


def _normalise(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def cache_key(bundle: Bundle, *, precision: str, trt_version: str, gpu_name: str, compute_capability: str) -> dict:
    return {
        "bundle_sha": bundle.sha,
        "precision": precision,
        "profiles": _normalise({name: g.profile for name, g in sorted(bundle.graphs.items())}),
        "tensorrt": str(trt_version),
        "gpu": gpu_name,
        "compute_capability": str(compute_capability),
    }


def rebuild_command(bundle_path: Path, engine_dir: Path) -> str:
    return f"qk-build --bundle {shlex.quote(str(bundle_path))} --out {shlex.quote(str(engine_dir))}"


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_key(recorded: dict, expected: dict, *, bundle_path: Path, engine_dir: Path) -> None:
    """Raise EngineMismatchError naming each differing field and the rebuild command."""
    recorded = _normalise(recorded or {})
    expected = _normalise(expected)
    diffs = [f for f in KEY_FIELDS if recorded.get(f) != expected.get(f)]
    if diffs:
        detail = "; ".join(f"{f}: built for {_short(recorded.get(f))}, now {_short(expected.get(f))}" for f in diffs)
        raise EngineMismatchError(
            f"the TensorRT engines in {engine_dir} do not match this bundle and machine ({detail}); "
            f"rebuild them with: {rebuild_command(bundle_path, engine_dir)}"
        )


def read_engines_json(engine_dir: Path) -> dict:
    path = Path(engine_dir) / ENGINES_FILE
    if not path.exists():
        raise FileNotFoundError(path)
    data = read_json(path, EngineMismatchError, "rebuild the engines with qk-build")
    if not isinstance(data, dict) or data.get("format") != ENGINES_FORMAT or not isinstance(data.get("engines"), dict):
        raise EngineMismatchError(f"{path} is not an engines file written by qk-build; rebuild the engines with qk-build")
    return data


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path` (opened "w+b"), synced, then renamed onto
    `path`: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_engines_json(engine_dir: Path, key: dict, engines: dict[str, str], command: str) -> Path:
    path = Path(engine_dir) / ENGINES_FILE
    data = {"format": ENGINES_FORMAT, "version": 1, "key": key, "engines": engines, "command": command}
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path
