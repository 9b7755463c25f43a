"""qk-bench: latency per stage and quality per precision, against the torch reference, with the
machine's measured limit beside them, in one run (so that ratios hold on a noisy machine).

examples:
  qk-bench                                  # the shipped checkpoint, every configuration, ~25 min on 2 cores
  qk-bench --quick                          # a few minutes: fewer repeats, one region size, no window/compile
  qk-bench --rounds 3 --no-scaling          # every configuration 3 times, interleaved; targets from the median round
  qk-bench --configs 'ort-*,torch-fp32-eager' --no-scaling
  qk-bench --prepare-only                   # export the bundles into the cache and stop
  qk-bench --model runs/small/final --machine my-laptop --json out.json

Writes bench.json, bench.md, bench.png, scaling.json and scaling.png under
benchmarks/results/<machine>/ (--out-dir to change), and the JSON also to --json if given.
Bundles are exported from --model into --cache once (keyed by checkpoint and export code).
Run it niced on a shared machine: `nice -n 10 qk-bench`.

exit status: 0 done (targets missed are reported, not errors); 1 some configurations failed (the
results are written with their errors); 2 bad arguments or a run that could not start (the
message says why).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .configs import names


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) / 100.0 if float(x) > 1 else float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give region sizes as fractions or percents, e.g. 0.05,0.25,1 or 5,25,100")
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every region size must lie in (0, 1] (or (0, 100] percent)")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 64,128,256")


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    from .suite import DEFAULT_CACHE, DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="qk-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="CKPT",
                   help="checkpoint folder (qk-train's final/); default: the shipped engines/default/checkpoint")
    p.add_argument("--machine", default="cpu-2core", help="machine id: names the results folder (default cpu-2core)")
    p.add_argument("--out-dir", type=Path, default=None, help="results folder (default benchmarks/results/<machine>)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the JSON here")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="bundle cache folder (default benchmarks/.cache)")
    p.add_argument("--quick", action="store_true", help="a few minutes: 2 repeats, region 25 %% only, 5 quality edits, "
                                                        "no window bundles or torch.compile, small scaling")
    p.add_argument("--configs", type=_words, default=None, metavar="A,B",
                   help="only these configurations (names or shell patterns); choices: " + ", ".join(names()))
    p.add_argument("--threads", type=int, default=2, help="threads per configuration (default 2)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per edit and generation (default 20)")
    p.add_argument("--repeats", type=int, default=None, help="timed edits per region size and generations (default 4; quick 2)")
    p.add_argument("--micro-repeats", type=int, default=None, help="calls of the decoder alone per batch (default 20; quick 8)")
    p.add_argument("--quality-n", type=int, default=None, help="qk-eval edits per configuration, 0 for none (default 15; quick 5)")
    p.add_argument("--regions", type=_floats, default=None, metavar="F,F",
                   help="edit region sizes as fractions of the image (default 0.05,0.25,1; quick 0.25)")
    p.add_argument("--calib-samples", type=int, default=16, help="INT8 calibration samples for the bundles (default 16)")
    p.add_argument("--weight-bits", type=int, default=7, choices=[7, 8], help="INT8 weight range (qk-export --weight-bits; default 7)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep")
    p.add_argument("--scaling-presets", type=_words, default=None, help="presets for the scaling sweep (default small,base; quick small)")
    p.add_argument("--scaling-sides", type=_ints, default=None, help="image sides in px (default 64,128,256; quick 64,128)")
    p.add_argument("--scaling-modes", type=_words, default=None, help="dense,window,region (default all three; quick dense,region)")
    p.add_argument("--peak-size", type=int, default=None, help="side of the square MatMul measuring the peak (default 1024; quick 768)")
    p.add_argument("--import-repeats", type=int, default=None, help="fresh interpreters per import-time probe (default 5; quick 2)")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="run every configuration N times, round-robin (A B C, A B C, ...), so that drifting load hits "
                        "all of them alike; targets are the median round's (default 1)")
    p.add_argument("--timeout-s", type=int, default=900, help="limit per configuration process in seconds (default 900)")
    p.add_argument("--spin", action="store_true",
                   help="let idle threads spin between ops in every engine (ONNX Runtime allow_spinning, torch "
                        "OMP_WAIT_POLICY=ACTIVE; OpenVINO keeps its own policy): lower latency on a dedicated CPU, "
                        "wasted cycles and erratic times on a shared one. Default: threads sleep")
    p.add_argument("--prepare-only", action="store_true", help="export the bundles into the cache and stop")
    return p


def options_from(args: argparse.Namespace):
    from .suite import Options, quick_options

    base = quick_options() if args.quick else {}
    given = {
        "repeats": args.repeats, "micro_repeats": args.micro_repeats, "quality_n": args.quality_n, "fractions": args.regions,
        "scaling_presets": args.scaling_presets, "scaling_sides": args.scaling_sides, "scaling_modes": args.scaling_modes,
        "peak_size": args.peak_size, "import_repeats": args.import_repeats,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    return Options(model=args.model, machine=args.machine, out_dir=args.out_dir, json_path=args.json, cache=args.cache,
                   quick=args.quick, threads=args.threads, steps=args.steps, configs=args.configs,
                   calib_samples=args.calib_samples, weight_bits=args.weight_bits, scaling=not args.no_scaling,
                   timeout_s=args.timeout_s, prepare_only=args.prepare_only, rounds=args.rounds,
                   spin=args.spin, **base)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own errors exit 2 after printing usage
        return int(exc.code or 0)
    if args.quality_n is not None and args.quality_n < 0:
        return _error("--quality-n must be >= 0")
    for name in ("repeats", "micro_repeats", "threads", "steps", "calib_samples", "timeout_s", "import_repeats", "peak_size",
                 "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return _error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.machine):
        return _error(f"--machine {args.machine!r} names the results folder: use letters, digits, '.', '_' and '-' "
                      f"only, e.g. cpu-2core or h100-sxm")
    from .suite import BenchError, run

    try:
        doc = run(options_from(args))
    except BenchError as exc:
        return _error(str(exc))
    if args.prepare_only:
        return 0
    print(summary(doc))
    if doc.get("failed"):
        print(f"qk-bench: {len(doc['failed'])} configuration(s) failed (see 'failed' in the JSON): "
              + "; ".join(f"{f['name']}: {f['error'][:120]}" for f in doc["failed"][:3]), file=sys.stderr)
        return 1
    return 0


def _error(msg: str) -> int:
    print(f"qk-bench: error: {msg}", file=sys.stderr)
    return 2


def _spread(target: dict) -> str:
    """' median of 3 (4.80-5.60x)' for a target taken from several rounds, else ''."""
    values = [v for v in target.get("rounds") or [] if v is not None]
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    span = f"{lo * 100:.0f}-{hi:.0%}" if target["target"] == "best_fraction_of_peak" else f"{lo:.2f}-{hi:.2f}x"
    return f" median of {len(values)} ({span})"


def summary(doc: dict) -> str:
    from .report import target_value

    parts = [f"{len(doc['configs'])} rows from {len(doc['per_config'])} configurations in {doc['run']['wall_s'] / 60:.1f} min"]
    for t in doc["targets"]:
        parts.append(f"{t['target']} {target_value(t['target'], t['measured'])}{_spread(t)} ({'met' if t['met'] else 'missed'})")
    if doc.get("failed"):
        parts.append(f"{len(doc['failed'])} failed")
    parts.append("wrote " + ", ".join(Path(p).name for p in doc.get("written", [])))
    return "qk-bench: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
