"""qk-export: a trained checkpoint -> a verified ONNX bundle (FP32, FP16 or INT8 Q/DQ, dense or sparse).

examples:
  qk-export --out bundles/fp32                                   # the shipped default checkpoint
  qk-export --model runs/small/final --int8 --out bundles/int8
  qk-export --model runs/small/final --int8 --sparse-attn region --out bundles/int8-region
  qk-export --model runs/small/final --int8 --weight-only --sparse-attn region --out bundles/int8-wo
  qk-export --model runs/small/final --fp16 --sparse-attn region --out bundles/fp16-region
  qk-export --check bundles/int8-region                          # TensorRT readiness of a bundle, constant folding
  qk-export --verify bundles/int8-region                         # sha256 of every file

exit status: 0 done; 1 --check/--verify found problems; 2 bad arguments (nothing written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "engines" / "default" / "checkpoint"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qk-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="CKPT", default=None,
                   help="checkpoint folder written by qk-train (its final/); default: the shipped engines/default/checkpoint")
    p.add_argument("--out", metavar="BUNDLE", help="bundle folder to write; an existing bundle is replaced atomically, "
                                                   "any other existing folder is refused")
    p.add_argument("--int8", action="store_true",
                   help="quantize MatMul/Gemm to symmetric INT8 Q/DQ (zero point 0, per-channel weights), calibrated on "
                        "real denoising trajectories; sensitive layers stay float")
    p.add_argument("--weight-only", action="store_true",
                   help="with --int8: store every INT8 graph weight-only, as the text encoder always is (int8 weights "
                        "dequantized at load, float activations, nothing calibrated): the same pixels in every runtime "
                        "and the browser, an INT8-size download, about FP32 speed")
    p.add_argument("--sparse-attn", default="none", choices=["none", "window", "region"],
                   help="none: dense decoder (default); window: decoder self-attention in w x w token windows; "
                        "region: also export decoder_region.onnx, which runs only the CMG's active tokens")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="window side in tokens for --sparse-attn window; must divide the token grid (default: half of it)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset, 9..20 as TensorRT 10 reads (default 20: GELU is then one Gelu node, 6-8%% faster steps on ONNX Runtime CPU; --int8 needs 13 or newer)")
    p.add_argument("--calib-samples", type=int, default=64, metavar="N",
                   help="decoder steps recorded for INT8 calibration (default 64; NVIDIA's demo uses 32-128)")
    p.add_argument("--weight-bits", type=int, default=None, choices=[7, 8],
                   help="INT8 weight range: 7 keeps weights in -63..63, exact in ONNX Runtime on x86 CPUs without VNNI "
                        "(full-range weights saturate there); 8 uses the full range (VNNI/AMX CPUs, TensorRT). Default 7; "
                        "--weight-only graphs use the full range (no integer GEMM runs them)")
    p.add_argument("--int8-float", type=_groups, default=None, metavar="GROUPS",
                   help="with --int8: the layer groups kept in float, comma-separated, or none: adaln (timestep embedding "
                        "and adaLN modulation), io (input and output projections), attention (score and value MatMuls of "
                        "two activations). Default adaln,io,attention; benchmarks/int8_float_study.py measures each")
    p.add_argument("--fp16", action="store_true",
                   help="half-precision graphs (float32 inputs and outputs, so the runtimes feed them as any bundle); "
                        "the groups of --fp16-float stay float32; each graph is checked against torch FP32")
    p.add_argument("--fp16-float", type=_fp16_groups, default=None, metavar="GROUPS",
                   help="with --fp16: the node groups kept in float32, comma-separated, or none: norm (normalisations), "
                        "softmax, time (the timestep embedding), gating (the step's gating and back-to-source velocity). "
                        "Default norm,softmax,time,gating; benchmarks/fp16_groups.py measures each")
    p.add_argument("--text-encoder-from", metavar="BUNDLE", default=None,
                   help="use the text encoder file of this bundle (beside --out) instead of writing a copy; the manifest "
                        "records its path, sha256 and precision (the shipped fp32 bundle shares int8's)")
    p.add_argument("--check", metavar="BUNDLE", help="only check an existing bundle's TensorRT readiness")
    p.add_argument("--verify", metavar="BUNDLE", help="only recompute the sha256 of every file of an existing bundle")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _groups(text: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:  # "" or "," would have meant "quantize everything"; that is spelled `none`
        raise argparse.ArgumentTypeError("no group given; name the groups to keep in float (adaln, io, attention), "
                                         "or none to quantize every layer")
    if "none" in words and len(words) > 1:
        raise argparse.ArgumentTypeError(f"{text!r} mixes none with groups; give either none or groups")
    return () if words == ("none",) else words


def _fp16_groups(text: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise argparse.ArgumentTypeError("no group given; name the groups to keep in float32 (norm, softmax, time, "
                                         "gating), or none to run every node in float16")
    if "none" in words and len(words) > 1:
        raise argparse.ArgumentTypeError(f"{text!r} mixes none with groups; give either none or groups")
    return () if words == ("none",) else words


def _error(msg: str) -> int:
    print(f"qk-export: error: {msg}", file=sys.stderr)
    return 2


def _check(bundle: str) -> int:
    from .trt_check import check_bundle

    if not Path(bundle).is_dir():
        return _error(f"--check {bundle}: no such bundle folder")
    try:
        problems = check_bundle(Path(bundle))
    except (OSError, ValueError) as exc:  # BundleError (a ValueError) names the file and the fix
        return _error(f"cannot check bundle {bundle}: {exc}")
    for problem in problems:
        print(problem)
    print(f"TensorRT readiness of {bundle}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    if problems:  # folding reads every graph; one the check found unreadable or wrong would fail there
        print("constant folding (Polygraphy sanitize): not run: fix the problems above first", file=sys.stderr)
        return 1
    _fold(bundle)
    return 0


def _fold(bundle: str) -> None:
    """Polygraphy's constant folding, node counts before and after (a report: it changes no file)."""
    from .trt_check import folding_report

    try:
        rows = folding_report(Path(bundle))
    except ImportError as exc:
        print(f"constant folding (Polygraphy sanitize): not run: {exc}", file=sys.stderr)
        return
    for name, before, after in rows:
        print(f"  {name:15s} {before:5d} -> {after:5d} nodes" + ("" if after == before else f" ({before - after} foldable)"))
    folded = sum(b - a for _, b, a in rows)
    print(f"constant folding (Polygraphy sanitize) of {bundle}: {len(rows)} graphs, {sum(b for _, b, _ in rows)} -> "
          f"{sum(a for _, _, a in rows)} nodes" + (": nothing left to fold" if not folded else f": {folded} foldable"))


