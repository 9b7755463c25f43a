"""Which nodes an FP16 bundle keeps in float32: each group measured against torch FP32.

`qk-export --fp16` runs every node in float16 except the groups of `qk_export.fp16.FLOAT_GROUPS`
(`norm`, `softmax`, `time`, `gating`). This script exports each graph of a checkpoint once in
FP32, converts it once per variant (every node in float16; one group kept in float32; all of
them, the default) and measures each against its torch FP32 module on the export's random
inputs (`qk_export.parity.fp16_parity`): mean abs error over the output's standard deviation and
max abs error, in float16 arithmetic (onnx's reference evaluator: numpy in the graph's own types,
every float16 node's result rounded to float16, as on a GPU) and in ONNX Runtime's CPU provider
(which runs most float16 nodes in float32 behind casts, so its figures are the smaller ones).

    python benchmarks/fp16_groups.py                         # the shipped checkpoint
    python benchmarks/fp16_groups.py --model runs/small/final --graphs decoder,gateway

Writes benchmarks/results/<machine>/fp16_groups.{json,md}. The text encoder is left out by
default: the shipped bundles share the INT8 bundle's weight-only INT8 encoder.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from qk_bench.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, tuple[str, ...]] = {
    "all_fp16": (),
    "norm": ("norm",),
    "softmax": ("softmax",),
    "time": ("time",),
    "gating": ("gating",),
    "default": ("norm", "softmax", "time", "gating"),
}


def measure(checkpoint: Path, graphs: list[str] | None, variants: dict[str, tuple[str, ...]], log=print) -> dict:
    import torch

    from qk_export.bundle import load_model
    from qk_export.exporter import export_onnx
    from qk_export.fp16 import convert_file
    from qk_export.graphs import model_specs, sample_inputs, wrap
    from qk_export.parity import fp16_parity

    torch.set_num_threads(1)
    model = load_model(checkpoint, "region", None)
    specs = model_specs(model, region=True)
    names = graphs or [n for n in specs if n != "text_encoder"]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"--graphs {unknown}: not graphs of this checkpoint's bundle ({', '.join(specs)})")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fp16_groups.") as tmp:
        tmp = Path(tmp)
        for i, (name, spec) in enumerate(specs.items()):
            if name not in names:
                continue
            fp32 = tmp / f"fp32-{spec.file}"
            export_onnx(wrap(model, spec), spec, sample_inputs(spec, model, torch.Generator().manual_seed(1000 + i)), fp32, 20)
            for variant, groups in variants.items():
                path = tmp / f"{variant}-{spec.file}"
                shutil.copyfile(fp32, path)
                t0 = time.perf_counter()
                counts = convert_file(path, groups, name)
                r = fp16_parity(wrap(model, spec), spec, path, model, seed=2000 + i)  # the export's inputs
                rows.setdefault(name, {})[variant] = {
                    "float_groups": list(groups), "nodes_fp32": counts["float_nodes"],
                    "nodes": counts["float_nodes"] + counts["half_nodes"], "casts": counts["casts"],
                    "half_mean_abs_over_std": r["half_arithmetic"]["mean_abs_over_std"],
                    "half_max_abs": r["half_arithmetic"]["max_abs"],
                    "ort_mean_abs_over_std": r["mean_abs_over_std"], "ort_max_abs": r["max_abs"],
                }
                log(f"{name:14s} {variant:9s} float16 arithmetic {r['half_arithmetic']['mean_abs_over_std']:.2e} of std, "
                    f"max abs {r['half_arithmetic']['max_abs']:.2e}; ONNX Runtime CPU {r['mean_abs_over_std']:.2e} "
                    f"({time.perf_counter() - t0:.1f} s)")
                path.unlink()
    return rows


def markdown(result: dict) -> str:
    variants = list(next(iter(result["graphs"].values())))
    lines = [f"# FP16 float32 groups against torch FP32 ({result['machine']}, {result['date']})", "",
             f"Checkpoint `{result['checkpoint']}`; inputs: each graph's export check inputs (random, batch = profile max). "
             "Mean abs error / std of the torch output (largest over the graph's outputs), float16 arithmetic "
             "(numpy reference evaluator); in brackets ONNX Runtime's CPU provider.", "",
             "| graph | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for graph, row in result["graphs"].items():
        cells = [f"{row[v]['half_mean_abs_over_std']:.2e} ({row[v]['ort_mean_abs_over_std']:.1e})" for v in variants]
        lines.append(f"| {graph} | " + " | ".join(cells) + " |")
    lines += ["", "Max abs error (float16 arithmetic):", "", "| graph | " + " | ".join(variants) + " |",
              "|---|" + "---|" * len(variants)]
    for graph, row in result["graphs"].items():
        lines.append(f"| {graph} | " + " | ".join(f"{row[v]['half_max_abs']:.2e}" for v in variants) + " |")
    lines += ["", "Nodes kept in float32 / all nodes:", "", "| graph | " + " | ".join(variants) + " |",
              "|---|" + "---|" * len(variants)]
    for graph, row in result["graphs"].items():
        lines.append(f"| {graph} | " + " | ".join(f"{row[v]['nodes_fp32']}/{row[v]['nodes']}" for v in variants) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "engines" / "default" / "checkpoint")
    p.add_argument("--graphs", default=None, help="comma-separated graph names (default: all but the text encoder)")
    p.add_argument("--machine", default="cpu-2core", help="results folder name under benchmarks/results")
    args = p.parse_args(argv)
    graphs = [g for g in args.graphs.split(",") if g] if args.graphs else None
    t0 = time.perf_counter()
    rows = measure(args.model, graphs, VARIANTS)
    result = {"checkpoint": str(args.model.resolve().relative_to(REPO)) if args.model.resolve().is_relative_to(REPO) else str(args.model),
              "machine": f"{args.machine} ({cpu_model()}, {os.cpu_count()} cores)",
              "date": datetime.date.today().isoformat(), "variants": {k: list(v) for k, v in VARIANTS.items()},
              "graphs": rows, "seconds": round(time.perf_counter() - t0, 1)}
    out = REPO / "benchmarks" / "results" / args.machine
    out.mkdir(parents=True, exist_ok=True)
    (out / "fp16_groups.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "fp16_groups.md").write_text(markdown(result))
    print(f"fp16_groups: {len(rows)} graphs x {len(VARIANTS)} variants in {result['seconds']} s -> {out}/fp16_groups.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
