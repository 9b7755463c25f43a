"""Parity of an exported graph with its torch module, run in ONNX Runtime on the CPU.

Errors are reported as `max_abs`, `mean_abs` and `max_rel` = max |onnx - torch| / max |torch|
(relative to the output's scale, so that near-zero elements do not blow it up). FP32 graphs
are compared on fresh random inputs (`graphs.sample_inputs`); INT8 graphs on real inputs held
out from calibration (see `quantize.py`), where the error is also given relative to the spread
of what the network predicts: for the decoder steps only the elements the gate lets the DiT
write (gate_map > 0), elsewhere the output is the float back-to-source path in both; for the
text encoder only real tokens (attention_mask = 1), padding is masked out downstream.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from qk_runtime.contract import WEIGHT_ONLY_INT8_GRAPHS, GraphSpec
from qk_train.models.unified import QKModel

from .graphs import sample_inputs

FP32_BOUND = 1e-4  # max abs error of the FP32 decoder step(s) against torch
FP32_CHECKED = ("decoder", "decoder_region")
# INT8: mean abs error over the predicted elements <= this share of their standard deviation.
# The denoising step is the bound that matters (its error integrates into the image); the
# conditioning encoders' outputs pass through further layers and get a looser one (the tiny
# width-32 test model's gateway sits at 8 %, the small preset's at 2 %).
INT8_BOUNDS = {"decoder": 0.05, "decoder_region": 0.05, "gateway": 0.10, "text_encoder": 0.10}
# the CMG's output is a probability (thresholded at 0.5 by the runtime): its INT8 error is bounded
# in probability units; `gate_flips` (tokens that land on the other side of 0.5) is reported
INT8_GATE_MEAN_ABS = 0.02
# FP16 (`qk-export --fp16`): every graph's mean abs error against torch FP32 <= this share of the
# output's standard deviation, on the FP32 check's random inputs (the shipped checkpoint's graphs
# sit at 1e-4 to 1e-3 of it with the default float groups: benchmarks/results/cpu-2core/fp16_groups.md)
FP16_BOUND = 0.01


class ParityError(ValueError):
    """An exported graph that does not match its torch module within the stated bound."""


def ort_session(path: Path, threads: int = 0, weight_only: bool = False) -> ort.InferenceSession:
    """A CPU session; `weight_only`: as the runtimes open weight-only INT8 graphs (Q/DQ fusion off,
    `qk_runtime.bundle.Bundle.weight_only`)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if weight_only:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def errors(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "max_rel": float(err.max() / max(1e-12, float(np.abs(ref).max())))}


