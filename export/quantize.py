"""INT8: explicit symmetric Q/DQ (zero point 0, S8 weights per channel, S8 activations), so one
file serves ONNX Runtime and OpenVINO on CPUs and strongly typed TensorRT builds.

Calibration uses real inputs: the reference pipeline runs edits and generations of the
training split, and the inputs every graph receives along those denoising trajectories (all
timesteps) are recorded. Layers known to be sensitive stay in float: the timestep embedding and
adaLN modulation, the input and output projections, the condition-flag embedding; Softmax and
LayerNorm are never quantized (only MatMul/Gemm are, plus the text encoder's embedding table).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from qk_train.data.shapeworld import make_edit, make_generation
from qk_train.models.unified import QKModel
from qk_train.pipeline import Pipeline

from .graphs import WRAPPERS, sample_inputs

# node-name fragments kept in float (names follow the torch module paths)
SENSITIVE = ("t_embed", "/ada", "x_embed", "source_embed", "/final", "flag_embed", "pool_proj")
QUANT_OPS = {"default": ["MatMul", "Gemm"], "text_encoder": ["MatMul", "Gemm", "Gather"]}
INT8_BOUND = 0.15  # mean abs error of an INT8 graph vs torch, relative to the output's std (qk-eval judges quality)


def record_calibration(model: QKModel, samples: int, steps: int = 8) -> dict[str, list[dict[str, np.ndarray]]]:
    """Graph inputs seen along real denoising trajectories of training-split samples."""
    records: dict[str, list] = {"decoder": [], "gateway": [], "cmg": []}

    def hook(name, keys, picks=None):
        def pre(module, args):
            values = [args[i] for i in picks] if picks else list(args)
            if any(v is None for v in values):
                return
            records[name].append({k: v.detach().numpy().copy() for k, v in zip(keys, values)})
        return pre

    dec_keys = ["x", "sigma", "text", "text_mask"] + (["kontext"] if model.gateway is not None else []) + ["source", "region", "gate_map", "flags"]
    dec_picks = [0, 1, 2, 3] + ([4] if model.gateway is not None else []) + [5, 6, 7, 8]
    handles = [model.decoder.register_forward_pre_hook(hook("decoder", dec_keys, dec_picks))]
    if model.gateway is not None:
        handles.append(model.gateway.register_forward_pre_hook(hook("gateway", ["text", "text_mask", "source", "region", "flags"])))
    if model.cmg is not None and model.gateway is not None:
        handles.append(model.cmg.register_forward_pre_hook(hook("cmg", ["kontext", "source", "region"], [0, 2, 3])))
    pipe = Pipeline(model, steps=steps)
    side = model.cfg.data.image_size
    texts = []
    runs = max(1, samples // steps)
    try:
        for i in range(runs):
            if i % 4 == 3:
                _, caption, _ = make_generation("train", 500_000 + i, side)
                pipe.generate(caption, seed=i)
                texts.append(caption)
            else:
                s = make_edit("train", 500_000 + i, side)
                pipe.edit(s.source, s.instruction, s.box if i % 2 else None, seed=i)
                texts.append(s.instruction)
    finally:
        for h in handles:
            h.remove()
    ids, mask = model.embedder.tokenize(texts + [""])
    records["text_encoder"] = [{"input_ids": ids[i:i + 1].numpy(), "attention_mask": mask[i:i + 1].numpy()} for i in range(len(texts) + 1)]
    return records


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], op_types: list[str], exclude: tuple[str, ...]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    names = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node]
    excluded = [n for n in names if any(frag in n for frag in exclude)]
    quantize_static(
        str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=op_types, nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    pre.unlink()


def int8_parity(module, spec, path: Path, model: QKModel, seed: int, feeds: list[dict] | None) -> dict:
    """INT8 graph vs torch, on recorded real inputs when there are some (random ones otherwise)."""
    from .bundle import ort_session

    if feeds:
        feed = feeds[len(feeds) // 2]
        args = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
    else:
        args = sample_inputs(spec, model, torch.Generator().manual_seed(seed))
        feed = {t.name: a.numpy() for t, a in zip(spec.inputs, args)}
    with torch.no_grad():
        ref = module(*args).numpy()
    out = ort_session(path).run(None, feed)[0]
    err = np.abs(out - ref)
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "max_rel": float(err.max() / max(1e-12, float(np.abs(ref).max()))),
            # relative to the output's spread (at least 0.2: a near-constant output, like an untrained gate, has none)
            "mean_abs_over_std": float(err.mean() / max(0.2, float(ref.std()))),
            "inputs": "recorded calibration trajectory" if feeds else f"random, seed {seed}"}


def quantize_bundle(model: QKModel, specs: dict, build: Path, report: dict, precision: dict, calib_samples: int,
                    progress: bool = False, exclude: tuple[str, ...] = SENSITIVE) -> tuple[dict, dict]:
    records = record_calibration(model, calib_samples)
    if "decoder_region" in specs and records["decoder"]:
        n = specs["decoder_region"].axis_ranges[1][1][2]
        records["decoder_region"] = [{**f, "active": np.tile(np.arange(n, dtype=np.int64), (f["x"].shape[0], 1))} for f in records["decoder"]]
    for name in ("text_encoder", "gateway", "cmg", "decoder", "decoder_region"):
        if name not in specs or not records.get(name):
            continue
        spec = specs[name]
        path = build / spec.file
        fp32 = path.with_suffix(".fp32.onnx")
        path.rename(fp32)
        quantize_graph(fp32, path, records[name], QUANT_OPS.get(name, QUANT_OPS["default"]), exclude)
        fp32.unlink()
        module = WRAPPERS[name](model).eval()
        r = int8_parity(module, spec, path, model, 3000, records[name])
        r["fp32"] = report[name]
        if r["mean_abs_over_std"] > INT8_BOUND:
            from .bundle import ExportError

            raise ExportError(f"INT8 {name}: mean abs error is {r['mean_abs_over_std']:.3f} of the output's std, over the bound {INT8_BOUND}")
        report[name] = r
        precision[name] = "int8"
        if progress:
            print(f"quantized {name}: mean abs error {r['mean_abs']:.2e} ({r['mean_abs_over_std']:.3f} of std)", file=sys.stderr)
    return report, precision
