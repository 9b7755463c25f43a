import json
import shutil

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qk_export.cli import main
from qk_export.trt_check import check_bundle, check_model


def _graph(nodes, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _qdq(zero_point: int):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(zero_point, np.int8), "zp")
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q0")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0")
    return _graph([q, dq], [scale, zp])


def test_symmetric_qdq_passes_and_asymmetric_is_named():
    assert check_model(_qdq(0)) == []
    problems = check_model(_qdq(3), "decoder")
    assert len(problems) == 2
    assert "decoder: node q0 (QuantizeLinear)" in problems[0] and "not 0" in problems[0]
    assert "node dq0 (DequantizeLinear)" in problems[1]


def test_unsupported_op_and_custom_domain_are_named():
    problems = check_model(_graph([helper.make_node("StringNormalizer", ["x"], ["y"], name="weird")]), "cmg")
    assert problems == [f"cmg: node weird (StringNormalizer): op StringNormalizer is not supported by "
                        f"TensorRT 10.x ONNX parser (onnx-tensorrt 10.1 GA docs/operators.md)"]
    custom = helper.make_node("FusedGelu", ["x"], ["y"], name="fg", domain="com.microsoft")
    assert "custom domain 'com.microsoft'" in check_model(_graph([custom]))[0]


def test_runtime_axes_and_opset_out_of_range_are_named():
    axes = helper.make_node("Shape", ["x"], ["axes"], name="shape")
    sq = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=1)
    problems = check_model(_graph([axes, sq]))
    assert len(problems) == 1 and "node sum (ReduceSum)" in problems[0] and "`axes` must be an initializer" in problems[0]
    assert "opset 21 is outside" in check_model(_graph([helper.make_node("Relu", ["x"], ["y"])], opset=21))[0]


def test_exported_bundles_are_ready(bundles):
    for path in bundles.values():
        assert check_bundle(path) == []


def test_missing_profile_is_named(bundles, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundles["int8_region"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    del m["graphs"]["decoder_region"]["profile"]["active"]
    (copy / "manifest.json").write_text(json.dumps(m))
    problems = check_bundle(copy)
    assert problems == ["decoder_region: input active has dynamic axes [0, 1] but no TensorRT profile (min/opt/max) in the manifest"]
    assert main(["--check", str(copy)]) == 1
    assert "1 problem(s)" in capsys.readouterr().out
    assert main(["--check", str(bundles["fp32"])]) == 0
    assert "ok" in capsys.readouterr().out
