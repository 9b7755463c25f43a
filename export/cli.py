"""qk-export: a trained checkpoint -> a verified ONNX bundle (FP32 or INT8 Q/DQ, dense or sparse).

    qk-export --out engines/default/fp32
    qk-export --int8 --out engines/default/int8
    qk-export --model runs/small/final --int8 --sparse-attn region --out bundles/small-int8-region
    qk-export --check bundles/small-int8-region      # TensorRT readiness of an existing bundle
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "engines" / "default" / "checkpoint"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qk-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"checkpoint folder (qk-train's final/); default: the shipped {DEFAULT_MODEL.relative_to(REPO_ROOT)}")
    parser.add_argument("--out", help="bundle folder to write (replaced atomically if it is a bundle; refused if it holds anything else)")
    parser.add_argument("--int8", action="store_true", help="quantize MatMul/Gemm to symmetric INT8 Q/DQ, calibrated on real denoising trajectories")
    parser.add_argument("--sparse-attn", default="none", choices=["none", "window", "region"],
                        help="none: dense; window: decoder self-attention in local windows; region: also export decoder_region.onnx that runs only the CMG's active tokens (default none)")
    parser.add_argument("--window", type=int, default=None, help="window side in tokens for --sparse-attn window (default: half the token grid)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..20 (default 17; TensorRT 10 reads 9..20, INT8 needs >= 13)")
    parser.add_argument("--calib-samples", type=int, default=64, help="denoising steps recorded for INT8 calibration (default 64)")
    parser.add_argument("--check", metavar="BUNDLE", help="only check an existing bundle's TensorRT readiness and exit")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        from .trt_check import check_bundle

        try:
            problems = check_bundle(Path(args.check))
        except (OSError, ValueError, KeyError) as exc:
            print(f"qk-export: error: cannot read bundle {args.check}: {exc}", file=sys.stderr)
            return 2
        for p in problems:
            print(p)
        print("TensorRT readiness: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        return 0 if not problems else 1
    if not args.out:
        parser.error("--out is required (or use --check BUNDLE)")
    model = Path(args.model) if args.model else DEFAULT_MODEL
    if not model.exists():
        hint = "" if args.model else " (the shipped default is missing: pass --model with a folder qk-train wrote)"
        print(f"qk-export: error: checkpoint {model} does not exist{hint}", file=sys.stderr)
        return 2
    from .bundle import ExportError, command_line, export_bundle

    try:
        out = export_bundle(model, args.out, int8=args.int8, sparse_attn=args.sparse_attn, opset=args.opset,
                            calib_samples=args.calib_samples, window=args.window, command=command_line(argv),
                            progress=not args.quiet)
    except (ExportError, FileNotFoundError) as exc:
        print(f"qk-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