def run_both(module: torch.nn.Module, spec: GraphSpec, session: ort.InferenceSession,
             feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The graph's output from ONNX Runtime and from torch; a graph with several outputs
    (decoder_cond) gives them flattened and concatenated in the contract's order."""
    args = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
    with torch.no_grad():
        refs = module(*args)
    refs = [r.numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
    outs = session.run([t.name for t in spec.outputs], feed)
    if len(outs) == 1:
        return outs[0], refs[0]
    return np.concatenate([o.ravel() for o in outs]), np.concatenate([r.ravel() for r in refs])


def random_feed(spec: GraphSpec, model: QKModel, seed: int, text_tokens: int | None = None) -> dict[str, np.ndarray]:
    args = sample_inputs(spec, model, torch.Generator().manual_seed(seed), text_tokens=text_tokens)
    return {t.name: a.numpy() for t, a in zip(spec.inputs, args)}


def fp32_parity(module: torch.nn.Module, spec: GraphSpec, path: Path, model: QKModel, seed: int) -> dict:
    """Errors of an FP32 graph against torch on fresh random inputs (batch: the profile's max)."""
    feed = random_feed(spec, model, seed)
    session = ort_session(path)
    out, ref = run_both(module, spec, session, feed)
    batch = next(iter(feed.values())).shape[0]
    report = {**errors(out, ref), "inputs": f"random seed {seed}, batch {batch}"}
    ranges = dict(spec.axis_ranges)
    if "text_tokens" in ranges:  # a dynamic token axis: check a shorter run too (the runtimes trim to the text)
        n = ranges["text_tokens"][1]
        out, ref = run_both(module, spec, session, random_feed(spec, model, seed + 1, text_tokens=n))
        short = errors(out, ref)
        report = {k: max(report[k], short[k]) for k in short} | {"inputs": f"{report['inputs']}; and {n} tokens"}
    return report


def check_fp32(report: dict[str, dict]) -> None:
    for name in FP32_CHECKED:
        if name in report and report[name]["max_abs"] > FP32_BOUND:
            raise ParityError(
                f"FP32 {name}.onnx differs from the torch module by {report[name]['max_abs']:.3g} (max abs) on "
                f"{report[name]['inputs']}, over the bound {FP32_BOUND}; the export is wrong: check the opset and "
                f"the exporter's warnings"
            )


class ReferenceSession:
    """onnx's reference evaluator behind `session.run`'s signature: numpy runs every node in the
    graph's own types, so float16 nodes round every result to float16 as GPU kernels do."""

    def __init__(self, path: Path):
        from onnx.reference import ReferenceEvaluator
        from onnx.reference.op_run import OpRun

        class GatherElements(OpRun):  # the evaluator's own uses np.choose, limited to 64 choices
            def _run(self, data, indices, axis=None):
                axis = axis or 0
                return (np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis=axis),)

        self.evaluator = ReferenceEvaluator(str(path), new_ops=[GatherElements])

    def run(self, names, feed):
        return [np.asarray(o, np.float32) for o in self.evaluator.run(names, feed)]


def _over_std(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """The largest, over a graph's outputs, of mean abs error / the torch output's std."""
    return max(float(np.abs(o.astype(np.float64) - r).mean() / max(float(r.std()), 1e-12)) for o, r in zip(outs, refs))


def fp16_parity(module: torch.nn.Module, spec: GraphSpec, path: Path, model: QKModel, seed: int) -> dict:
    """Errors of an FP16 graph (float32 inputs and outputs) against the FP32 torch module on the
    FP32 check's random inputs, run in ONNX Runtime's CPU provider, with `mean_abs_over_std` (mean
    abs error over the torch output's standard deviation). ONNX Runtime's CPU provider has float16
    kernels for few ops: it runs the others in float32 behind casts it inserts, and drops the
    casts between them, so its figures understate a GPU's error. `half_arithmetic` holds the same
    figures from onnx's reference evaluator (numpy in the graph's types: every float16 node's
    result rounded to float16); the bound applies to the larger of the two."""
    feed = random_feed(spec, model, seed)
    with torch.no_grad():
        refs = module(*(torch.from_numpy(feed[t.name]) for t in spec.inputs))
    refs = [r.numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
    names = [t.name for t in spec.outputs]
    outs = ort_session(path).run(names, feed)
    halves = ReferenceSession(path).run(names, feed)
    flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])  # noqa: E731
    report = {**errors(flat(outs), flat(refs)), "inputs": f"random seed {seed}, batch {next(iter(feed.values())).shape[0]}",
              "runtime": "onnxruntime CPUExecutionProvider", "mean_abs_over_std": _over_std(outs, refs),
              "half_arithmetic": {**errors(flat(halves), flat(refs)),
                                  "runtime": "onnx.reference.ReferenceEvaluator (numpy float16)",
                                  "mean_abs_over_std": _over_std(halves, refs)},
              "bound": f"mean_abs_over_std <= {FP16_BOUND} for each output, in both runtimes"}
    return report


def fp16_problem(name: str, report: dict, bound: float = FP16_BOUND) -> str | None:
    """Why an FP16 graph misses its bound (None when it is within)."""
    worst = max(report["mean_abs_over_std"], report["half_arithmetic"]["mean_abs_over_std"])
    if worst > bound:
        return (f"FP16 {name}: mean abs error is {worst:.2e} of the output's standard deviation "
                f"(bound {bound}); keep more of it in float32 (--fp16-float)")
    return None


def predicted_mask(spec: GraphSpec, feed: dict[str, np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    """Elements of the output the network writes (not the float back-to-source path)."""
    if "gate_map" in feed:
        return np.broadcast_to(feed["gate_map"] > 0, out_shape)
    if "attention_mask" in feed:  # the text encoder: padding positions are masked out downstream
        return np.broadcast_to(feed["attention_mask"][..., None] > 0, out_shape)
    return np.ones(out_shape, bool)


def int8_parity(module: torch.nn.Module, spec: GraphSpec, path: Path, feeds: list[dict[str, np.ndarray]],
                source: str, weight_only: bool | None = None) -> dict:
    """Errors of an INT8 graph against the FP32 torch module over several real feeds, run as the
    runtimes run it: a weight-only graph with Q/DQ fusion off (`weight_only`; None: as every
    INT8 export stores it, `qk_runtime.contract.WEIGHT_ONLY_INT8_GRAPHS`)."""
    if weight_only is None:
        weight_only = spec.name in WEIGHT_ONLY_INT8_GRAPHS
    session = ort_session(path, weight_only=weight_only)
    outs, refs, masks = [], [], []
    for feed in feeds:
        out, ref = run_both(module, spec, session, feed)
        outs.append(out.ravel())
        refs.append(ref.ravel())
        masks.append(predicted_mask(spec, feed, ref.shape).ravel())
    out, ref, mask = np.concatenate(outs), np.concatenate(refs), np.concatenate(masks)
    report = {**errors(out, ref), "inputs": f"{len(feeds)} {source}", "qdq_fusion": not weight_only}
    if mask.any():
        err = np.abs(out[mask].astype(np.float64) - ref[mask])
        std = float(ref[mask].std())
        report["predicted_mean_abs"] = float(err.mean())
        report["predicted_std"] = std
        report["mean_abs_over_std"] = float(err.mean() / max(std, 1e-12))
    if spec.name == "cmg":
        report["gate_flips"] = float(((out > 0.5) != (ref > 0.5)).mean())
    return report


def int8_problem(name: str, report: dict) -> str | None:
    """Why an INT8 graph misses its bound (None when it is within). Records the bound."""
    if name == "cmg":  # a probability: bounded in probability units
        report["bound"] = f"mean_abs <= {INT8_GATE_MEAN_ABS}"
        if report["mean_abs"] > INT8_GATE_MEAN_ABS:
            return (f"INT8 cmg: mean abs error of the gate probability is {report['mean_abs']:.3f} "
                    f"(bound {INT8_GATE_MEAN_ABS}); keep more of the CMG in float")
        return None
    ratio, bound = report.get("mean_abs_over_std", 0.0), INT8_BOUNDS.get(name, 0.05)
    report["bound"] = f"mean_abs_over_std <= {bound}"
    if ratio > bound:
        return (f"INT8 {name}: mean abs error is {ratio:.3f} of the output's standard deviation "
                f"(bound {bound}); keep more layers in float or calibrate on more samples")
    return None
