"""The bundles a run needs, exported once from the checkpoint into a cache folder.

    cache/bundles/<key>/<variant>/      e.g. benchmarks/.cache/bundles/3f2a.../int8-region/

The key hashes what changes a bundle: the checkpoint's files, the export code (every `.py` of
`qk_export` and `qk_runtime/contract.py`) and the INT8 options, so editing the exporter re-exports
and a second run reuses the first one's bundles. Exports run `qk-export` in a subprocess
(`python -m qk_export.cli`), so this process never imports torch. INT8 bundles are calibrated
with `--calib-samples` (16 by default here, against 64 for the shipped default), to keep the
first run's export time down; the report says so.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .configs import VARIANTS

CHECKPOINT_FILES = ("hyperparameters.yaml", "model.safetensors", "tokenizer.json", "pretrained.json")
EXPORT_RECORD = ".export.json"  # <variant>.export.json beside the bundle folder: how long it took, with what command


class BundleError(RuntimeError):
    """A bundle the benchmark needs could not be made."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"package {name} is not installed; pip install -e '.[export]' from the repository root")
    return Path(list(spec.submodule_search_locations)[0])


def cache_key(checkpoint: Path, calib_samples: int, weight_bits: int) -> str:
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = checkpoint / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    code = sorted(_package_dir("qk_export").glob("*.py")) + [_package_dir("qk_runtime") / "contract.py"]
    for path in code:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(f"calib={calib_samples};bits={weight_bits}".encode())
    return digest.hexdigest()[:16]


def export_command(checkpoint: Path, out: Path, variant: str, calib_samples: int, weight_bits: int) -> list[str]:
    opts = VARIANTS[variant]
    cmd = [sys.executable, "-m", "qk_export.cli", "--model", str(checkpoint), "--out", str(out),
           "--sparse-attn", opts["sparse_attn"], "--quiet"]
    if opts["int8"]:
        cmd += ["--int8", "--calib-samples", str(calib_samples), "--weight-bits", str(weight_bits)]
    return cmd


def prepare(checkpoint: Path, cache_dir: Path, variants: list[str], *, calib_samples: int = 16, weight_bits: int = 7,
            log=print, env: dict | None = None, in_process: bool = False) -> dict[str, Path]:
    """Each variant's bundle folder, exported now if the cache lacks it. Raises BundleError with
    the exporter's message if an export fails. `in_process`: call `qk_export.bundle.export_bundle`
    here instead of a `qk-export` subprocess (imports torch into this process; tests use it to
    fill a cache quickly)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "model.safetensors").is_file():
        raise BundleError(f"--model {checkpoint} is not a checkpoint folder (no model.safetensors); pass the folder "
                          f"qk-train wrote (its final/), e.g. engines/default/checkpoint")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise BundleError(f"unknown bundle variant(s) {unknown}; known: {sorted(VARIANTS)}")
    root = Path(cache_dir) / "bundles" / cache_key(checkpoint, calib_samples, weight_bits)
    out = {}
    for variant in variants:
        folder = root / variant
        if not (folder / "manifest.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            cmd = export_command(checkpoint, folder, variant, calib_samples, weight_bits)
            log(f"qk-bench: exporting the {variant} bundle into {folder} (cached for later runs)")
            t0 = time.perf_counter()
            if in_process:
                _export_here(checkpoint, folder, variant, calib_samples, weight_bits)
            else:
                run = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if run.returncode != 0:
                    tail = (run.stderr or run.stdout).strip().splitlines()[-8:]
                    raise BundleError(f"qk-export failed for the {variant} bundle (exit {run.returncode}): " + " | ".join(tail))
            seconds = time.perf_counter() - t0
            record_path(folder).write_text(json.dumps({"seconds": round(seconds, 1), "command": cmd[1:]}, indent=2) + "\n")
        out[variant] = folder
    return out


def _export_here(checkpoint: Path, out: Path, variant: str, calib_samples: int, weight_bits: int) -> None:
    from qk_export.bundle import ExportError, export_bundle

    opts = VARIANTS[variant]
    try:
        export_bundle(checkpoint, out, int8=opts["int8"], sparse_attn=opts["sparse_attn"], calib_samples=calib_samples,
                      weight_bits=weight_bits)
    except (ExportError, ValueError) as exc:
        raise BundleError(f"export of the {variant} bundle failed: {exc}") from exc


def record_path(folder: Path) -> Path:
    folder = Path(folder)
    return folder.parent / (folder.name + EXPORT_RECORD)


def export_record(folder: Path) -> dict | None:
    try:
        return json.loads(record_path(folder).read_text())
    except (OSError, ValueError):
        return None


def bundle_env() -> dict:
    """Environment for the export subprocesses: torch's OpenMP threads wait passively (on a CPU
    shared with other work, spinning threads were 40x slower here)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
