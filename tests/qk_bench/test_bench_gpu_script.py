"""benchmarks/gpu_bench.py's CPU fallback, as a smoke test of the script a lent GPU machine runs:
it loads the shipped checkpoint's networks from the checkout, times the eager decoder step and a
short full edit, and says why CUDA graphs were skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_fallback_runs(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    if not (ROOT / "engines" / "default" / "checkpoint" / "model.safetensors").is_file():
        pytest.skip("the shipped checkpoint is not in this checkout")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--device", "cpu", "--quick",
                          "--dtypes", "fp32", "--steps", "2", "--repeats", "1", "--step-repeats", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    steps = {(s["variant"], s["batch"]) for s in result["step"]}
    assert steps == {("eager-fp32", 2), ("eager-fp32", 1)}  # the edit batch (two guidance branches) and 1
    assert all(s["ms"]["median"] > 0 and s["tflops"] > 0 for s in result["step"])
    edit = result["edit"][0]["stages_ms"]
    assert {"image_encoder", "text_encoder", "gateway", "cmg", "decoder", "image_decoder", "total"} <= set(edit)
    assert edit["decoder"]["median"] > 0 and edit["total"]["median"] >= edit["decoder"]["median"]
    assert {s["variant"]: s["reason"] for s in result["skipped"]} == {"cudagraph-fp32": "CUDA graphs need a CUDA device"}
    assert (tmp_path / "gpu_bench.md").read_text().startswith("# gpu_bench on")


def test_refuses_cuda_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2 and "no CUDA device" in run.stderr and "--device cpu" in run.stderr
