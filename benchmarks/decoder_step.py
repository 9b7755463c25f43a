"""Decoder step: FP32 vs INT8 and dense vs region, ONNX Runtime and OpenVINO, one run.

    python benchmarks/decoder_step.py [--fp32 engines/default/fp32] [--int8 engines/default/int8]
                                      [--repeats 40] [--threads 2] [--json OUT]

Runs the bundles' `decoder.onnx` and `decoder_region.onnx` at the guidance batch (3) on the
same random inputs, interleaved round-robin so that a noisy, shared machine slows every
configuration alike, and reports medians and ratios: INT8 over FP32 (target >= 1.7x on the
default CPU backend) and region over dense for an edit whose gate covers a quarter of the
image (>= 2.5x). The region decoder gets the token indices the runtime would pass
(`qk_runtime.session.active_token_indices`: the gate's tokens, a one-token halo, rounded up
to a bucket). Saves JSON to benchmarks/results/cpu-2core/decoder_step.json by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from qk_runtime.bundle import open_bundle
from qk_runtime.engines import atomic_write
from qk_runtime.session import active_token_indices

ROOT = Path(__file__).resolve().parents[1]


def _feeds(graph, batch: int, rng, active: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {}
    for t in graph.inputs:
        if t.name == "active":
            feeds[t.name] = np.tile(active[None], (batch, 1))
            continue
        shape = [batch if not isinstance(d, int) else d for d in t.shape]
        feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    feeds["sigma"] = np.full(batch, 0.5, np.float32)
    if "text_mask" in feeds:
        feeds["text_mask"] = np.ones_like(feeds["text_mask"])
    return feeds


def _runner(engine: str, path: Path, threads: int):
    if engine == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="decoder_step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, default=ROOT / "engines/default/fp32")
    p.add_argument("--int8", type=Path, default=ROOT / "engines/default/int8")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=3, help="guidance batch (default 3: edit)")
    p.add_argument("--engines", default="ort,ov", help="comma list of ort, ov (default both)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cpu-2core/decoder_step.json")
    args = p.parse_args(argv)

    bundles = {"fp32": open_bundle(args.fp32), "int8": open_bundle(args.int8)}
    manifest = json.loads((args.int8 / "manifest.json").read_text())
    lat = bundles["int8"].graphs["decoder"].inputs[0].shape[-1]  # latent side
    grid = lat // int(manifest["model_config"]["decoder"]["patch"])  # token grid side
    quarter = np.zeros((grid, grid), bool)
    quarter[: grid // 2, : grid // 2] = True  # a gate over a quarter of the image
    active = active_token_indices(quarter, grid, grid)
    rng = np.random.default_rng(0)
    configs = []
    for engine in args.engines.split(","):
        for precision, bundle in bundles.items():
            for sparse in ("dense", "region"):
                name = "decoder" if sparse == "dense" else "decoder_region"
                if name not in bundle.graphs:
                    continue
                g = bundle.graphs[name]
                feeds = _feeds(g, args.batch, rng, active if sparse == "region" else None)
                run = _runner(engine, g.path, args.threads)
                run(feeds)  # warm-up
                configs.append({"engine": engine, "precision": precision, "sparse": sparse, "run": run, "feeds": feeds,
                                "times": []})
    for _ in range(args.repeats):
        for c in configs:
            t0 = time.perf_counter()
            c["run"](c["feeds"])
            c["times"].append((time.perf_counter() - t0) * 1000.0)
    rows = []
    for c in configs:
        t = np.array(c["times"][max(1, args.repeats // 10):])
        rows.append({"engine": c["engine"], "precision": c["precision"], "sparse": c["sparse"],
                     "ms_median": float(np.median(t)), "ms_p90": float(np.percentile(t, 90))})
    med = {(r["engine"], r["precision"], r["sparse"]): r["ms_median"] for r in rows}
    ratios = {}
    for engine in args.engines.split(","):
        for sparse in ("dense", "region"):
            if (engine, "fp32", sparse) in med and (engine, "int8", sparse) in med:
                ratios[f"{engine} int8 vs fp32 ({sparse})"] = med[(engine, "fp32", sparse)] / med[(engine, "int8", sparse)]
        for precision in ("fp32", "int8"):
            if (engine, precision, "region") in med:
                ratios[f"{engine} {precision} region (25 % gate, {active.size} of {grid * grid} tokens) vs dense"] = \
                    med[(engine, precision, "dense")] / med[(engine, precision, "region")]
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_average": os.getloadavg()},
           "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "tokens": grid * grid,
           "region_tokens": int(active.size), "configs": rows, "ratios": ratios,
           "command": "python benchmarks/decoder_step.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for r in rows:
        print(f"{r['engine']:4s} {r['precision']:5s} {r['sparse']:7s} {r['ms_median']:8.2f} ms (p90 {r['ms_p90']:.2f})")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(out, indent=2) + "\n").encode())
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
