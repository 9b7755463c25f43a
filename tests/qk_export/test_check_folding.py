"""qk-export --check also runs Polygraphy's ONNX sanitization (constant folding) and reports the
node counts before and after, without changing the bundle."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qk_export.cli import main
from qk_export.trt_check import folding_report, load_with_weights

pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy onnx-graphsurgeon)")
pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon not installed (pip install onnx-graphsurgeon)")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_check_prints_node_counts_before_and_after_folding(fp32_bundle, capsys):
    before = _digests(fp32_bundle)
    assert main(["--check", str(fp32_bundle)]) == 0
    out = capsys.readouterr().out
    rows = folding_report(fp32_bundle)
    assert {name for name, _, _ in rows} == set(json.loads((fp32_bundle / "manifest.json").read_text())["graphs"])
    for name, n_before, n_after in rows:
        assert f"{name:15s} {n_before:5d} -> {n_after:5d} nodes" in out
        assert n_after == n_before  # the export's onnxslim pass folded what there was
    assert "constant folding (Polygraphy sanitize)" in out and "nothing left to fold" in out
    assert _digests(fp32_bundle) == before  # a report: no file changed


def test_folding_counts_what_is_left_to_fold(tmp_path):
    """A graph with a constant subexpression: Polygraphy folds it, the report says how many nodes go."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"]),  # constant: folds
             helper.make_node("Add", ["wt", "wt"], ["w2"]),  # constant: folds
             helper.make_node("MatMul", ["x", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "g.onnx"), save_as_external_data=True, location="g.weights", size_threshold=0)
    loaded = load_with_weights(tmp_path / "g.onnx", tmp_path)  # external weights read by offset
    assert numpy_helper.to_array(loaded.graph.initializer[0]).sum() == 16
    from polygraphy.backend.onnx import fold_constants

    assert len(fold_constants(loaded, copy=True).graph.node) == 1


def test_a_bundle_with_a_broken_graph_is_reported_without_folding(fp32_bundle, tmp_path, capsys):
    """An empty graph file whose sha256 the manifest was updated to: the readiness check names it
    and folding is not attempted (no traceback from reading it)."""
    import shutil

    bundle = shutil.copytree(fp32_bundle, tmp_path / "b")
    graph = bundle / "gateway.onnx"
    graph.write_bytes(b"")
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["gateway.onnx"] = hashlib.sha256(b"").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert main(["--check", str(bundle)]) == 1
    captured = capsys.readouterr()
    assert "not run: fix the problems above first" in captured.err and "Traceback" not in captured.err
