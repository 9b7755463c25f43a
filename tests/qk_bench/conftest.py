"""One quick qk-bench run on the tiny checkpoint (tests/conftest.py's), shared by the smoke tests:
it exports its bundles into a temporary cache and measures a few configurations, one per engine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# both CPU backends dense in both precisions: `auto` picks OpenVINO for INT8 on CPUs with VNNI/AMX and
# ONNX Runtime on the others, and the INT8-vs-FP32 target is measured on the one it picks
SMOKE_CONFIGS = "torch-fp32-eager,ort-fp32-dense,ort-fp32-region,ort-int8-dense,ov-fp32-dense,ov-int8-dense,peer-ov-int8-plain"


@pytest.fixture(scope="session")
def smoke_run(tiny_checkpoint, tmp_path_factory) -> dict:
    """qk-bench --quick on the tiny checkpoint; returns the paths and the JSON."""
    pytest.importorskip("openvino", reason="the plain peer needs OpenVINO (pip install 'query-kontext[openvino]')")
    import torch

    from qk_bench.bundles import prepare
    from qk_bench.cli import main

    root = tmp_path_factory.mktemp("qk_bench_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # fill the run's bundle cache here: two exports in this process, not two qk-export processes
        prepare(tiny_checkpoint, root / "cache", ["fp32-region", "int8-region"], log=lambda m: None, in_process=True)
    finally:
        torch.set_num_threads(threads)
    out_dir, json_path = root / "results", root / "bench.json"
    argv = ["--model", str(tiny_checkpoint), "--cache", str(root / "cache"), "--out-dir", str(out_dir),
            "--json", str(json_path), "--quick", "--configs", SMOKE_CONFIGS, "--quality-n", "2",
            "--scaling-presets", "tiny", "--scaling-sides", "64,128", "--threads", "1", "--import-repeats", "1",
            "--peak-size", "256"]
    code = main(argv)
    assert code == 0, f"qk-bench exited {code}"
    return {"out_dir": out_dir, "json": json_path, "doc": json.loads(json_path.read_text())}
