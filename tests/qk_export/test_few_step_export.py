"""Export of a model with step-size conditioning (few-step sampling): bundle format 5, the
decoders' `step_size` input, the manifest's `few_step`; models without it stay format 4."""
import json

import numpy as np
import onnx
import pytest
import torch

from qk_export.bundle import ExportError, export_bundle
from qk_export.graphs import model_specs, wrap
from qk_export.parity import FP32_BOUND, ort_session, random_feed, run_both
from qk_runtime.bundle import open_bundle
from qk_runtime.contract import FEW_STEP_FIELDS
from qk_train.models.unified import QKModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(path) -> list[str]:
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def test_the_bundle_is_format_5_with_step_size_and_few_step(few_step_bundle):
    m = json.loads((few_step_bundle / "manifest.json").read_text())
    assert m["format_version"] == 5
    assert m["few_step"] == {"steps": [1, 2, 4], **FEW_STEP_FIELDS}
    assert m["model_config"]["decoder"]["step_size_cond"] is True
    for graph in ("decoder", "decoder_region"):
        spec = m["graphs"][graph]
        names = [t["name"] for t in spec["inputs"]]
        assert names[:3] == ["x", "sigma", "step_size"], names
        assert {"name": "step_size", "dtype": "float32", "shape": ["batch"]} in spec["inputs"]
        assert spec["profile"]["step_size"] == {"min": [1], "opt": [3], "max": [3]}
        assert "step_size" in _inputs(few_step_bundle / spec["file"])  # in the ONNX graph itself, not only the manifest
        assert m["parity"][graph]["max_abs"] <= FP32_BOUND
    for graph in ("decoder_cond", "gateway", "cmg", "text_encoder"):
        assert "step_size" not in _inputs(few_step_bundle / m["graphs"][graph]["file"])
    assert open_bundle(few_step_bundle).few_step.steps == (1, 2, 4)


@pytest.mark.parametrize("graph", ["decoder", "decoder_region"])
def test_the_exported_step_follows_torch_at_every_step_size(few_step_bundle, few_step_checkpoint, graph):
    model = QKModel.from_checkpoint(few_step_checkpoint)
    spec = model_specs(model, region=True)[graph]
    session = ort_session(few_step_bundle / f"{graph}.onnx")
    module = wrap(model, spec)
    feed = random_feed(spec, model, seed=7)
    outs = {}
    for d in (0.0, 1 / 64, 0.25, 1.0):
        feed["step_size"] = np.full_like(feed["step_size"], d)
        out, ref = run_both(module, spec, session, feed)
        assert np.abs(out - ref).max() <= FP32_BOUND, d
        outs[d] = out
    # the step size reaches the output (the fine-tuned embedding is not zero)
    assert np.abs(outs[1.0] - outs[0.0]).max() > 1e-4
    assert np.abs(outs[0.25] - outs[0.0]).max() > 1e-4


def test_a_plain_model_keeps_format_4_without_step_size(fp32_bundle, region_bundle):
    for bundle in (fp32_bundle, region_bundle):
        m = json.loads((bundle / "manifest.json").read_text())
        assert m["format_version"] == 4 and "few_step" not in m
        assert "step_size_cond" in m["model_config"]["decoder"] and not m["model_config"]["decoder"]["step_size_cond"]
        for graph in ("decoder", "decoder_region"):
            if graph in m["graphs"]:
                assert "step_size" not in [t["name"] for t in m["graphs"][graph]["inputs"]]
                assert "step_size" not in _inputs(bundle / m["graphs"][graph]["file"])
        assert open_bundle(bundle).few_step is None


def test_a_format_without_step_size_is_refused_for_a_few_step_model(few_step_checkpoint, tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="written as format 5; leave format_version out"):
        export_bundle(few_step_checkpoint, tmp_path / "old", format_version=4)
    with pytest.raises(ExportError, match="without step-size conditioning .* written as format 4"):
        export_bundle(tiny_checkpoint, tmp_path / "new", format_version=5)
    assert not (tmp_path / "old").exists() and not (tmp_path / "new").exists()


def test_the_wrappers_feed_step_size_to_the_dit(few_step_checkpoint):
    """The graph wrapper passes step_size through: the same inputs with another step size give
    another velocity, and step size 0 gives the DiT's own d = 0 call."""
    model = QKModel.from_checkpoint(few_step_checkpoint)
    spec = model_specs(model, region=False)["decoder"]
    module = wrap(model, spec)
    feed = {k: torch.from_numpy(v) for k, v in random_feed(spec, model, seed=3).items()}
    with torch.no_grad():
        zero = module(*(torch.zeros_like(feed[t.name]) if t.name == "step_size" else feed[t.name] for t in spec.inputs))
        half = module(*(torch.full_like(feed[t.name], 0.5) if t.name == "step_size" else feed[t.name] for t in spec.inputs))
        cond = (feed["cond_kv"], feed["cond_bias"], feed["cond_emb"])
        dit = model.decoder(feed["x"], feed["sigma"], None, None, None, feed["source"], feed["region"], feed["gate_map"],
                            None, cond=cond, step_size=None)
    gated = QKModel.gated_velocity(dit, feed["x"], feed["source"], feed["sigma"], feed["gate_map"])
    assert torch.equal(zero, gated)
    assert (half - zero).abs().max() > 1e-4
