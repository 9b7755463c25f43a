"""The pieces of qk-bench that need no model: region boxes, summaries, configuration choice, the
peak graphs, and the CLI's errors."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qk_bench.configs import BenchConfig, all_configs, select
from qk_bench.timing import StageClock, summarize
from qk_bench.workload import graph_feeds, manifest_tensors, psnr, region_box


@pytest.mark.parametrize("fraction", [0.05, 0.25, 1.0])
def test_region_box_covers_the_fraction(fraction):
    x0, y0, x1, y1 = region_box(64, fraction, (60.0, 3.0))  # centre near a corner: the box is kept inside
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 == y1 - y0
    assert abs((x1 - x0) * (y1 - y0) / 64 ** 2 - fraction) < 0.02
    with pytest.raises(ValueError, match="fraction"):
        region_box(64, 0.0, (32, 32))


def test_summary_and_psnr():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 5.0, 5)
    assert s["p90"] == pytest.approx(4.6) and s["p99"] == pytest.approx(4.96)
    assert summarize([])["median"] is None
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one of 48 values off by 255: MSE 255^2 / 48
    assert psnr(a, a) == 100.0 and psnr(a, b) == pytest.approx(10 * np.log10(48))
    clock = StageClock()
    clock.mark("a")
    clock.mark("b")
    times = clock.read()
    assert set(times) == {"a", "b", "total"} and times["total"] >= times["a"] >= 0


def test_graph_feeds_follow_the_spec():
    spec = manifest_tensors([{"name": "x", "dtype": "float32", "shape": ["batch", 4, 2, 2]},
                             {"name": "text_mask", "dtype": "float32", "shape": ["batch", 12]},
                             {"name": "active", "dtype": "int64", "shape": ["batch", "active"]}])
    feeds = graph_feeds(spec, 3, active=5)
    assert feeds["x"].shape == (3, 4, 2, 2) and feeds["x"].dtype == np.float32
    assert feeds["text_mask"].sum() == 3 * 8
    assert feeds["active"].tolist() == [[0, 1, 2, 3, 4]] * 3


def test_selection_and_skip_reasons():
    run, skipped = select(None, quick=False, flags={"avx2", "fma"})
    reasons = {s.name: s.reason for s in skipped}
    assert "ov-bf16-dense" in reasons and "BF16" in reasons["ov-bf16-dense"]
    assert "trt-fp16" in reasons
    assert run[0].name == "torch-fp32-eager"  # the reference runs first
    if importlib.util.find_spec("openvino") is not None:
        with_bf16, _ = select(["ov-bf16-*"], quick=False, flags={"avx512_bf16"})
        assert {c.name for c in with_bf16} == {"ov-bf16-dense", "ov-bf16-window", "ov-bf16-region"}
    quick, quick_skipped = select(["*-window", "torch-*"], quick=True, flags=set())
    assert [c.name for c in quick] == ["torch-fp32-eager"]
    assert {s.name for s in quick_skipped if "--quick" in s.reason} == {"torch-fp32-compile", "ort-fp32-window",
                                                                       "ort-int8-window", "ov-fp32-window", "ov-int8-window"}
    with pytest.raises(ValueError, match="matches no configuration"):
        select(["ort-fp64-*"], quick=False, flags=set())


def test_bundle_variants():
    by_name = {c.name: c for c in all_configs()}
    assert by_name["ort-int8-dense"].bundle_variant == "int8-region"  # dense runs the region bundle's decoder.onnx
    assert by_name["ov-bf16-window"].bundle_variant == "fp32-window"  # bf16 is a hint on the FP32 bundle
    assert by_name["torch-fp32-eager"].bundle_variant is None
    assert BenchConfig("x", "runtime", "ort-cpu", "fp32", "region").session_sparse == "region"


def test_peak_graphs_compute_a_product():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from qk_bench.peak import matmul_model, ort_runner

    a = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    for kind in ("fp32", "int8-qdq"):
        model = matmul_model(kind, 8, 16, 4)
        w = {t.name: t for t in model.graph.initializer}
        out = ort_runner(model.SerializeToString(), 1)({"A": a})[0]
        assert out.shape == (8, 4) and np.isfinite(out).all()
        if kind == "fp32":
            from onnx import numpy_helper

            np.testing.assert_allclose(out, a @ numpy_helper.to_array(w["W"]), rtol=1e-5, atol=1e-5)


def test_cli_errors(tmp_path, capsys):
    from qk_bench.cli import main

    assert main(["--model", str(tmp_path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert main(["--configs", "nonsense-*", "--prepare-only", "--cache", str(tmp_path / "c")]) == 2
    assert "matches no configuration" in capsys.readouterr().err
    assert main(["--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert main(["--regions", "0,25"]) == 2  # argparse: a region of 0 % is refused
