"""Seams inside the gate: how an edit's output is composited with its source, measured.

Outside the gate an edit's pixels are the source's own; inside it they are the image decoder's,
which smooths the source's fine texture away wherever the edit changed nothing, so a flat square
shows around every edited object. `qk_runtime.composite` kind `changed` keeps the source's pixels
where the decoded output agrees with the decoded source (mean RGB difference below `lo`, ramping
to the decoded image's at `hi`, widened by `widen` 3 x 3 max filters). This script runs the
torch reference pipeline (`qk_train.pipeline.Pipeline`) on `--n` validation edits with the box
and measures, per setting:

- seam: mean |out - src| (0-1 scale, mean over RGB) over the pixels inside the gate and outside
  the true change mask (`make_edit(...).mask`) dilated by 2 px; pooled over every such pixel of
  all edits, and as the mean of the per-edit means;
- success, drift and inside error from `qk_train.eval.metrics.score_edit`, with the edits whose
  success flips against gate-only compositing.

The pipeline runs each edit once with its default compositing ("after"); compositing does not
change the sampling, so "before" (gate only, as bundles without a `composite` entry) and every
setting of the grid are composited from the same run's decoded output and decoded source
(`PipelineOutput.decoded`, `.source_decoded`).

    python benchmarks/seam_compositing.py                      # 200 val edits, the shipped checkpoint
    python benchmarks/seam_compositing.py --n 40 --lo 0.03,0.05 --hi-over-lo 2 --widen 1

Writes benchmarks/results/<machine>/seam_compositing.{json,md}.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # qk_bench.machine

SEAM_DILATE_PX = 2


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers") from exc


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from exc


def run_edits(pipe, samples, batch: int, log) -> list:
    """The pipeline's outputs (image, gate, decoded output and decoded source) for every sample."""
    outs = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        outs += pipe.edit_batch([e.source for e in chunk], [e.instruction for e in chunk], [e.box for e in chunk],
                                seeds=list(range(start, start + len(chunk))))
        if (start // batch) % 5 == 4:
            log(f"{len(outs)}/{len(samples)} edits")
    return outs


def pixel_gate(gate: np.ndarray, threshold: float, side: int) -> np.ndarray:
    """(g, g) soft gate -> (1, 1, S, S) thresholded, nearest-upsampled (the pipeline's pix)."""
    g = gate.shape[0]
    m = (gate > threshold).astype(np.float32)
    return np.kron(m, np.ones((side // g, side // g), np.float32))[None, None]


BANDS = ((3, 3), (4, 4), (5, 8), (9, None))  # seam pixels by chessboard distance from the true change mask


def _band(a: int, b: int | None) -> str:
    return f"{a}" if a == b else f"{a}+" if b is None else f"{a}-{b}"


def score(samples, images, pixs, base_ok: list[bool] | None = None) -> dict:
    """Seam (pooled, per-edit mean, over the edits in `base_ok` only, by distance band) and score_edit's figures."""
    from qk_train.eval.metrics import dilate, score_edit

    base_ok = base_ok if base_ok is not None else [True] * len(samples)
    sums = {"all": [0.0, 0], "ok": [0.0, 0], **{_band(a, b): [0.0, 0] for a, b in BANDS}}
    per_edit, success, drift, inside = [], [], [], []
    for e, img, pix, ok in zip(samples, images, pixs, base_ok):
        diff = np.abs(img.astype(np.float64) - e.source.astype(np.float64)).mean(-1) / 255.0  # (S, S)
        rings = {r: dilate(e.mask, r) for r in (2, 3, 4, 8)}
        where = (pix[0, 0] > 0.5) & ~rings[2]
        if where.any():
            parts = [("all", where)] + ([("ok", where)] if ok else [])
            for a, b in BANDS:
                band = ~rings[a - 1] & (rings[b] if b else True)
                parts.append((_band(a, b), where & band))
            for key, sel in parts:
                sums[key][0] += float(diff[sel].sum())
                sums[key][1] += int(sel.sum())
            per_edit.append(float(diff[where].mean()))
        s = score_edit(img, e)
        success.append(bool(s["success"]))
        drift.append(s["drift"])
        inside.append(s["inside_error"])
    mean = {k: v[0] / max(v[1], 1) for k, v in sums.items()}
    return {"seam": mean["all"], "seam_per_edit_mean": float(np.mean(per_edit)) if per_edit else 0.0,
            "seam_per_edit_median": float(np.median(per_edit)) if per_edit else 0.0,
            "seam_edits_successful_before": mean["ok"],
            "seam_by_distance": {k: {"seam": mean[k], "pixels": sums[k][1]} for k in sums if k not in ("all", "ok")},
            "seam_pixels": sums["all"][1], "edits_with_seam_pixels": len(per_edit),
            "success": float(np.mean(success)), "drift": float(np.mean(drift)), "inside_error": float(np.mean(inside)),
            "_success": success}


def residual_by_weight(samples, outs, pixs, c) -> dict:
    """Where the seam left under compositing `c` lies: its share (of the pooled sum) at pixels whose
    change weight w is 0 (the source's own: nothing left), between 0 and 1, and 1 (d >= hi: the
    decoded image differs from the decoded source there, content the edit drew)."""
    from qk_runtime.composite import change_weight
    from qk_train.eval.metrics import dilate

    sums = {"w=0": 0.0, "0<w<1": 0.0, "w=1": 0.0}
    pixels = dict.fromkeys(sums, 0)
    for e, o, pix, img in zip(samples, outs, pixs, composited(samples, outs, pixs, c)):
        where = (pix[0, 0] > 0.5) & ~dilate(e.mask, SEAM_DILATE_PX)
        w = change_weight(o.decoded[None], o.source_decoded[None], c)[0, 0]
        diff = np.abs(img.astype(np.float64) - e.source.astype(np.float64)).mean(-1) / 255.0
        for key, sel in (("w=0", w == 0), ("0<w<1", (w > 0) & (w < 1)), ("w=1", w == 1)):
            sums[key] += float(diff[where & sel].sum())
            pixels[key] += int((where & sel).sum())
    total = sum(sums.values()) or 1.0
    return {k: {"share": sums[k] / total, "pixels": pixels[k]} for k in sums}


def seam_differences(samples, outs, pixs, lo: float) -> dict:
    """d (mean RGB |dec(x) - dec(src)|, 0-1) over the seam pixels: quantiles, and the share below lo."""
    from qk_train.eval.metrics import dilate

    ds = [(np.abs(o.decoded - o.source_decoded).mean(0) / 2)[(pix[0, 0] > 0.5) & ~dilate(e.mask, SEAM_DILATE_PX)]
          for e, o, pix in zip(samples, outs, pixs)]
    d = np.concatenate(ds) if ds else np.zeros(1)
    q = np.quantile(d, [0.5, 0.75, 0.9, 0.95, 0.99])
    return {"quantiles": dict(zip(("50", "75", "90", "95", "99"), map(float, q))), "below_lo": float((d < lo).mean())}


def flips(before: list[bool], after: list[bool]) -> dict:
    return {"lost": int(sum(b and not a for b, a in zip(before, after))),
            "gained": int(sum(a and not b for b, a in zip(before, after)))}


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.round((np.clip(img, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(1, 2, 0))


def composited(samples, outs, pixs, c) -> list[np.ndarray]:
    """Each edit's uint8 output under compositing `c`, from the pipeline's decoded images."""
    from qk_runtime.composite import composite

    images = []
    for e, o, pix in zip(samples, outs, pixs):
        src = (e.source.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]  # (1, 3, S, S)
        out = composite(o.decoded[None], src, pix, c, o.source_decoded[None])
        images.append(to_uint8(out[0]))
    return images


def sweep(samples, outs, pixs, grid, base_success) -> list[dict]:
    from qk_runtime.composite import Composite

    results = []
    for lo, hi, widen in grid:
        s = score(samples, composited(samples, outs, pixs, Composite("changed", lo, hi, widen)), pixs, base_success)
        results.append({"lo": lo, "hi": hi, "widen": widen, **{k: v for k, v in s.items() if not k.startswith("_")},
                        **flips(base_success, s["_success"])})
    return results


def markdown(doc: dict) -> str:
    b, a = doc["before"], doc["after"]
    bands = list(b["seam_by_distance"])
    lines = ["# Compositing inside the gate (seams)\n",
             f"Checkpoint `{doc['checkpoint']}` (torch reference pipeline, {doc['steps']} steps, gate threshold "
             f"{doc['gate_threshold']}); {doc['n']} validation edits with the box (`make_edit('val', i, 64, "
             f"kind=EDIT_KINDS[i % 5])`, seed i). Seam: mean |out - src| (0-1, mean over RGB) over the pixels inside "
             f"the gate and outside the true change mask dilated by {SEAM_DILATE_PX} px ({b['seam_pixels']} pixels in "
             f"{b['edits_with_seam_pixels']} edits), pooled; per edit, then averaged; pooled over the "
             f"{round(b['success'] * doc['n'])} edits that succeed with gate-only compositing. Success, drift, inside "
             f"error: `qk_train.eval.metrics.score_edit`. Machine: {doc['machine']}. Date: {doc['date']}. "
             f"Command: `{doc['command']}` ({doc['elapsed_s']:.0f} s).\n",
             "## Before and after\n",
             "| compositing | seam | seam per edit (mean / median) | seam, successful edits | success | drift | "
             "inside error | success lost / gained |",
             "|---|---|---|---|---|---|---|---|",
             f"| gate only (bundles without `composite`) | {b['seam']:.4f} | {b['seam_per_edit_mean']:.4f} / "
             f"{b['seam_per_edit_median']:.4f} | {b['seam_edits_successful_before']:.4f} | {b['success']:.3f} | "
             f"{b['drift']:.4f} | {b['inside_error']:.4f} | - |",
             f"| changed, lo {a['lo']}, hi {a['hi']}, widen {a['widen']} (the default) | {a['seam']:.4f} | "
             f"{a['seam_per_edit_mean']:.4f} / {a['seam_per_edit_median']:.4f} | {a['seam_edits_successful_before']:.4f} | "
             f"{a['success']:.3f} | {a['drift']:.4f} | {a['inside_error']:.4f} | {a['lost']} / {a['gained']} |",
             "\nSeam by chessboard distance from the true change mask (px; pooled, all edits):\n",
             "| compositing | " + " | ".join(bands) + " |", "|---|" + "---|" * len(bands)]
    for name, r in (("gate only", b), ("changed (the default)", a)):
        lines.append(f"| {name} | " + " | ".join(f"{r['seam_by_distance'][k]['seam']:.4f} ({r['seam_by_distance'][k]['pixels']} px)"
                                                 for k in bands) + " |")
    r = a["residual_by_weight"]
    lines.append("\nWhere the seam left by the default lies, by its change weight w (share of the pooled sum; pixels): "
                 + ", ".join(f"{k}: {v['share']:.2f} ({v['pixels']} px)" for k, v in r.items())
                 + ". At w = 1 the decoded output differs from the decoded source by at least hi: the edit drew "
                 "there (an object larger or blurrier than the target, or misplaced), which compositing keeps.")
    same = [x for x in doc["sweep"] if (x["lo"], x["hi"], x["widen"]) == (a["lo"], a["hi"], 0)]
    safe = [x for x in doc["sweep"] if x["widen"] >= 1 and x["lost"] == 0]
    if same and safe:
        best = min(safe, key=lambda x: x["seam"])
        q = a["seam_differences"]
        lines.append(f"\nChoice: lo {a['lo']} lies above {q['below_lo']:.0%} of the seam pixels' differences between the "
                     f"decoded output and the decoded source (median {q['quantiles']['50']:.3f}, 90th percentile "
                     f"{q['quantiles']['90']:.3f}; mostly the decoder's drift where it redraws the background), hi "
                     f"{a['hi']} below the smallest ShapeWorld colour change (yellow / orange, 0.118 on this scale); one "
                     f"widening keeps object edges (inside error {a['inside_error']:.4f}, gate only "
                     f"{b['inside_error']:.4f}, without widening {same[0]['inside_error']:.4f}). The lowest seam with "
                     f"widening and no edit lost in the sweep: {best['seam']:.4f} (lo {best['lo']}, hi {best['hi']}, "
                     f"widen {best['widen']}).")
    lines += ["\n## Sweep\n",
              "| lo | hi | widen | seam | seam per edit | seam, successful edits | success | inside error | success lost / gained |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["sweep"]:
        lines.append(f"| {r['lo']} | {r['hi']} | {r['widen']} | {r['seam']:.4f} | {r['seam_per_edit_mean']:.4f} | "
                     f"{r['seam_edits_successful_before']:.4f} | {r['success']:.3f} | {r['inside_error']:.4f} | "
                     f"{r['lost']} / {r['gained']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seam_compositing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "engines/default/checkpoint")
    p.add_argument("--n", type=int, default=200, help="validation edits")
    p.add_argument("--batch", type=int, default=8, help="edits per pipeline call")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--lo", type=floats, default=[0.02, 0.03, 0.04, 0.05, 0.06, 0.08])
    p.add_argument("--hi-over-lo", type=floats, default=[1.5, 2.0, 3.0], help="hi = lo * each")
    p.add_argument("--widen", type=ints, default=[0, 1, 2])
    p.add_argument("--machine", default="cpu-2core")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<machine>")
    args = p.parse_args(argv)
    if args.n < 1 or args.batch < 1:
        p.error("--n and --batch must be at least 1")

    import torch

    from qk_bench.machine import describe, summary_line
    from qk_bench.report import write_study
    from qk_runtime.composite import GATE_ONLY
    from qk_train.data.shapeworld import EDIT_KINDS, make_edit
    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    def log(msg: str) -> None:
        print(f"[seam_compositing {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    machine = f"{args.machine}: {summary_line(describe(args.machine))}"
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model = QKModel.from_checkpoint(args.checkpoint)
    samples = [make_edit("val", i, 64, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(args.n)]

    pipe = Pipeline(model)  # the default compositing; compositing does not change the sampling
    c = pipe.composite
    log(f"{args.n} edits, compositing {c.to_dict()}")
    outs = run_edits(pipe, samples, args.batch, log)
    side = samples[0].source.shape[0]
    pixs = [pixel_gate(o.gate, pipe.gate_threshold, side) for o in outs]
    before = score(samples, composited(samples, outs, pixs, GATE_ONLY), pixs)
    before = score(samples, composited(samples, outs, pixs, GATE_ONLY), pixs, before["_success"])
    after = score(samples, [o.image for o in outs], pixs, before["_success"])
    after = {"lo": c.lo, "hi": c.hi, "widen": c.widen, **after, **flips(before["_success"], after["_success"])}
    after["residual_by_weight"] = residual_by_weight(samples, outs, pixs, c)
    after["seam_differences"] = seam_differences(samples, outs, pixs, c.lo)
    grid = [(lo, round(lo * k, 4), w) for lo, k, w in itertools.product(args.lo, args.hi_over_lo, args.widen) if lo * k <= 1]
    log(f"sweep: {len(grid)} settings")
    table = sweep(samples, outs, pixs, grid, before["_success"])

    doc = {"checkpoint": str(args.checkpoint), "n": args.n, "split": "val", "box": True, "steps": pipe.steps,
           "gate_threshold": pipe.gate_threshold, "seam_dilate_px": SEAM_DILATE_PX,
           "before": {k: v for k, v in before.items() if not k.startswith("_")},
           "after": {k: v for k, v in after.items() if not k.startswith("_")},
           "sweep": table, "machine": machine, "date": time.strftime("%Y-%m-%d"),
           "elapsed_s": time.perf_counter() - t_start,
           "command": " ".join(["python benchmarks/seam_compositing.py", *(sys.argv[1:] if argv is None else argv)])}
    write_study(args.out_dir or REPO / "benchmarks" / "results" / args.machine, "seam_compositing", doc, markdown(doc))
    log(f"seam {before['seam']:.4f} -> {after['seam']:.4f}, success {before['success']:.3f} -> {after['success']:.3f} "
        f"({after['lost']} lost, {after['gained']} gained) on {args.n} val edits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
