"""Region token buckets: how finely the region decoder's token count is rounded up, measured.

The region decoder runs an edit's active tokens plus a one-token halo, padded with the nearest
other tokens to a bucket size (a fraction of all tokens, `sampler.region_buckets` in the
manifest), so that engines with static shapes see a few sizes only. Coarser buckets waste work
on padding tokens; finer ones give more shapes. This script runs one bundle with several bucket
sets (a copy of the bundle per set whose manifest names them; the ONNX files are the same) and
measures, per set:

- speed: `--n-speed` validation edits with the region box through `EditSession` (ONNX Runtime,
  region decoder), every set run on each edit in turn (the order rotates), so the sets share the
  machine's load: tokens run per edit, the denoising loop's and the whole edit's time, and the
  loop time paired per edit against the first set;
- quality: `qk-eval` on `--n-quality` validation edits with the box (never `test`) for the sets
  in `--quality-sets`.

    python benchmarks/region_buckets.py                                # shipped INT8 bundle
    python benchmarks/region_buckets.py --n-speed 50 --n-quality 0     # speed only, quick

Writes benchmarks/results/<machine>/region_buckets.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # qk_bench.machine

SETS: dict[str, tuple[float, ...] | None] = {  # None: every token count is its own bucket
    "quarters": tuple(k / 4 for k in range(1, 5)),
    "eighths": tuple(k / 8 for k in range(1, 9)),
    "sixteenths": tuple(k / 16 for k in range(1, 17)),
    "exact": None,
}


def _names(text: str) -> list[str]:
    names = [w.strip() for w in text.split(",") if w.strip()]
    bad = [n for n in names if n not in SETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(SETS)} (comma-separated)")
    return names


def variant(bundle: Path, name: str, tokens: int, work: Path) -> Path:
    """A copy of `bundle` whose manifest gives the set's buckets (its files, hashes and graphs unchanged)."""
    out = work / name
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    buckets = SETS[name] or tuple(k / tokens for k in range(1, tokens + 1))
    manifest["sampler"]["region_buckets"] = list(buckets)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def speed(folders: dict[str, Path], n: int, threads: int | None, log) -> dict:
    from qk_runtime import EditSession
    from qk_train.data.shapeworld import EDIT_KINDS, make_edit

    sessions = {name: EditSession(f, backend="ort-cpu", threads=threads) for name, f in folders.items()}
    names = list(sessions)
    rows = {name: {"tokens": [], "loop_ms": [], "edit_ms": []} for name in names}
    for i in range(n):
        e = make_edit("val", i, kind=EDIT_KINDS[i % len(EDIT_KINDS)])
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            r = sessions[name].edit(e.source, e.instruction, box=e.box, seed=i, sparse="region")
            rows[name]["tokens"].append(int(r.active_tokens))
            rows[name]["loop_ms"].append(float(r.timings["decoder"]))
            rows[name]["edit_ms"].append(float(r.timings["total"]))
        if (i + 1) % 25 == 0:
            log(f"speed: {i + 1}/{n} edits")
    first = names[0]
    out = {}
    for name in names:
        r = rows[name]
        paired = np.array(rows[first]["loop_ms"]) / np.array(r["loop_ms"])
        out[name] = {
            "mean_tokens": float(np.mean(r["tokens"])),
            "tokens": dict(sorted(Counter(r["tokens"]).items())),
            "loop_ms_median": float(np.median(r["loop_ms"])), "loop_ms_mean": float(np.mean(r["loop_ms"])),
            "edit_ms_median": float(np.median(r["edit_ms"])), "edit_ms_mean": float(np.mean(r["edit_ms"])),
            f"loop_speedup_vs_{first}_median_paired": float(np.median(paired)),
        }
    return out


def quality(folder: Path, n: int) -> dict:
    from qk_train.eval.evaluate import evaluate

    r = evaluate(folder, split="val", n=n, gen_n=0, settings=["box"], backend="ort", sparse="region", progress=False)
    return {"edit_success": r["edit_success"]["box"], "drift": r["drift"]["box"], "elapsed_s": r["elapsed_s"]}


def markdown(doc: dict) -> str:
    first = doc["sets"][0]
    lines = [f"# Region token buckets\n",
             f"Bundle `{doc['bundle']}` ({doc['tokens']} tokens); {doc['n_speed']} validation edits with the box per set, "
             f"every set on each edit in turn, ONNX Runtime, region decoder; quality: qk-eval, {doc['n_quality']} "
             f"validation edits with the box. Machine: {doc['machine']}. Command: `{doc['command']}`\n",
             "| buckets | mean tokens | loop ms (median) | edit ms (median) | loop speed-up vs " + first
             + " (paired median) | success with box | drift |", "|---|---|---|---|---|---|---|"]
    for name in doc["sets"]:
        s, q = doc["speed"][name], doc["quality"].get(name)
        ok = f"{q['edit_success']['overall']:.3f}" if q else "-"
        drift = f"{q['drift']:.4f}" if q else "-"
        lines.append(f"| {name} | {s['mean_tokens']:.1f} | {s['loop_ms_median']:.1f} | {s['edit_ms_median']:.1f} | "
                     f"{s[f'loop_speedup_vs_{first}_median_paired']:.3f}x | {ok} | {drift} |")
    lines.append("\nTokens run per edit (count: edits):\n")
    for name in doc["sets"]:
        lines.append(f"- {name}: " + ", ".join(f"{k}: {v}" for k, v in doc["speed"][name]["tokens"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="region_buckets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "engines/default/int8", help="a bundle with decoder_region")
    p.add_argument("--sets", type=_names, default=list(SETS), help=f"bucket sets, first is the reference (default {','.join(SETS)})")
    p.add_argument("--quality-sets", type=_names, default=["quarters", "eighths"])
    p.add_argument("--n-speed", type=int, default=150)
    p.add_argument("--n-quality", type=int, default=500, help="0: skip quality")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--machine", default="cpu-2core")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<machine>")
    args = p.parse_args(argv)
    manifest_path = args.bundle / "manifest.json"
    if not manifest_path.is_file():
        p.error(f"--bundle {args.bundle}: no manifest.json; give a qk-export bundle folder")
    manifest = json.loads(manifest_path.read_text())
    if "decoder_region" not in manifest["graphs"]:
        p.error(f"--bundle {args.bundle} has no decoder_region; export it with --sparse-attn region")
    d = manifest["dims"]
    tokens = (d["image_size"] // d["factor"] // d["patch"]) ** 2

    def log(msg: str) -> None:
        print(f"[region_buckets {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from qk_bench.machine import describe, summary_line
    from qk_bench.report import write_study

    with tempfile.TemporaryDirectory(prefix="qk-buckets-") as tmp:
        folders = {name: variant(args.bundle, name, tokens, Path(tmp)) for name in args.sets}
        speeds = speed(folders, args.n_speed, args.threads, log)
        qual = {}
        for name in args.quality_sets if args.n_quality else []:
            if name in folders:
                log(f"quality: {name}, {args.n_quality} val edits")
                qual[name] = quality(folders[name], args.n_quality)
    doc = {"bundle": str(args.bundle), "tokens": tokens, "sets": args.sets, "buckets": {n: SETS[n] for n in args.sets},
           "n_speed": args.n_speed, "n_quality": args.n_quality, "speed": speeds, "quality": qual,
           "machine": f"{args.machine}: {summary_line(describe(args.machine))}",
           "command": "python benchmarks/region_buckets.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_study(args.out_dir or REPO / "benchmarks" / "results" / args.machine, "region_buckets", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
