"""Per-image agreement of two bundles on the same edits: an FP16 bundle against its FP32 one.

Runs `qk-eval`'s edits (test split, edit i of kind i mod 5, seed i, the bundle's sampler
settings, region decoder) through the Python runtime on ONNX Runtime's CPU provider, with and
without the box, once per bundle, and compares the two outputs of each edit:

- pixels: mean abs difference (0-255 levels), share of identical pixel values, share within one
  level, the largest difference, and the share of edits whose output is identical;
- verdicts: the strict edit-success rule (`qk_train.eval.metrics.score_edit`) on both outputs, how
  many edits pass with one bundle and fail with the other (the discordant pairs), and the paired
  difference with its standard error: sqrt(b + c) / n for b and c discordant edits, which is what
  limits a comparison of two success rates measured on the same n edits.

    python benchmarks/fp16_agreement.py --a engines/default/fp32 --b bundles/fp16 --n 200 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def run(bundle: Path, samples, settings, seed: int) -> dict:
    from qk_runtime.session import EditSession

    out = {}
    with EditSession(bundle, backend="ort-cpu") as s:
        for setting in settings:
            out[setting] = [s.edit(x.source, x.instruction, box=x.box if setting == "box" else None, seed=seed + i,
                                   sparse="region" if s.bundle.has_region else "none").image
                            for i, x in enumerate(samples)]
    return out


def agreement(a: list[np.ndarray], b: list[np.ndarray], samples) -> dict:
    from qk_train.eval.metrics import score_edit

    diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b)]
    flat = np.concatenate([d.ravel() for d in diffs])
    sa = [bool(score_edit(x, s)["strict"]) for x, s in zip(a, samples)]
    sb = [bool(score_edit(y, s)["strict"]) for y, s in zip(b, samples)]
    n = len(samples)
    only_a = sum(x and not y for x, y in zip(sa, sb))
    only_b = sum(y and not x for x, y in zip(sa, sb))
    return {
        "n": n,
        "pixel_mean_abs_levels": float(flat.mean()),
        "pixels_identical": float((flat == 0).mean()),
        "pixels_within_1_level": float((flat <= 1).mean()),
        "pixel_max_abs_levels": int(flat.max()),
        "images_identical": float(np.mean([int(d.max()) == 0 for d in diffs])),
        "per_image_mean_abs_levels_p50_p90_max": [float(np.percentile([d.mean() for d in diffs], q)) for q in (50, 90, 100)],
        "strict_success_a": sum(sa) / n, "strict_success_b": sum(sb) / n,
        "verdicts_agree": sum(x == y for x, y in zip(sa, sb)) / n,
        "discordant_a_only": only_a, "discordant_b_only": only_b,
        "paired_difference_b_minus_a": (only_b - only_a) / n,
        "paired_standard_error": math.sqrt(only_a + only_b) / n,
        "unpaired_standard_error_of_one_rate": math.sqrt(max(sum(sa) / n * (1 - sum(sa) / n), 1e-12) / n),
    }


def main(argv: list[str] | None = None) -> int:
    from qk_train.data.shapeworld import EDIT_KINDS, make_edit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="reference bundle (the FP32 one)")
    p.add_argument("--b", type=Path, required=True, help="bundle compared with it (the FP16 one)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    from qk_runtime.bundle import open_bundle

    side = open_bundle(args.a).dims.image_size
    samples = [make_edit(args.split, i, side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(args.n)]
    settings = ("box", "no_box")
    t0 = time.perf_counter()
    a = run(args.a, samples, settings, args.seed)
    b = run(args.b, samples, settings, args.seed)
    result = {"a": str(args.a), "b": str(args.b), "split": args.split, "seed": args.seed, "backend": "ort-cpu",
              "settings": {s: agreement(a[s], b[s], samples) for s in settings},
              "elapsed_s": round(time.perf_counter() - t0, 1)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for s, r in result["settings"].items():
        print(f"{s}: pixels identical {r['pixels_identical']:.4f}, mean {r['pixel_mean_abs_levels']:.4f} levels, "
              f"max {r['pixel_max_abs_levels']}; strict success {r['strict_success_a']:.3f} vs {r['strict_success_b']:.3f}, "
              f"verdicts agree {r['verdicts_agree']:.3f} (paired difference {r['paired_difference_b_minus_a']:+.3f} "
              f"+- {r['paired_standard_error']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