def _verify(bundle: str) -> int:
    from .verify import BundleError, verify_bundle

    if not Path(bundle).is_dir():
        return _error(f"--verify {bundle}: no such bundle folder")
    try:
        verify_bundle(bundle)
    except BundleError as exc:
        print(f"qk-export: {exc}", file=sys.stderr)
        return 1
    print(f"{bundle}: every file matches its sha256")
    return 0


def _missing_model(model: Path, given: bool) -> str:
    from qk_train.config import preset_names

    msg = f"checkpoint {model} does not exist"
    if not given:
        return msg + " (the shipped default is not there yet): pass --model with a checkpoint folder qk-train wrote"
    if str(model) in preset_names():
        return msg + (f"; {str(model)!r} is a preset name, not a checkpoint: train it with "
                      f"`qk-train --preset {model} --out DIR` and pass --model DIR/final")
    return msg + "; pass --model with a checkpoint folder qk-train wrote (its final/)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.weight_only and not args.int8:
            parser.error("--weight-only only applies with --int8 (it says how the INT8 graphs are stored): "
                         "add --int8, or leave --weight-only out")
        if args.weight_only and args.weight_bits is not None:
            parser.error(f"--weight-bits {args.weight_bits} does not apply with --weight-only (weight-only graphs keep "
                         "the full int8 range: no integer GEMM runs them); leave --weight-bits out")
    except SystemExit as exc:  # argparse's own errors exit 2 after printing usage
        return int(exc.code or 0)
    if args.check or args.verify:  # read-only modes; both may be given, the worse status wins
        if args.out:
            return _error("--check / --verify only read a bundle; run the export (--out) as a command of its own")
        codes = ([_check(args.check)] if args.check else []) + ([_verify(args.verify)] if args.verify else [])
        return max(codes)
    if not args.out:
        return _error("--out BUNDLE is required (or --check / --verify BUNDLE)")
    model = Path(args.model) if args.model else DEFAULT_MODEL
    if not model.exists():
        return _error(_missing_model(model, args.model is not None))

    from .bundle import ExportError, command_line, export_bundle, summary
    from .parity import ParityError
    from .trt_check import ReadinessError

    try:
        out = export_bundle(model, args.out, int8=args.int8, sparse_attn=args.sparse_attn, opset=args.opset,
                            calib_samples=args.calib_samples, window=args.window, command=command_line(argv),
                            progress=not args.quiet, weight_bits=7 if args.weight_bits is None else args.weight_bits,
                            text_encoder_from=args.text_encoder_from, int8_float=args.int8_float, fp16=args.fp16,
                            fp16_float=args.fp16_float, weight_only=args.weight_only)
    except ExportError as exc:
        return _error(str(exc))
    except (ParityError, ReadinessError) as exc:
        print(f"qk-export: export failed, nothing written: {exc}", file=sys.stderr)
        return 1
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
