"""Edit latency of the Python runtime per backend (and of the torch reference, if asked), one run.

    python benchmarks/runtime_smoke.py --bundle DIR [--checkpoint CKPT] [--repeats 10] [--threads 2]

For each available CPU backend and sparse mode: the time to open a session, the first edit
(which includes OpenVINO's compilation for the shapes it meets), and the median of `repeats`
further 20-step edits, with the median per stage. With --checkpoint, the torch reference
pipeline (`qk_train.pipeline.Pipeline`, FP32 eager) is timed on the same image for comparison.
Prints a table and, with --json, writes the numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def scene(side: int) -> np.ndarray:
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (112, 112, 120)
    a, b = side // 4, side // 2
    img[a:b + a // 2, a:b] = (220, 40, 40)
    return img


def time_backend(bundle: Path, backend: str, sparse: str, repeats: int, threads: int | None, steps: int) -> dict:
    from qk_runtime import EditSession

    t0 = time.perf_counter()
    session = EditSession(bundle, backend=backend, threads=threads)
    open_ms = (time.perf_counter() - t0) * 1000
    side = session.side
    img, box = scene(side), (side // 8, side // 8, side // 2, side // 2)
    first = session.edit(img, "make the red square blue", box, seed=0, steps=steps, sparse=sparse)
    runs = [session.edit(img, "make the red square blue", box, seed=i + 1, steps=steps, sparse=sparse) for i in range(repeats)]
    session.close()
    stages = {k: statistics.median(r.timings[k] for r in runs) for k in runs[0].timings if k != "decoder_steps"}
    step = statistics.median(s for r in runs for s in r.timings["decoder_steps"])
    return {"backend": backend, "sparse": sparse, "open_ms": open_ms, "first_ms": first.timings["total"],
            "median_ms": stages["total"], "step_ms": step, "active_tokens": first.active_tokens, "stages_ms": stages}


def time_torch(checkpoint: Path, side_hint: int, repeats: int, threads: int | None, steps: int) -> dict:
    import torch

    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = Pipeline(QKModel.from_checkpoint(checkpoint))
    side = pipe.side
    img, box = scene(side), (side // 8, side // 8, side // 2, side // 2)
    pipe.edit(img, "make the red square blue", box, seed=0, steps=steps)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        pipe.edit(img, "make the red square blue", box, seed=i + 1, steps=steps)
        times.append((time.perf_counter() - t0) * 1000)
    return {"backend": "torch-reference", "sparse": "none", "median_ms": statistics.median(times), "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="also time the torch reference on this checkpoint")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from qk_runtime.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    backends = ["ort-cpu"] + (["ov-cpu"] if importlib.util.find_spec("openvino") else [])
    sparse_modes = ["none"] + (["region"] if bundle.has_region else [])
    rows = [time_backend(args.bundle, b, s, args.repeats, args.threads, args.steps) for b in backends for s in sparse_modes]
    if args.checkpoint:
        rows.append(time_torch(args.checkpoint, bundle.dims.image_size, args.repeats, args.threads, args.steps))

    print(f"bundle {args.bundle} ({bundle.precision}, {bundle.dims.tokens} tokens, width {bundle.dims.width}), "
          f"{args.steps} steps, threads {args.threads or 'default'}, {platform.processor() or platform.machine()}")
    print(f"{'backend':16} {'sparse':7} {'open ms':>8} {'first ms':>9} {'median ms':>10} {'step ms':>8} {'tokens':>6}")
    for r in rows:
        print(f"{r['backend']:16} {r['sparse']:7} {r.get('open_ms', float('nan')):8.1f} {r.get('first_ms', float('nan')):9.1f} "
              f"{r['median_ms']:10.1f} {r.get('step_ms', float('nan')):8.2f} {str(r.get('active_tokens') or '-'):>6}")
    best = min((r for r in rows if r["backend"] != "torch-reference"), key=lambda r: r["median_ms"])
    print(f"fastest: {best['backend']} sparse={best['sparse']} at {best['median_ms']:.1f} ms per edit (median of {args.repeats})")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
