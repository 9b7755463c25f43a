"""Why generations fail: the v1.1 judge's verdict on every asked-for object, broken down.

`qk-eval` says how many generated images the judge accepts; this says what is wrong with the
rest, so that a recipe change can aim at it. Each caption of the split's generation samples
(`make_generation(split, i)`, seed i, the pipeline's sampler) is drawn by the model, and every
object of the caption gets the furthest verdict of `qk_train.eval.metrics.OBJECT_VERDICTS` a
component of its colour reaches: missing (no pixel of the colour), too_small (under 40 % of the
true area), misplaced (big enough, wrong grid cell), wrong_shape (right cell, another shape fits
best), misshapen (right shape, IoU under 0.6), found. An image also fails on extra objects.

    python benchmarks/gen_failures.py --model engines/default/checkpoint --n 100
    python benchmarks/gen_failures.py --model engines/default/int8 --split val --n 200 --json out.json

Prints the tables and writes them as JSON (default
benchmarks/results/<machine>/gen_failures/<model folder name>_<split>.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from qk_bench.machine import describe  # noqa: E402

CHUNK = 8


def diagnose(editor, split: str, n: int, seed: int) -> list[dict]:
    """One record per generation: caption, object count, each object's verdict, extra objects,
    the judge's answer."""
    from qk_train.data.shapeworld import make_generation, position_name
    from qk_train.eval.metrics import generation_findings, object_verdicts

    records = []
    for start in range(0, n, CHUNK):
        ids = list(range(start, min(start + CHUNK, n)))
        drawn = [make_generation(split, i, editor.side) for i in ids]
        outs = editor.generate_many([caption for _, caption, _ in drawn], [seed + i for i in ids])
        for i, (_, caption, scene), out in zip(ids, drawn, outs):
            findings = generation_findings(out, scene)
            objects = [{"shape": o.shape, "colour": o.colour, "size": o.size,
                        "position": position_name(o.cx, o.cy, scene.side), "verdict": v}
                       for o, v in zip(scene.objects, object_verdicts(out, scene))]
            records.append({"index": i, "caption": caption, "objects": objects,
                            "extra_objects": findings["extra_objects"],
                            "correct": all(findings["found"]) and findings["extra_objects"] == 0})
    return records


def summarise(records: list[dict]) -> dict:
    """Shares of images and objects: accuracy by object count, object verdicts overall and by
    attribute, and how many images fail on extra objects alone."""
    from qk_train.eval.metrics import OBJECT_VERDICTS

    by_count: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_count[len(r["objects"])].append(r["correct"])
    objects = [o for r in records for o in r["objects"]]
    verdicts = Counter(o["verdict"] for o in objects)
    by_attr = {}
    for attr in ("colour", "shape", "size", "position"):
        groups: dict[str, Counter] = defaultdict(Counter)
        for o in objects:
            groups[o[attr]][o["verdict"]] += 1
        by_attr[attr] = {k: {"objects": sum(c.values()), "found": round(c["found"] / sum(c.values()), 3)}
                         for k, c in sorted(groups.items())}
    all_found = [r for r in records if all(o["verdict"] == "found" for o in r["objects"])]
    return {
        "images": len(records),
        "gen_accuracy": round(sum(r["correct"] for r in records) / max(len(records), 1), 3),
        "accuracy_by_object_count": {str(k): {"images": len(v), "accuracy": round(sum(v) / len(v), 3)}
                                     for k, v in sorted(by_count.items())},
        "objects": len(objects),
        "object_verdicts": {v: round(verdicts[v] / max(len(objects), 1), 3) for v in OBJECT_VERDICTS},
        "every_object_found_but_extra_objects": len([r for r in all_found if r["extra_objects"] > 0]),
        "images_with_extra_objects": sum(r["extra_objects"] > 0 for r in records),
        "found_by": by_attr,
    }


def report(summary: dict) -> str:
    from qk_train.eval.metrics import OBJECT_VERDICTS

    lines = [f"{summary['images']} generations, gen_accuracy {summary['gen_accuracy']:.3f}", "",
             "| objects in the caption | images | accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {v['images']} | {v['accuracy']:.3f} |" for k, v in summary["accuracy_by_object_count"].items()]
    lines += ["", f"Verdicts on the {summary['objects']} asked-for objects:", "",
              "| " + " | ".join(OBJECT_VERDICTS) + " |", "|" + "---|" * len(OBJECT_VERDICTS),
              "| " + " | ".join(f"{summary['object_verdicts'][v]:.3f}" for v in OBJECT_VERDICTS) + " |", "",
              f"Images with every object found that fail on extra objects: "
              f"{summary['every_object_found_but_extra_objects']} (with any extra object: {summary['images_with_extra_objects']}).", ""]
    for attr, groups in summary["found_by"].items():
        lines.append(f"found, by {attr}: " + ", ".join(f"{k} {v['found']:.2f} ({v['objects']})" for k, v in groups.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "engines" / "default" / "checkpoint",
                        help="checkpoint or bundle folder (default: engines/default/checkpoint)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val", help="ShapeWorld split (default val)")
    parser.add_argument("--n", type=int, default=100, help="number of generations (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first sample (sample i uses seed + i)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--backend", default="auto", help="for bundles: auto|ort|openvino")
    parser.add_argument("--machine", default="cpu-2core", help="machine id for the default --json path")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a folder; give a checkpoint (qk-train's final/) or a bundle (qk-export's output)")

    import torch

    from qk_train.eval.evaluate import open_editor

    torch.set_num_threads(2)
    tic = time.perf_counter()
    editor = open_editor(args.model, args.steps, args.backend)
    records = diagnose(editor, args.split, args.n, args.seed)
    summary = summarise(records)
    print(report(summary))
    out = args.json or REPO / "benchmarks" / "results" / args.machine / "gen_failures" / f"{args.model.resolve().name}_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"model": str(args.model), "split": args.split, "n": args.n, "seed": args.seed, "steps": args.steps,
           **summary, "records": records, "seconds": round(time.perf_counter() - tic, 1),
           "command": " ".join(["python", "benchmarks/gen_failures.py", *sys.argv[1:]] if argv is None else argv),
           "machine": describe(args.machine), "date": str(date.today())}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
