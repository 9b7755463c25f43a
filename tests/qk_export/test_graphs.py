"""The sparse graphs: `region` keeps every inactive token on the source path, `window` really
attends in windows."""
import json

import numpy as np
import onnx
import pytest
import torch

from qk_export.graphs import model_dims, model_specs, sample_inputs, wrap
from qk_export.parity import FP32_BOUND, ort_session
from qk_train.models.unified import QKModel


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return QKModel.from_checkpoint(tiny_checkpoint)


def _token_mask(active: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """(B, M) token indices -> (B, 1, grid*patch, grid*patch) True on active tokens' latent pixels."""
    B = active.shape[0]
    tok = np.zeros((B, grid * grid), bool)
    np.put_along_axis(tok, active, True, axis=1)
    return tok.reshape(B, 1, grid, 1, grid, 1).repeat(patch, 3).repeat(patch, 5).reshape(B, 1, grid * patch, grid * patch)


@pytest.mark.parametrize("where", ["torch", "onnx_int8"])
def test_region_step_leaves_every_inactive_token_on_the_source_path(where, model, bundles):
    spec = model_specs(model, region=True)["decoder_region"]
    feed = {t.name: a.numpy() for t, a in zip(spec.inputs, sample_inputs(spec, model, torch.Generator().manual_seed(5), batch=3, active=4))}
    if where == "torch":
        with torch.no_grad():
            v = wrap(model, spec)(*(torch.from_numpy(feed[t.name]) for t in spec.inputs)).numpy()
    else:
        (v,) = ort_session(bundles["int8_region"] / spec.file).run(None, feed)
    d = model_dims(model)
    x, source, sigma, gate = feed["x"], feed["source"], feed["sigma"], feed["gate_map"]
    back = (x - source) / np.maximum(sigma, np.float32(1e-3))[:, None, None, None]
    active = np.broadcast_to(_token_mask(feed["active"], d.grid, d.patch), x.shape)
    assert np.array_equal(v[~active], back[~active])  # bit for bit
    ran = active & np.broadcast_to(gate > 0, x.shape)
    assert ran.any() and np.abs(v[ran] - back[ran]).max() > 1e-3  # the active tokens did run the DiT


def test_region_graph_scatters_in_the_graph(bundles):
    ops = {n.op_type for n in onnx.load(str(bundles["int8_region"] / "decoder_region.onnx")).graph.node}
    assert ops & {"ScatterElements", "ScatterND"} and ops & {"Gather", "GatherElements"}


def test_window_decoder_attends_in_windows_and_matches_its_torch_module(bundles, tiny_checkpoint):
    m = json.loads((bundles["window"] / "manifest.json").read_text())
    w = m["window"]
    grid = model_dims(QKModel.from_checkpoint(tiny_checkpoint)).grid
    assert w == grid // 2 and m["parity"]["decoder"]["max_abs"] <= FP32_BOUND
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(bundles["window"] / "decoder.onnx")))
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    scores = [n.output[0] for n in proto.graph.node if n.name == "/decoder/blocks.0/attn/MatMul"]
    assert scores and shapes[scores[0]][-2:] == [w * w, w * w]  # (B*windows, H, w*w, w*w), not (N, N)

    windowed = QKModel.from_checkpoint(tiny_checkpoint)
    windowed.cfg = windowed.cfg.replace(decoder={"attn_window": w})
    windowed.decoder.cfg = windowed.cfg.decoder
    dense = QKModel.from_checkpoint(tiny_checkpoint)
    spec = model_specs(dense, region=False)["decoder"]
    args = sample_inputs(spec, dense, torch.Generator().manual_seed(9), batch=2)
    args[[t.name for t in spec.inputs].index("gate_map")].fill_(1.0)  # the DiT's velocity everywhere
    (out,) = ort_session(bundles["window"] / "decoder.onnx").run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
    with torch.no_grad():
        ref_w, ref_d = wrap(windowed, spec)(*args).numpy(), wrap(dense, spec)(*args).numpy()
    assert np.abs(out - ref_w).max() <= FP32_BOUND
    assert np.abs(out - ref_d).max() > 1e-4  # an approximation of dense attention, not a no-op
