"""Write a bundle: the ONNX graphs of a checkpoint, its tokenizer and `manifest.json`.

Steps: validate the arguments and load the checkpoint (nothing is written before both pass);
export each graph of the contract (`exporter.py`) and compare it with its torch module in ONNX
Runtime (`parity.py`: the FP32 decoder must match to 1e-4); with `int8`, quantize and check the
INT8 bound (`quantize.py`); with `fp16`, convert to float16 and check the FP16 bound
(`fp16.py`); write the tokenizer and the manifest; check TensorRT readiness (`trt_check.py`)
and verify the hashes with the runtime's loader. All of it happens in a hidden folder beside
`out` that is renamed into place only when every check passed, so a failed or interrupted
export leaves nothing that looks like a bundle, and an existing bundle at `out` is replaced in
one rename.
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch

from qk_runtime.contract import (COMPOSITE_FORMAT_VERSION, FEW_STEP_FIELDS, FEW_STEP_FORMAT_VERSION, FORMAT_VERSION,
                                 MANIFEST, MIN_FORMAT_VERSION, REGION_BUCKETS, TOKENIZER, WEIGHT_ONLY_KEY)
from qk_train import checkpoint as ckpt
from qk_train.config import ConfigError
from qk_train.models.unified import QKModel
from qk_train.pipeline import Pipeline, active_token_indices

from . import __version__
from .exporter import cleanup_tool, export_onnx, share_weights
from .graphs import bundle_format, has_step_size, model_dims, model_specs, sample_inputs, wrap
from .parity import check_fp32, fp32_parity
from .trt_check import require_ready
from .trt_ops import OPSET_RANGE, TARGET

SPARSE_MODES = ("none", "window", "region")
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear (the `axis` attribute)


class ExportError(ValueError):
    """An export that cannot be done as asked; nothing was written."""


# --------------------------------------------------------------------------- validation


def check_arguments(out: Path, *, int8: bool, sparse_attn: str, opset: int, calib_samples: int,
                    window: int | None, float_groups: tuple[str, ...] | None = None, fp16: bool = False,
                    fp16_float: tuple[str, ...] | None = None, weight_only: bool = False) -> None:
    if fp16 and int8:
        raise ExportError("--fp16 and --int8 are two precisions of one bundle; export one bundle per precision")
    if weight_only and not int8:
        raise ExportError("--weight-only only applies with --int8 (it says how the INT8 graphs are stored): "
                          "add --int8, or leave --weight-only out")
    if fp16_float is not None:
        from .fp16 import DEFAULT_FLOAT as FP16_DEFAULT, check_groups

        if not fp16 and tuple(fp16_float) != FP16_DEFAULT:
            raise ExportError("--fp16-float only applies with --fp16 (an FP32 bundle keeps every node in float32)")
        try:
            check_groups(fp16_float)
        except ValueError as exc:
            raise ExportError(f"--fp16-float: {exc}") from exc
    if float_groups is not None:
        from .quantize import DEFAULT_FLOAT, float_layers

        if not int8 and tuple(float_groups) != DEFAULT_FLOAT:
            raise ExportError("--int8-float only applies with --int8 (an FP32 bundle keeps every layer in float)")
        try:
            float_layers(float_groups)
        except ValueError as exc:
            raise ExportError(f"--int8-float: {exc}") from exc
    if sparse_attn not in SPARSE_MODES:
        raise ExportError(f"--sparse-attn {sparse_attn!r} is not a mode; choose one of {list(SPARSE_MODES)}")
    if int8 and opset < MIN_INT8_OPSET:
        raise ExportError(f"--int8 needs --opset {MIN_INT8_OPSET} or newer (per-channel QuantizeLinear has an "
                          f"`axis` from opset 13); got --opset {opset}")
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        raise ExportError(f"--opset {opset} is outside {lo}..{hi}, the opsets {TARGET} reads; use 20 (the default)")
    if calib_samples < 1:  # refused without --int8 too: a typo should not pass unnoticed
        raise ExportError(f"--calib-samples {calib_samples}: need at least 1 (32-128 is typical)")
    if window is not None and sparse_attn != "window":
        raise ExportError(f"--window {window} only applies with --sparse-attn window")
    if out.exists() and not is_bundle(out):
        if out.is_file() or any(out.iterdir()):
            raise ExportError(f"--out {out} exists and is not a bundle; choose a new folder "
                              f"(qk-export replaces only folders it wrote; nothing was touched)")


def check_out_path(out: Path, checkpoint: Path, text_encoder_from: str | Path | None) -> None:
    """--out must not be, lie inside or contain the checkpoint or the bundle the export reads."""
    from qk_runtime.errors import InputError
    from qk_runtime.files import check_output

    folders = [("the checkpoint --model", checkpoint)]
    if text_encoder_from is not None:
        folders.append(("the bundle --text-encoder-from", Path(text_encoder_from)))
    try:
        check_output("--out", out, folders=folders, folder_output=True)
    except InputError as exc:
        raise ExportError(f"{exc} (nothing was written)") from None


def is_bundle(folder: Path) -> bool:
    from qk_runtime.errors import BundleError
    from qk_runtime.files import read_json

    try:
        return read_json(folder / MANIFEST, BundleError).get("format") == "qk-bundle"
    except (BundleError, AttributeError):
        return False


def load_model(checkpoint: Path, sparse_attn: str, window: int | None) -> QKModel:
    """The checkpoint's model; for `window`, its decoder attends in w x w token windows."""
    try:
        model = QKModel.from_checkpoint(checkpoint)
    except (ckpt.CheckpointError, ConfigError) as exc:
        raise ExportError(str(exc)) from exc
    if sparse_attn == "window":
        grid = model_dims(model).grid
        w = window if window is not None else max(1, grid // 2)
        if model.cfg.decoder.source_mode != "channel":
            raise ExportError(f"--sparse-attn window needs decoder.source_mode 'channel'; this checkpoint has "
                              f"{model.cfg.decoder.source_mode!r} (its source tokens share the sequence)")
        if w < 1 or grid % w:
            divisors = [d for d in range(1, grid + 1) if grid % d == 0]
            raise ExportError(f"--window {w} must divide the token grid side {grid}; choose one of {divisors}")
        model.cfg = model.cfg.replace(decoder={"attn_window": w})
        model.decoder.cfg = model.cfg.decoder  # same weights, windowed self-attention
    return model.eval()


# --------------------------------------------------------------------------- the bundle


def sampler_settings(model: QKModel) -> dict:
    """The reference pipeline's defaults, read from it (not restated here)."""
    pipe = Pipeline(model)
    sched = pipe.scheduler(pipe.steps)
    return {
        "scheduler": type(sched).__name__,
        "shift": float(sched.config.shift),
        "steps": pipe.steps,
        "text_guidance": pipe.text_guidance,
        "image_guidance": pipe.image_guidance,
        "gen_guidance": pipe.gen_guidance,
        "gate_threshold": pipe.gate_threshold,
        "noise": "splitmix64-boxmuller-v1",
        "region_buckets": list(REGION_BUCKETS),
        "halo": inspect.signature(active_token_indices).parameters["halo"].default,
        "codec": model.cfg.codec.kind,
    }


def few_step_settings(model: QKModel) -> dict:
    """The manifest's `few_step` entry (format 5, models with step-size conditioning): the step
    counts the reference pipeline runs as shortcut steps, and what its sampler does
    (`qk_runtime.contract.FEW_STEP_FIELDS`)."""
    return {"steps": list(Pipeline(model).few_step_steps), **FEW_STEP_FIELDS}


def composite_settings(model: QKModel) -> dict:
    """The manifest's `composite` entry: the reference pipeline's compositing (its defaults)."""
    return Pipeline(model).composite.to_dict()


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


DECODER_WEIGHTS = "decoder.weights"  # external data of decoder.onnx and decoder_region.onnx (region bundles)


def shared_text_encoder(other: Path, out: Path, model) -> tuple[str, str, dict, str, bool]:
    """The text encoder of the bundle `other`, for a bundle written at `out` to use instead of its
    own copy: (path relative to `out`, sha256, parity entry, precision, whether it is weight-only
    INT8). Refused unless `other`
    is a verified bundle whose text encoder has the same config and tokenizer as `model`'s."""
    from .verify import verify_bundle

    if not is_bundle(other):
        raise ExportError(f"--text-encoder-from {other}: not a bundle folder (no manifest.json); export that bundle first")
    try:
        their_bundle = verify_bundle(other)  # the runtime's own loader, every hash checked
        theirs = json.loads((other / MANIFEST).read_text())
    except Exception as exc:  # noqa: BLE001 - any reason the other bundle cannot be used
        raise ExportError(f"--text-encoder-from {other}: {exc}") from exc
    if theirs["model_config"].get("text") != model.cfg.to_dict().get("text"):
        raise ExportError(f"--text-encoder-from {other}: its text encoder config differs from this checkpoint's; "
                          f"export without --text-encoder-from")
    if (other / TOKENIZER).read_text() != model.tokenizer.to_str():
        raise ExportError(f"--text-encoder-from {other}: its tokenizer differs from this checkpoint's")
    graph = theirs["graphs"]["text_encoder"]
    want = model_specs(model, region=False)["text_encoder"].to_dict()
    if (graph.get("inputs"), graph.get("outputs")) != (want["inputs"], want["outputs"]):
        raise ExportError(f"--text-encoder-from {other}: written in bundle format {theirs['format_version']}, whose text "
                          f"encoder's inputs differ from format {FORMAT_VERSION}'s; re-export {other} first")
    if other.resolve().parent != out.resolve().parent or other.resolve() == out.resolve():
        raise ExportError(f"--text-encoder-from {other}: must be a bundle beside --out (in the same folder), since "
                          f"the runtimes read a shared text encoder only from a sibling bundle")
    rel = os.path.relpath((other / graph["file"]).resolve(), out.resolve())
    if not rel.startswith(".."):
        raise ExportError(f"--text-encoder-from {other}: must be a bundle beside --out, not inside it")
    return (rel, theirs["files"][graph["file"]], theirs["parity"]["text_encoder"], graph.get("precision", theirs["precision"]),
            "text_encoder" in their_bundle.weight_only)


def export_bundle(checkpoint: str | Path, out: str | Path, *, int8: bool = False, sparse_attn: str = "none",
                  opset: int = 20, calib_samples: int = 64, window: int | None = None, command: str | None = None,
                  progress: bool = False, weight_bits: int = 7, text_encoder_from: str | Path | None = None,
                  format_version: int | None = None, int8_float: tuple[str, ...] | None = None,
                  int8_strict: bool = True, fp16: bool = False, fp16_float: tuple[str, ...] | None = None,
                  weight_only: bool = False) -> Path:
    """Export `checkpoint` as a bundle folder `out` (replaced atomically if it is a bundle).

    `text_encoder_from`: a bundle beside `out` whose text encoder file this bundle uses instead
    of its own (the manifest points at it by relative path and records its sha256 and precision),
    so that bundles of one model shipped together store the encoder once.

    `format_version`: None (the CLI) writes `graphs.bundle_format(model)`: 5 for a model with
    step-size conditioning (its decoders take `step_size`, the manifest has `few_step`), else 4. An
    older bundle format (1 or 2: no decoder_cond, the steps take the text; 1 to 3: no `composite`
    entry, runtimes composite by the gate alone) is for checking that runtimes still read what
    earlier versions wrote.

    `int8_float`: the groups of layers an INT8 bundle keeps in float (`qk_export.quantize.FLOAT_GROUPS`;
    default `DEFAULT_FLOAT`, () quantizes every MatMul/Gemm with a weight). `int8_strict` False
    writes a bundle whose INT8 graphs miss their error bounds, with the miss in the manifest's
    parity (for measuring what the bounds refuse; the CLI is always strict). `weight_only` (with
    `int8`): every INT8 graph weight-only, int8 weights and float activations, as the text encoder
    always is (`qk_export.quantize.weight_only_graphs`): the same pixels in every runtime, at
    FP32 speed; the manifest's `quantization.weight_only` lists them.

    `fp16`: half-precision graphs with float32 inputs and outputs (`qk_export.fp16`), keeping the
    `fp16_float` groups in float32 (default `qk_export.fp16.DEFAULT_FLOAT`); each graph is compared
    with torch FP32 in ONNX Runtime's CPU provider and must stay within `parity.FP16_BOUND`."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_arguments(out, int8=int8, sparse_attn=sparse_attn, opset=opset, calib_samples=calib_samples, window=window,
                    float_groups=int8_float, fp16=fp16, fp16_float=fp16_float, weight_only=weight_only)
    check_out_path(out, checkpoint, text_encoder_from)
    model = load_model(checkpoint, sparse_attn, window)
    shared = shared_text_encoder(Path(text_encoder_from), out, model) if text_encoder_from is not None else None
    if format_version is None:
        format_version = bundle_format(model)
    if not MIN_FORMAT_VERSION <= format_version <= FORMAT_VERSION:
        raise ExportError(f"format_version={format_version}; this export writes {MIN_FORMAT_VERSION}..{FORMAT_VERSION}")
    if has_step_size(model) != (format_version >= FEW_STEP_FORMAT_VERSION):
        raise ExportError(f"format_version={format_version}: a model {'with' if has_step_size(model) else 'without'} "
                          f"step-size conditioning (decoder.step_size_cond) is written as format {bundle_format(model)}; "
                          f"leave format_version out")
    specs = model_specs(model, region=sparse_attn == "region", format_version=format_version)
    log = (lambda msg: print(f"qk-export: {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    torch.manual_seed(0)

    build = ckpt.new_build_dir(out)
    try:
        report, precision = {}, {}
        for i, (name, spec) in enumerate(specs.items()):
            module = wrap(model, spec)
            args = sample_inputs(spec, model, torch.Generator().manual_seed(1000 + i))
            export_onnx(module, spec, args, build / spec.file, opset)
            report[name] = fp32_parity(module, spec, build / spec.file, model, seed=2000 + i)
            precision[name] = "fp32"
            log(f"exported {spec.file}: max abs error vs torch {report[name]['max_abs']:.2e}")
        check_fp32(report)
        quantization = None
        if int8:
            from .quantize import DEFAULT_FLOAT, quantize_bundle

            int8_report, quantization = quantize_bundle(model, specs, build, calib_samples, log=log, weight_bits=weight_bits,
                                                        float_groups=DEFAULT_FLOAT if int8_float is None else tuple(int8_float),
                                                        strict=int8_strict, weight_only=weight_only)
            for name, r in int8_report.items():
                report[name] = {**r, "fp32": report[name]}
                precision[name] = "int8"
        half = None
        if fp16:
            half = half_precision(model, specs, build, report, precision, fp16_float,
                                  skip=("text_encoder",) if shared is not None else (), log=log)
        shared_weights = None
        if "decoder_region" in specs:  # two graphs over one set of weights: store them once
            files = [specs["decoder"].file, specs["decoder_region"].file]
            shared_weights = share_weights(build, files, DECODER_WEIGHTS)
            log(f"decoder weights: {shared_weights['bytes'] / 1e6:.1f} MB in {DECODER_WEIGHTS}, shared by "
                f"{' and '.join(files)} ({shared_weights['saved'] / 1e6:.1f} MB not stored twice)")
        (build / TOKENIZER).write_text(model.tokenizer.to_str())
        manifest = {
            "format": "qk-bundle",
            "format_version": format_version,
            "model_config": model.cfg.to_dict(),
            "dims": {k: v for k, v in model_dims(model).to_dict().items() if format_version >= 3 or k != "depth"},
            "precision": "int8" if int8 else "fp16" if fp16 else "fp32",
            "sparse_attn": sparse_attn,
            "window": model.cfg.decoder.attn_window or None,
            "opset": opset,
            "graphs": {n: {**s.to_dict(), "precision": precision[n],
                           **({"external_data": DECODER_WEIGHTS} if shared_weights and n in ("decoder", "decoder_region") else {})}
                       for n, s in specs.items()},
            "sampler": sampler_settings(model),
            **({"composite": composite_settings(model)} if format_version >= COMPOSITE_FORMAT_VERSION else {}),
            **({"few_step": few_step_settings(model)} if has_step_size(model) else {}),
            "files": {},
            "parity": report,
            "quantization": quantization,
            **({"fp16": half} if half is not None else {}),
            "trt_readiness": None,
            "exporter": {"torch": torch.__version__, "method": "torch.onnx.export(dynamo=False)", "cleanup": cleanup_tool()},
            "command": command or f"export_bundle({str(checkpoint)!r}, {str(out)!r}, int8={int8}, "
                                  f"sparse_attn={sparse_attn!r}, opset={opset})",
            "created_by": f"qk_export {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"checkpoint": str(checkpoint.resolve()), "sha256": ckpt.sha256_file(checkpoint / ckpt.MODEL_FILE)},
        }
        if shared is not None:
            rel, sha, parity, te_precision, te_weight_only = shared
            (build / specs["text_encoder"].file).unlink()
            manifest["graphs"]["text_encoder"].update(file=rel, precision=te_precision)
            manifest["parity"]["text_encoder"] = {**parity, "shared_from": rel}
            if quantization is not None and not te_weight_only:  # it records this bundle's own text encoder
                quantization["graphs"].pop("text_encoder", None)
                quantization[WEIGHT_ONLY_KEY] = [g for g in quantization[WEIGHT_ONLY_KEY] if g != "text_encoder"]
            log(f"text encoder: {rel} ({te_precision}), shared instead of this bundle's own")
        manifest["files"] = {p.name: ckpt.sha256_file(p) for p in sorted(build.iterdir()) if p.is_file()}
        if shared is not None:
            manifest["files"][shared[0]] = shared[1]
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        require_ready(build)  # raises ReadinessError naming each node and reason
        manifest["trt_readiness"] = {"ok": True, "target": TARGET, "problems": []}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        from .verify import verify_bundle

        verify_bundle(build)
        _fsync_tree(build)
        ckpt.replace_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return out


def half_precision(model: QKModel, specs: dict, build: Path, report: dict, precision: dict,
                   float_groups: tuple[str, ...] | None, skip: tuple[str, ...] = (), log=lambda msg: None) -> dict:
    """Convert the FP32 graphs in `build` to FP16 (`fp16.convert_file`), measure each against torch
    FP32 (`parity.fp16_parity`, the FP32 figures kept under "fp32") and raise ParityError when one
    misses `parity.FP16_BOUND`. Returns the manifest's record of the conversion."""
    from .fp16 import DEFAULT_FLOAT, check_groups, convert_file
    from .parity import ParityError, fp16_parity, fp16_problem

    groups = check_groups(DEFAULT_FLOAT if float_groups is None else float_groups)
    counts, problems = {}, []
    for i, (name, spec) in enumerate(specs.items()):
        if name in skip:
            continue
        counts[name] = convert_file(build / spec.file, groups, name)
        r = fp16_parity(wrap(model, spec), spec, build / spec.file, model, seed=2000 + i)
        report[name] = {**r, "fp32": report[name]}
        precision[name] = "fp16"
        problems.append(fp16_problem(name, report[name]))
        log(f"FP16 {spec.file}: mean abs error {r['mean_abs_over_std']:.2e} (ONNX Runtime CPU), "
            f"{r['half_arithmetic']['mean_abs_over_std']:.2e} (float16 arithmetic) of the output's std "
            f"({counts[name]['float_nodes']} of {counts[name]['float_nodes'] + counts[name]['half_nodes']} nodes kept FP32)")
    problems = [p for p in problems if p]
    if problems:
        raise ParityError("; ".join(problems))
    return {"method": "qk_export.fp16 (float16 nodes, float32 inputs and outputs)", "float_groups": list(groups),
            "nodes": counts}


def summary(bundle: Path) -> str:
    m = json.loads((bundle / MANIFEST).read_text())
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    dec = m["parity"]["decoder"]
    err = {"fp32": f"decoder max abs error {dec['max_abs']:.2e}",
           "fp16": f"decoder FP16 mean abs error {dec.get('half_arithmetic', dec).get('mean_abs_over_std', 0):.2e} of std "
                   f"(float16 arithmetic)"}.get(
        m["precision"], f"decoder INT8 mean abs error {dec.get('mean_abs_over_std', 0):.3f} of std")
    precision = m["precision"] + (" weight-only" if "decoder" in (m.get("quantization") or {}).get(WEIGHT_ONLY_KEY, ()) else "")
    return (f"wrote {bundle}: {len(m['graphs'])} graphs, {precision}, sparse {m['sparse_attn']}, "
            f"{size / 1e6:.1f} MB, {err}, TensorRT readiness ok")


def command_line(argv: list[str]) -> str:
    return "qk-export " + " ".join(shlex.quote(a) for a in argv)
