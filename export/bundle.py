"""Write a bundle: the ONNX graphs of a checkpoint, its tokenizer and `manifest.json`.

Every graph is exported with the legacy TorchScript exporter (`dynamo=False`: on torch 2.13 it
gives plain MatMul/Softmax graphs with a dynamic batch and 1e-7 parity on the DiT), checked with
`onnx.checker` and shape inference, and compared with its torch module on fresh random inputs in
ONNX Runtime; the errors go into the manifest. The bundle is built in a temporary folder beside
the target and renamed into place only when everything passed.
"""
from __future__ import annotations

import datetime
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qk_runtime.contract import FORMAT_VERSION, MANIFEST, TOKENIZER
from qk_train import checkpoint as ckpt
from qk_train.models.unified import QKModel
from qk_train.pipeline import BUCKET_FRACTIONS, Pipeline

from .graphs import WRAPPERS, model_dims, model_specs, sample_inputs
from .trt_check import check_bundle

FP32_DECODER_BOUND = 1e-4  # max abs error of the decoder graph against torch
EXTERNAL_DATA_BYTES = 1_800_000_000  # above this a graph's weights go to a side file (protobuf's 2 GB)
SPARSE_MODES = ("none", "window", "region")


class ExportError(ValueError):
    """An export that cannot be done; nothing was written."""


def load_model(checkpoint: Path, sparse_attn: str, window: int | None) -> QKModel:
    model = QKModel.from_checkpoint(checkpoint)
    if sparse_attn == "window":
        grid = model_dims(model).grid
        w = window or max(1, grid // 2)
        if grid % w:
            raise ExportError(f"--window {w} must divide the token grid side {grid}")
        model.decoder.cfg = model.cfg.replace(decoder={"attn_window": w}).decoder
    return model.eval()


def _save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    if proto.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(proto, str(path))


def export_graph(module: torch.nn.Module, spec, args: tuple, path: Path, opset: int) -> None:
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    tmp = path.with_suffix(".raw.onnx")
    with torch.no_grad():
        torch.onnx.export(module, args, str(tmp), input_names=names_in, output_names=names_out,
                          dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    _save_onnx(proto, path)


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(module, spec, path: Path, model: QKModel, seed: int) -> dict:
    """Max abs / relative error of the ONNX graph against torch on fresh random inputs."""
    gen = torch.Generator().manual_seed(seed)
    args = sample_inputs(spec, model, gen)
    with torch.no_grad():
        ref = module(*args).numpy()
    out = ort_session(path).run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})[0]
    err = np.abs(out - ref)
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "max_rel": float(err.max() / max(1e-12, float(np.abs(ref).max()))), "inputs": f"random, seed {seed}"}


def export_bundle(checkpoint: str | Path, out: str | Path, *, int8: bool = False, sparse_attn: str = "none",
                  opset: int = 17, calib_samples: int = 64, window: int | None = None, command: str | None = None,
                  progress: bool = False) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    if sparse_attn not in SPARSE_MODES:
        raise ExportError(f"--sparse-attn {sparse_attn!r}; choose one of {list(SPARSE_MODES)}")
    if int8 and opset < 13:
        raise ExportError(f"--int8 needs --opset 13 or newer (per-channel QuantizeLinear); got {opset}")
    if not (9 <= opset <= 20):
        raise ExportError(f"--opset {opset}: use 13..20 (TensorRT 10 reads opsets 9 to 20)")
    if out.exists() and not (out / MANIFEST).exists():
        if not out.is_dir() or any(out.iterdir()):
            raise ExportError(f"{out} exists and is not a bundle; choose a new --out (nothing there is touched)")
    try:
        model = load_model(checkpoint, sparse_attn, window)
    except ckpt.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    specs = model_specs(model, region=sparse_attn == "region")
    build = ckpt.new_build_dir(out)
    try:
        report, precision = {}, {}
        for i, (name, spec) in enumerate(specs.items()):
            module = WRAPPERS[name](model).eval()
            args = sample_inputs(spec, model, torch.Generator().manual_seed(1000 + i))
            path = build / spec.file
            export_graph(module, spec, args, path, opset)
            report[name] = parity(module, spec, path, model, seed=2000 + i)
            precision[name] = "fp32"
            if progress:
                print(f"exported {name}: max abs error {report[name]['max_abs']:.2e}", file=sys.stderr)
        for name in ("decoder", "decoder_region"):
            if name in report and report[name]["max_abs"] > FP32_DECODER_BOUND:
                raise ExportError(f"{name}: ONNX output differs from torch by {report[name]['max_abs']:.2e} > {FP32_DECODER_BOUND}")
        if int8:
            from .quantize import quantize_bundle

            report, precision = quantize_bundle(model, specs, build, report, precision, calib_samples, progress=progress)
        (build / TOKENIZER).write_text(model.tokenizer.to_str())
        defaults = Pipeline(model)
        manifest = {
            "format": "qk-bundle",
            "format_version": FORMAT_VERSION,
            "model_config": model.cfg.to_dict(),
            "dims": model_dims(model).to_dict(),
            "precision": "int8" if int8 else "fp32",
            "sparse_attn": sparse_attn,
            "window": model.decoder.cfg.attn_window or None,
            "opset": opset,
            "graphs": {n: {**s.to_dict(), "precision": precision[n]} for n, s in specs.items()},
            "sampler": {
                "scheduler": "FlowMatchEulerDiscreteScheduler", "shift": 1.0, "steps": defaults.steps,
                "text_guidance": defaults.text_guidance, "image_guidance": defaults.image_guidance,
                "gate_threshold": defaults.gate_threshold, "noise": "splitmix64-boxmuller-v1",
                "region_buckets": list(BUCKET_FRACTIONS), "halo": 1, "codec": model.cfg.codec.kind,
            },
            "parity": report,
            "command": command or "export_bundle(" + ", ".join(map(repr, (str(checkpoint), str(out)))) + ")",
            "created_by": "qk_export 0.1.0",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"checkpoint": str(checkpoint), "sha256": ckpt.sha256_file(checkpoint / ckpt.MODEL_FILE)},
        }
        manifest["files"] = {p.name: ckpt.sha256_file(p) for p in sorted(build.iterdir()) if p.is_file()}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        problems = check_bundle(build)
        manifest["trt_readiness"] = {"ok": not problems, "problems": problems}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in build.iterdir():
            with open(p, "rb") as f:
                import os

                os.fsync(f.fileno())
        ckpt.replace_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return out


def command_line(argv: list[str]) -> str:
    return "qk-export " + " ".join(shlex.quote(a) for a in argv)
