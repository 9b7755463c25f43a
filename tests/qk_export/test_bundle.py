import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qk_export.bundle import FP32_DECODER_BOUND, export_bundle
from qk_export.cli import main
from qk_export.graphs import DecoderRegionGraph, model_specs, sample_inputs
from qk_export.quantize import INT8_BOUND
from qk_export.trt_check import check_bundle, check_model
from qk_train.models import QKModel

GRAPHS = {"text_encoder", "image_encoder", "image_decoder", "gateway", "cmg", "decoder"}


def test_fp32_bundle_lists_every_graph_with_profiles_and_tight_parity(bundles):
    m = json.loads((bundles["fp32"] / "manifest.json").read_text())
    assert set(m["graphs"]) == GRAPHS and m["precision"] == "fp32" and m["format_version"] == 1
    for name, g in m["graphs"].items():
        assert (bundles["fp32"] / g["file"]).exists()
        assert g["profile"] and all(set(p) == {"min", "opt", "max"} for p in g["profile"].values())
        assert m["parity"][name]["max_abs"] <= FP32_DECODER_BOUND, name
    assert set(m["files"]) == {g["file"] for g in m["graphs"].values()} | {"tokenizer.json"}
    assert m["trt_readiness"]["ok"], m["trt_readiness"]


def test_int8_bundle_is_symmetric_qdq_within_its_bound(bundles):
    m = json.loads((bundles["int8_region"] / "manifest.json").read_text())
    assert m["precision"] == "int8" and "decoder_region" in m["graphs"]
    proto = onnx.load(str(bundles["int8_region"] / "decoder.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert check_model(proto, "decoder") == []  # zero points are all 0
    names = [n.name for n in proto.graph.node if n.op_type == "MatMul" or n.op_type == "Gemm"]
    dq_inputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    float_ada = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul") and "/ada" in n.name
                 and any(i in dq_inputs for i in n.input)]
    assert names and not float_ada  # adaLN modulation stays in float
    for name in ("decoder", "gateway", "cmg"):
        assert m["parity"][name]["mean_abs_over_std"] <= INT8_BOUND, (name, m["parity"][name])
    assert ort.InferenceSession(str(bundles["int8_region"] / "decoder.onnx"))  # loads in ONNX Runtime
    import openvino as ov

    ov.Core().compile_model(str(bundles["int8_region"] / "decoder.onnx"), "CPU")  # and in OpenVINO


def test_region_graph_keeps_inactive_tokens_on_the_source_path(tiny_checkpoint):
    model = QKModel.from_checkpoint(tiny_checkpoint)
    spec = model_specs(model, region=True)["decoder_region"]
    args = list(sample_inputs(spec, model, torch.Generator().manual_seed(0), batch=2, active=4))
    x, sigma, source, gate_map, active = args[0], args[1], args[5], args[7], args[-1]
    with torch.no_grad():
        v = DecoderRegionGraph(model)(*args)
    back = (x - source) / sigma[:, None, None, None]
    p, n_side = model.cfg.decoder.patch, x.shape[-1] // model.cfg.decoder.patch
    for b in range(2):
        inactive = torch.ones(n_side * n_side, dtype=torch.bool)
        inactive[active[b]] = False
        tok = inactive.reshape(n_side, n_side).repeat_interleave(p, 0).repeat_interleave(p, 1)
        torch.testing.assert_close(v[b][:, tok], back[b][:, tok], rtol=1e-6, atol=1e-6)
        moving = (tok == 0) & (gate_map[b, 0] > 0)
        assert not torch.allclose(v[b][:, moving], back[b][:, moving])  # the active ones really ran


def test_manifest_hash_catches_a_flipped_byte(bundles, tmp_path):
    import shutil

    from qk_train.checkpoint import sha256_file

    copy = tmp_path / "b"
    shutil.copytree(bundles["fp32"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    assert all(sha256_file(copy / f) == h for f, h in m["files"].items())
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "decoder.onnx").write_bytes(bytes(data))
    assert sha256_file(copy / "decoder.onnx") != m["files"]["decoder.onnx"]


def _tiny_graph(nodes, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_readiness_rejects_asymmetric_qdq_and_unsupported_ops():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q0")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0")
    problems = check_model(_tiny_graph([q, dq], [scale, zp]))
    assert any("q0" in p and "not 0" in p for p in problems) and any("dq0" in p for p in problems)
    odd = helper.make_node("StringNormalizer", ["x"], ["y"], name="weird")
    assert any("weird" in p and "StringNormalizer" in p for p in check_model(_tiny_graph([odd], [])))


def test_bad_arguments_write_nothing(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", str(tiny_checkpoint), "--out", str(out), "--int8", "--opset", "10"]) == 2
    assert "--opset 13" in capsys.readouterr().err
    not_ckpt = tmp_path / "notckpt"
    not_ckpt.mkdir()
    assert main(["--model", str(not_ckpt), "--out", str(out)]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".b.*"))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert main(["--model", str(tiny_checkpoint), "--out", str(user)]) == 2
    assert (user / "notes.txt").read_text() == "keep me"


def test_check_cli_reports_ready(bundles, capsys):
    assert main(["--check", str(bundles["fp32"])]) == 0
    assert "TensorRT readiness: ok" in capsys.readouterr().out
