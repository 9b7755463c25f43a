"""INT8 graphs: ONNX Runtime runs every quantized MatMul as an integer GEMM, and its result is
what the Q/DQ arithmetic says (no int16 saturation on CPUs without VNNI); the shared text encoder."""
import collections
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qk_export.bundle import ExportError, export_bundle
from qk_export.quantize import FLOAT_GROUPS, _quantize_weight, attention_matmuls, float_layers, quantize_graph, weight_levels
from qk_runtime import EditSession


def _feeds(session, rng, batch=3):
    feeds = {}
    for i in session.get_inputs():
        shape = [batch if isinstance(d, str) and k == 0 else (d if isinstance(d, int) else 8) for k, d in enumerate(i.shape)]
        if i.type == "tensor(int64)":
            feeds[i.name] = np.tile(np.arange(shape[1], dtype=np.int64), (shape[0], 1))
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    if "sigma" in feeds:
        feeds["sigma"] = np.abs(feeds["sigma"]) + 0.1
    return feeds


def _optimized_ops(path, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    return collections.Counter(n.op_type for n in optimized.graph.node)


def test_every_quantized_matmul_becomes_an_integer_gemm_in_onnx_runtime(bundles, tmp_path):
    path = bundles["int8_region"] / "decoder.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    producers = {o: n for n in proto.graph.node for o in n.output}
    quantized = [n for n in proto.graph.node if n.op_type == "MatMul" and producers.get(n.input[0]) is not None
                 and producers[n.input[0]].op_type == "DequantizeLinear"]
    assert quantized
    consumers = collections.Counter(i for n in proto.graph.node for i in n.input)
    for n in quantized:  # one Q/DQ pair per consumer: ONNX Runtime fuses only those
        dq = producers[n.input[0]]
        assert consumers[dq.output[0]] == 1 and consumers[dq.input[0]] == 1, n.name
    ops = _optimized_ops(path, tmp_path)
    assert ops["MatMulIntegerToFloat"] == len(quantized), ops


def test_onnx_runtime_int8_matches_the_qdq_arithmetic(bundles):
    """Fused integer kernels against the same graph run op by op in float (the Q/DQ arithmetic):
    7-bit weights keep x86 CPUs without VNNI from saturating int16 sums."""
    rng = np.random.default_rng(0)
    for graph in ("gateway", "decoder"):
        path = str(bundles["int8_region"] / f"{graph}.onnx")
        plain = ort.SessionOptions()
        plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        fused = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        reference = ort.InferenceSession(path, plain, providers=["CPUExecutionProvider"])
        feeds = _feeds(fused, rng)
        a, b = fused.run(None, feeds)[0], reference.run(None, feeds)[0]
        assert np.abs(a - b).mean() <= 0.01 * b.std(), (graph, np.abs(a - b).mean(), b.std())


def test_weights_stay_symmetric_within_their_bit_range():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    for bits, levels in ((7, 63), (8, 127)):
        q, scale = _quantize_weight(w, 1, weight_levels(bits))
        assert q.dtype == np.int8 and np.abs(q).max() == levels and scale.shape == (8,)
        np.testing.assert_allclose(q * scale, w, atol=scale.max() / 2 + 1e-7)
    with pytest.raises(ValueError, match="use 8"):
        weight_levels(4)


def test_fp32_bundle_can_share_the_int8_text_encoder(bundles, tiny_checkpoint, tmp_path):
    int8 = tmp_path / "int8"
    shutil.copytree(bundles["int8_region"], int8)
    fp32 = export_bundle(tiny_checkpoint, tmp_path / "fp32", text_encoder_from=int8)
    manifest = json.loads((fp32 / "manifest.json").read_text())
    te = manifest["graphs"]["text_encoder"]
    assert te["file"] == "../int8/text_encoder.onnx" and te["precision"] == "int8"
    assert not (fp32 / "text_encoder.onnx").exists() and te["file"] in manifest["files"]
    image = np.full((32, 32, 3), 200, np.uint8)
    with EditSession(fp32, backend="ort-cpu") as s:
        r = s.edit(image, "make the red circle blue", box=(2, 2, 20, 20), steps=2)
    assert r.image.shape == (32, 32, 3)
    (int8 / "text_encoder.onnx").write_bytes(b"changed")  # the shared file is hashed like its own
    with pytest.raises(Exception, match="sha256"):
        EditSession(fp32, backend="ort-cpu")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(tiny_checkpoint, tmp_path / "fp32b", text_encoder_from=tmp_path / "nowhere")
    assert not (tmp_path / "fp32b").exists()


def test_region_bundle_stores_the_decoder_weights_once(bundles):
    folder = bundles["int8_region"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "decoder.weights" in manifest["files"]
    spans = {}
    for graph in ("decoder", "decoder_region"):
        assert manifest["graphs"][graph]["external_data"] == "decoder.weights"
        proto = onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False)
        ext = [dict((e.key, e.value) for e in t.external_data) for t in proto.graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL]
        assert ext and all(e["location"] == "decoder.weights" for e in ext)
        spans[graph] = {(int(e["offset"]), int(e["length"])) for e in ext}
    assert spans["decoder"] <= spans["decoder_region"]  # every dense weight is shared, none copied
    size = (folder / "decoder.weights").stat().st_size
    assert size < 1.1 * sum(n for _, n in spans["decoder_region"])


def _dq_fed(proto):
    dq_out = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: [i in dq_out for i in n.input[:2]] for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")}


def test_float_groups_choose_what_stays_float(bundles, tmp_path):
    """`--int8-float none` quantizes the adaLN, input/output projections and the attention products
    (both inputs) that the default keeps float; the Q/DQ stays symmetric and ONNX Runtime runs it."""
    assert float_layers(("adaln", "io", "attention")) == float_layers(("attention", "io", "adaln"))
    with pytest.raises(ValueError, match="unknown INT8 float group"):
        float_layers(("adaln", "bias"))
    fp32 = bundles["fp32"] / "decoder.onnx"
    proto = onnx.load(str(fp32))
    products = attention_matmuls(proto)
    assert products
    rng = np.random.default_rng(1)
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    feeds = [_feeds(sess, rng, batch=2) for _ in range(2)]
    default_frags, default_attention = float_layers(("adaln", "io", "attention"))
    kept = quantize_graph(fp32, tmp_path / "default.onnx", feeds, ("MatMul", "Gemm"), default_frags["decoder"],
                          exclude_attention=default_attention)
    assert set(products) <= set(kept) and any("/ada/" in k for k in kept) and any("/final/" in k for k in kept)
    none_frags, none_attention = float_layers(())
    kept_none = quantize_graph(fp32, tmp_path / "none.onnx", feeds, ("MatMul", "Gemm"), none_frags.get("decoder", ()),
                               exclude_attention=none_attention)
    assert not set(products) & set(kept_none)
    fed = _dq_fed(onnx.load(str(tmp_path / "none.onnx")))
    assert all(fed[p] == [True, True] for p in products)  # both activations of every attention product
    named = [n for n in fed if any(f in n for f in FLOAT_GROUPS["adaln"]["decoder"] + FLOAT_GROUPS["io"]["decoder"])]
    assert any("/ada/" in n for n in named) and any("/final/" in n for n in named)
    assert all(fed[n][0] for n in named), [n for n in named if not fed[n][0]]
    out = ort.InferenceSession(str(tmp_path / "none.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    ref = sess.run(None, feeds[0])[0]
    assert np.abs(out - ref).mean() < 0.1 * ref.std()  # calibrated on these very inputs: close, not equal
    assert np.abs(out - ref).max() > 0


STORED_GRAPHS = ("gateway", "cmg", "decoder", "decoder_region")  # static INT8 by default, weight-only on request


def test_weight_only_bundle_has_int8_weights_and_no_activation_quantizer(bundles, weight_only_bundle):
    """`--int8 --weight-only`: gateway, cmg and both decoders hold full-range int8 weights behind
    DequantizeLinear for the very layers static INT8 quantizes, and no QuantizeLinear at all; the
    manifest lists every quantized graph as weight-only, and nothing was calibrated."""
    m = json.loads((weight_only_bundle / "manifest.json").read_text())
    q = m["quantization"]
    assert q["weight_only"] == ["text_encoder", *STORED_GRAPHS]
    assert all(q["graphs"][g].startswith("weight-only: ") for g in q["weight_only"]) and q["calibration"] is None
    static = json.loads((bundles["int8_region"] / "manifest.json").read_text())["quantization"]
    assert static["weight_only"] == ["text_encoder"]  # the default keeps the others static
    for name in STORED_GRAPHS:
        assert m["graphs"][name]["precision"] == "int8" and m["parity"][name]["qdq_fusion"] is False
        proto = onnx.load(str(weight_only_bundle / f"{name}.onnx"))
        ops = collections.Counter(n.op_type for n in proto.graph.node)
        assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] > 0, (name, ops)
        inits = {t.name: t for t in proto.graph.initializer}
        for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear"):
            q8 = onnx.numpy_helper.to_array(inits[dq.input[0]])  # a stored int8 weight, never an activation
            assert q8.dtype == np.int8 and q8.ndim == 2 and np.abs(q8).max() == 127, (name, dq.name)
        fed = _dq_fed(proto)
        assert not any(a for a, _ in fed.values()), name  # no activation input dequantized
        static_fed = _dq_fed(onnx.load(str(bundles["int8_region"] / f"{name}.onnx")))
        assert {n for n, (_, w) in fed.items() if w} == {n for n, (_, w) in static_fed.items() if w}, name
