"""Paths and the qk_cpp_probe runner shared by the C++ runtime's tests (a module of its own,
with a name no other test folder uses, so that test files can import it)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPP = ROOT / "runtime" / "cpp"
BUILD = Path(os.environ.get("QK_CPP_BUILD_DIR", CPP / "build"))
PROGRAMS = ("qk_edit_cpp", "qk_cpp_probe", "qk_c_api_test")
THREADS = 1  # both runtimes on one ONNX Runtime thread: the same kernels, the same sums


def probe(build: Path, *args: str, stdin: str | None = None, ok: bool = True):
    """Run qk_cpp_probe; returns its JSON output. ok=False expects an error report instead."""
    run = subprocess.run([str(build / "qk_cpp_probe"), *map(str, args)], input=stdin, capture_output=True, text=True,
                         timeout=600)
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"qk_cpp_probe {args[0]} printed no JSON (status {run.returncode}):\n{run.stdout}\n{run.stderr}")
    if ok:
        assert run.returncode == 0, f"qk_cpp_probe {args[0]} failed: {out}"
    else:
        assert run.returncode == 2 and "error" in out, f"qk_cpp_probe {args[0]} should have failed: {out}"
    return out
