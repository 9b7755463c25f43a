"""qk-export --fp16: float16 graphs that keep float32 inputs, outputs and the sensitive nodes,
checked against torch FP32 at export (tiny preset)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qk_export.bundle import ExportError, export_bundle
from qk_export.cli import main
from qk_export.fp16 import DEFAULT_FLOAT, convert_float16, keeps_float
from qk_export.parity import FP16_BOUND


def _toy() -> onnx.ModelProto:
    """x (float32) -> MatMul(W) -> LayerNormalization -> Softmax -> Mul(v) -> Add(1e6 constant) -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    big = numpy_helper.from_array(np.full(8, 1e6, np.float32), "big")
    v = numpy_helper.from_array(np.linspace(0.5, 2, 8, dtype=np.float32), "v")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/net/MatMul"),
             helper.make_node("LayerNormalization", ["h", "scale"], ["n"], name="/net/norm/LayerNorm", axis=-1),
             helper.make_node("Softmax", ["n"], ["p"], name="/net/Softmax", axis=-1),
             helper.make_node("Mul", ["p", "v"], ["q"], name="/net/Mul"),
             helper.make_node("Add", ["q", "big"], ["y"], name="/net/Add")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w, scale, big, v])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _types(model) -> dict[str, int]:
    g = model.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.output) + list(g.value_info)}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_converter_keeps_io_norm_softmax_and_out_of_range_constants_in_float32():
    model = _toy()
    half, counts = convert_float16(model, lambda n: keeps_float(n, DEFAULT_FLOAT))
    onnx.checker.check_model(half, full_check=True)
    types = _types(half)
    by_name = {n.name: n for n in half.graph.node}
    # inputs and outputs keep the bundle contract's float32
    assert types["x"] == TensorProto.FLOAT and types["y"] == TensorProto.FLOAT
    # the MatMul runs in float16 on a float16 copy of W; the norm and softmax read float32
    assert types[by_name["/net/MatMul"].output[0]] == TensorProto.FLOAT16
    assert types[by_name["/net/MatMul"].input[1]] == TensorProto.FLOAT16
    assert types[by_name["/net/norm/LayerNorm"].input[0]] == TensorProto.FLOAT
    assert types[by_name["/net/Softmax"].output[0]] == TensorProto.FLOAT
    # 1e6 does not fit float16: the Add reading it stays float32
    assert types[by_name["/net/Add"].output[0]] == TensorProto.FLOAT
    assert counts["float_nodes"] == 3 and counts["half_nodes"] == 2
    assert {t.name: t.data_type for t in half.graph.initializer}["big"] == TensorProto.FLOAT
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(half, x), _run(model, x), rtol=1e-3, atol=1e-1)  # 1e6 + O(1): float32's step is 0.06


def test_converter_without_groups_runs_everything_it_can_in_float16():
    half, counts = convert_float16(_toy(), lambda n: keeps_float(n, ()))
    types = _types(half)
    by_name = {n.name: n for n in half.graph.node}
    assert types[by_name["/net/Softmax"].output[0]] == TensorProto.FLOAT16
    assert types[by_name["/net/norm/LayerNorm"].output[0]] == TensorProto.FLOAT16
    assert counts["float_nodes"] == 1  # only the Add of the out-of-range constant
    assert types["y"] == TensorProto.FLOAT


def test_groups_name_the_nodes_they_keep():
    node = helper.make_node("Gemm", ["a", "b"], ["c"], name="/decoder/t_embed/mlp/mlp.0/Gemm")
    assert keeps_float(node, ("time",)) and not keeps_float(node, ("norm", "softmax"))
    top = helper.make_node("Div", ["a", "b"], ["c"], name="/Div")
    assert keeps_float(top, ("gating",), "decoder") and keeps_float(top, ("gating",), "decoder_region")
    assert not keeps_float(top, ("gating",), "decoder_cond")  # its top-level ops are the conditioning itself


@pytest.fixture(scope="module")
def fp16_bundle(tiny_checkpoint, tmp_path_factory, torch_one_thread):
    with torch_one_thread():
        return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("fp16") / "fp16", fp16=True, sparse_attn="region")


def test_fp16_bundle_records_its_parity_against_torch_fp32(fp16_bundle, region_bundle):
    m = json.loads((fp16_bundle / "manifest.json").read_text())
    assert m["precision"] == "fp16"
    assert {g["precision"] for g in m["graphs"].values()} == {"fp16"}
    assert m["fp16"]["float_groups"] == list(DEFAULT_FLOAT)
    for name, r in m["parity"].items():
        # ONNX Runtime's CPU provider and float16 arithmetic, each within the bound, the FP32 figures kept
        assert r["runtime"] == "onnxruntime CPUExecutionProvider", name
        assert 0 <= r["mean_abs_over_std"] <= FP16_BOUND and 0 <= r["half_arithmetic"]["mean_abs_over_std"] <= FP16_BOUND, name
        assert r["fp32"]["max_abs"] < 1e-4, name
        assert r["half_arithmetic"]["max_abs"] > r["fp32"]["max_abs"], f"{name}: float16 arithmetic shows no rounding at all"
    for name in m["graphs"]:  # every graph file holds float16 weights, float32 inputs and outputs
        model = onnx.load(str(fp16_bundle / m["graphs"][name]["file"]), load_external_data=False)
        assert all(i.type.tensor_type.elem_type != TensorProto.FLOAT16 for i in list(model.graph.input) + list(model.graph.output))
    weights = (fp16_bundle / "decoder.weights").stat().st_size
    assert weights < 0.6 * (region_bundle / "decoder.weights").stat().st_size
    assert m["trt_readiness"]["ok"]


def test_fp16_bound_names_the_graph_that_misses_it(fp16_bundle):
    from qk_export.parity import fp16_problem

    report = json.loads((fp16_bundle / "manifest.json").read_text())["parity"]["decoder"]
    assert fp16_problem("decoder", report) is None
    msg = fp16_problem("decoder", report, bound=1e-9)  # no float16 graph is that close
    assert msg.startswith("FP16 decoder: mean abs error is ") and "keep more of it in float32 (--fp16-float)" in msg


@pytest.mark.parametrize("argv, message", [
    (["--fp16", "--int8"], "--fp16 and --int8 are two precisions of one bundle"),
    (["--fp16-float", "norm"], "--fp16-float only applies with --fp16"),
])
def test_cli_refuses_fp16_mixups(tiny_checkpoint, tmp_path, capsys, argv, message):
    assert main(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_unknown_group_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="unknown FP16 float group"):
        export_bundle(tiny_checkpoint, tmp_path / "b", fp16=True, fp16_float=("layernorm",))
