"""Every graph against its torch module in ONNX Runtime, on inputs the export never saw."""
import json

import numpy as np
import onnx
import pytest
import torch

from qk_export.graphs import model_specs, sample_inputs, wrap
from qk_export.parity import FP32_BOUND, INT8_BOUNDS, INT8_GATE_MEAN_ABS, int8_parity, ort_session
from qk_export.quantize import SENSITIVE, record_trajectories, with_step_condition
from qk_train.models.unified import QKModel


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return QKModel.from_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("batch", [1, 2])
def test_fp32_graphs_match_torch_on_fresh_inputs(bundles, model, batch):
    specs = model_specs(model, region=False)
    for name, spec in specs.items():
        args = sample_inputs(spec, model, torch.Generator().manual_seed(77 + batch), batch=batch)
        with torch.no_grad():
            refs = wrap(model, spec)(*args)
        refs = refs if isinstance(refs, tuple) else (refs,)  # decoder_cond has three outputs
        outs = ort_session(bundles["fp32"] / spec.file).run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
        assert len(outs) == len(refs) == len(spec.outputs)
        for out, ref in zip(outs, refs):
            assert out.shape == tuple(ref.shape)
            assert np.abs(out - ref.numpy()).max() <= FP32_BOUND, name


def test_int8_graphs_are_symmetric_qdq_with_sensitive_layers_in_float(bundles):
    m = json.loads((bundles["int8_region"] / "manifest.json").read_text())
    assert m["precision"] == "int8"
    for name in ("decoder", "decoder_region", "gateway", "cmg", "text_encoder"):
        assert m["graphs"][name]["precision"] == "int8"
        proto = onnx.load(str(bundles["int8_region"] / f"{name}.onnx"))
        nodes = proto.graph.node
        inits = {t.name: t for t in proto.graph.initializer}
        dq_out = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
        quantized = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and any(i in dq_out for i in n.input)]
        assert quantized, name
        for n in nodes:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                zp = onnx.numpy_helper.to_array(inits[n.input[2]])
                assert zp.dtype == np.int8 and not zp.any(), (name, n.name)
        sensitive = [q for q in quantized if any(frag in q for frag in SENSITIVE.get(name, ()))]
        assert not sensitive, (name, sensitive)
    assert m["graphs"]["image_encoder"]["precision"] == "fp32"
    # the per-edit conditioning runs once per edit: float, no Q/DQ at all
    assert m["graphs"]["decoder_cond"]["precision"] == "fp32"
    ops = {n.op_type for n in onnx.load(str(bundles["int8_region"] / "decoder_cond.onnx")).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.usefixtures("one_thread")
def test_int8_graphs_stay_within_their_bound_on_fresh_held_out_steps(bundles, model):
    fresh = record_trajectories(model, "val", 8, first_index=1000)  # val scenes the export did not use
    for graph in ("decoder", "decoder_region"):  # as format-3 steps take them
        fresh.feeds[graph] = [with_step_condition(model, f) for f in fresh.feeds[graph]]
    specs = model_specs(model, region=True)
    for name in ("decoder", "decoder_region", "gateway", "text_encoder"):
        r = int8_parity(wrap(model, specs[name]), specs[name], bundles["int8_region"] / f"{name}.onnx", fresh.feeds[name], "val")
        assert r["mean_abs_over_std"] <= INT8_BOUNDS[name], (name, r)
    r = int8_parity(wrap(model, specs["cmg"]), specs["cmg"], bundles["int8_region"] / "cmg.onnx", fresh.feeds["cmg"], "val")
    assert r["mean_abs"] <= INT8_GATE_MEAN_ABS, r


def test_int8_file_loads_in_onnxruntime_and_openvino(bundles):
    ov = pytest.importorskip("openvino")
    path = bundles["int8_region"] / "decoder.onnx"
    assert ort_session(path).get_inputs()[0].name == "x"
    compiled = ov.Core().compile_model(str(path), "CPU")
    assert compiled.outputs[0].get_any_name() == "velocity"


def test_runtimes_open_weight_only_graphs_without_qdq_fusion(bundles):
    """The weight-only INT8 text encoder is run with ONNX Runtime's Q/DQ fusion off (its weights
    dequantized once at load), the statically quantized decoder with it on (integer GEMMs)."""
    from qk_runtime import EditSession

    def fusion_off(session) -> bool:
        try:
            return session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
        except Exception:  # noqa: BLE001 - onnxruntime raises when the entry was never set
            return False

    with EditSession(bundles["int8_region"], backend="ort-cpu", threads=1) as s:
        assert fusion_off(s.backend._session("text_encoder"))
        assert not fusion_off(s.backend._session("decoder_region")) and not fusion_off(s.backend._session("gateway"))
