"""Sampler settings sweep: guidance scales and gate threshold, chosen on the validation split.

A bundle's sampler settings (text and image guidance for edits, guidance for generation, the
CMG gate threshold) decide its quality as much as training does. This script runs a grid of them
through qk_runtime on `val`-split ShapeWorld edits and generations (never `test`, which qk-eval
reports), with the region box, 20 steps, and writes one row per setting: edit success per kind,
drift, gen_accuracy. Pick the defaults from here, then report them with qk-eval on `test`.

    python benchmarks/sampler_sweep.py --bundle engines/default/int8 --n 100 --gen-n 60
    python benchmarks/sampler_sweep.py --text 2,3,5 --image 1,1.5,2.5 --threshold 0.3,0.5 --gen 2,3,5,8

Writes benchmarks/results/<machine>/sampler_sweep.json and .md (--out to change).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np

from qk_runtime.session import EditSession
from qk_train.data.shapeworld import EDIT_KINDS, make_edit, make_generation
from qk_train.eval.metrics import judge_generation, score_edit

REPO = Path(__file__).resolve().parents[1]


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 1.5,3,5") from None


def edit_row(session: EditSession, samples, s_txt: float, s_img: float, seed: int, box: bool = True) -> dict:
    ok = {k: [] for k in EDIT_KINDS}
    drift = []
    for i, sample in enumerate(samples):
        out = session.edit(sample.source, sample.instruction, box=sample.box if box else None, text_guidance=s_txt,
                           image_guidance=s_img, seed=seed + i).image
        score = score_edit(out, sample)
        ok[sample.kind].append(bool(score["success"]))
        drift.append(score["drift"])
    row = {k: float(np.mean(v)) for k, v in ok.items() if v}
    row["overall"] = float(np.mean([x for v in ok.values() for x in v]))
    row["drift"] = float(np.mean(drift))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(REPO / "engines" / "default" / "int8"))
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n", type=int, default=100, help="validation edits per setting (kinds in equal shares)")
    parser.add_argument("--gen-n", type=int, default=60, help="validation generations per guidance value")
    parser.add_argument("--text", type=floats, default=floats("2,3,5"), help="edit text guidance values")
    parser.add_argument("--image", type=floats, default=floats("1,1.5,2.5"), help="edit image guidance values")
    parser.add_argument("--threshold", type=floats, default=None, help="gate thresholds (default: the bundle's)")
    parser.add_argument("--gen", type=floats, default=floats("2,3,5,8"), help="generation guidance values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-box", action="store_true", help="edits without their region box")
    parser.add_argument("--machine", default="cpu-2core")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/<machine>/sampler_sweep)")
    args = parser.parse_args(argv)

    session = EditSession(args.bundle, backend=args.backend, threads=args.threads)
    base = session.bundle.sampler
    thresholds = args.threshold or [base.gate_threshold]
    side = session.side
    samples = [make_edit("val", i, side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(args.n)]
    tic = time.perf_counter()
    edits = []
    for thr, s_txt, s_img in itertools.product(thresholds, args.text, args.image):
        session.bundle = dataclasses.replace(session.bundle, sampler=dataclasses.replace(base, gate_threshold=thr))
        row = {"gate_threshold": thr, "text_guidance": s_txt, "image_guidance": s_img, "box": not args.no_box,
               **edit_row(session, samples, s_txt, s_img, args.seed, box=not args.no_box)}
        edits.append(row)
        print(json.dumps(row), flush=True)
    session.bundle = dataclasses.replace(session.bundle, sampler=base)
    gens = []
    drawn = [make_generation("val", i, side) for i in range(args.gen_n)]
    for g in args.gen:
        ok = [judge_generation(session.generate(caption, guidance=g, seed=args.seed + i).image, scene)
              for i, (_, caption, scene) in enumerate(drawn)]
        gens.append({"guidance": g, "gen_accuracy": float(np.mean(ok)) if ok else None})
        print(json.dumps(gens[-1]), flush=True)
    best = max(edits, key=lambda r: (r["overall"], -r["drift"]))
    best_gen = max(gens, key=lambda r: r["gen_accuracy"] or 0.0) if gens else None
    result = {
        "bundle": str(args.bundle), "backend": session.backend_name, "split": "val", "n_edits": args.n, "box": not args.no_box,
        "n_generations": args.gen_n, "steps": base.steps, "machine": args.machine, "platform": platform.platform(),
        "bundle_defaults": {"text_guidance": base.text_guidance, "image_guidance": base.image_guidance,
                            "gate_threshold": base.gate_threshold},
        "edits": edits, "generations": gens, "best_edit": best, "best_generation": best_gen,
        "elapsed_s": round(time.perf_counter() - tic, 1),
        "command": "python benchmarks/sampler_sweep.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    stem = Path(args.out) if args.out else REPO / "benchmarks" / "results" / args.machine / "sampler_sweep"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Sampler sweep: {args.bundle} ({session.backend_name}), val split, {args.n} edits "
             f"{'without' if args.no_box else 'with'} box, "
             f"{args.gen_n} generations, {base.steps} steps", "",
             "| gate thr | text g | image g | overall | " + " | ".join(EDIT_KINDS) + " | drift |",
             "|---|---|---|---|" + "---|" * len(EDIT_KINDS) + "---|"]
    for r in edits:
        lines.append(f"| {r['gate_threshold']} | {r['text_guidance']} | {r['image_guidance']} | {r['overall']:.3f} | "
                     + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in EDIT_KINDS) + f" | {r['drift']:.4f} |")
    lines += ["", "| gen guidance | gen_accuracy |", "|---|---|"]
    lines += [f"| {r['guidance']} | {r['gen_accuracy']:.3f} |" for r in gens]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"best edit setting: {best}\nbest generation guidance: {best_gen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
