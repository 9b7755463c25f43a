"""Which layers an INT8 bundle keeps in float: each choice measured, not assumed.

`qk-export --int8` quantizes every MatMul/Gemm of the decoder, gateway and CMG except three
groups (`qk_export.quantize.FLOAT_GROUPS`): `adaln` (timestep embedding and adaLN modulation),
`io` (input and output projections) and `attention` (the score and value MatMuls of two
activations). This script exports one INT8 region bundle per choice from one checkpoint (the
default, each group quantized alone, all of them quantized) plus the FP32 bundle, and measures
per bundle:

- the held-out INT8 error the export records (decoder, gateway, CMG; `manifest.json` parity),
- edit success and drift with `qk-eval` on the **validation** split (never `test`), region box
  given, through ONNX Runtime with the region decoder, as the shipped bundle runs,
- the decoder step (dense and region, the edit's batch) in ONNX Runtime, every bundle called in
  turn for several rounds in one process, so the ratios share the machine's load.

    python benchmarks/int8_float_study.py                      # shipped checkpoint, 500 val edits each
    python benchmarks/int8_float_study.py --n 100 --variants default,none

Writes benchmarks/results/<machine>/int8_float_study.{json,md}. Bundles are kept in --work
(default benchmarks/.cache/int8_float_study) and reused when their manifest says they were made
from the same checkpoint with the same settings.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # qk_bench.workload: decoder feeds from a bundle's contract

# name -> groups kept in float (None: the FP32 bundle)
VARIANTS: dict[str, tuple[str, ...] | None] = {
    "fp32": None,
    "default": ("adaln", "io", "attention"),
    "adaln_int8": ("io", "attention"),
    "io_int8": ("adaln", "attention"),
    "attention_int8": ("adaln", "io"),
    "none": (),
}


def words(text: str) -> list[str]:
    out = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in out if w not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return out


def bundle_for(name: str, checkpoint: Path, work: Path, calib_samples: int, log) -> Path:
    """The variant's region bundle, exported unless a matching one is already in `work`."""
    from qk_export.bundle import export_bundle
    from qk_train import checkpoint as ckpt

    groups = VARIANTS[name]
    out = work / name
    want = {"sha": ckpt.sha256_file(checkpoint / ckpt.MODEL_FILE), "groups": None if groups is None else sorted(groups),
            "calib": calib_samples if groups is not None else None}
    manifest = out / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        have = {"sha": m["source"]["sha256"],
                "groups": sorted(m["quantization"]["float_groups"]) if m.get("quantization") else None,
                "calib": m["quantization"]["calibration"]["samples"] if m.get("quantization") else None}
        if have == want:
            log(f"{name}: reusing {out}")
            return out
    log(f"{name}: exporting ({'fp32' if groups is None else 'int8, float: ' + (','.join(groups) or 'none')})")
    export_bundle(checkpoint, out, int8=groups is not None, sparse_attn="region", calib_samples=calib_samples,
                  int8_float=groups, int8_strict=False)
    return out


def parity(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for graph in ("decoder", "decoder_region", "gateway", "cmg"):
        r = m["parity"].get(graph, {})
        out[graph] = r.get("mean_abs_over_std", r.get("mean_abs")) if m["precision"] == "int8" else None
        if r.get("problem"):
            out[f"{graph}_problem"] = r["problem"]
    q = m.get("quantization") or {}
    out["kept_float_nodes"] = {g: len(v) for g, v in (q.get("kept_float_nodes") or {}).items()}
    return out


def evaluate(bundle: Path, n: int, seed: int, threads: int | None) -> dict:
    """qk-eval on the validation split with the region box, ONNX Runtime, region decoder."""
    out = bundle / "qk_eval_val.json"
    cmd = [sys.executable, "-m", "qk_train.eval.evaluate", "--model", str(bundle), "--split", "val", "--n", str(n),
           "--gen-n", "0", "--box-only", "--backend", "ort", "--sparse", "region", "--seed", str(seed),
           "--json", str(out), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    r = json.loads(out.read_text())
    return {"edit_success": r["edit_success"]["box"], "drift": r["drift"]["box"], "eval_s": time.perf_counter() - t0}


def step_times(bundles: dict[str, Path], rounds: int, calls: int, threads: int) -> dict:
    """Median ms of the dense and the region decoder step per bundle, called in turn."""
    import numpy as np
    import onnxruntime as ort

    from qk_bench.workload import graph_feeds
    from qk_runtime.bundle import open_bundle
    from qk_runtime.sampler import edit_branches

    sessions = {}
    for name, folder in bundles.items():
        b = open_bundle(folder)
        batch = edit_branches(b.sampler.image_guidance)
        tokens = (b.dims.image_size // b.dims.factor // b.dims.patch) ** 2
        for graph, active in (("decoder", None), ("decoder_region", tokens // 2)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(b.graphs[graph].path), opts, providers=["CPUExecutionProvider"])
            feeds = graph_feeds(b.graphs[graph].inputs, batch, active)
            sess.run(None, feeds)  # warm-up
            sessions[(name, graph)] = (sess, feeds)
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, (sess, feeds) in sessions.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                sess.run(None, feeds)
            times[key].append((time.perf_counter() - t0) * 1000.0 / calls)
    out: dict[str, dict] = {}
    for (name, graph), ts in times.items():
        out.setdefault(name, {})[f"{graph}_ms"] = float(np.median(ts))
    return out


def markdown(doc: dict) -> str:
    L = ["# INT8: which layers stay float", "",
         f"Checkpoint `{doc['checkpoint']}`; {doc['n']} validation edits per bundle with the region box (qk-eval "
         f"`--split val --box-only --backend ort --sparse region`); decoder steps in ONNX Runtime, "
         f"{doc['threads']} threads, batch {doc['batch']}, {doc['rounds']} rounds in turn. Machine: {doc['machine']}. "
         f"{doc['wall_min']:.0f} min.", "",
         "| bundle | kept in float | decoder error (of std) | gateway | CMG (prob.) | edit success | colour | remove | insert | move | resize | drift | dense step ms | region step ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        e, p, s = row["eval"]["edit_success"], row["parity"], row["steps"]
        err = (lambda v: "–" if v is None else f"{v:.3f}")
        L.append(f"| {row['name']} | {row['float']} | {err(p['decoder'])} | {err(p['gateway'])} | {err(p['cmg'])} | "
                 f"{e['overall']:.3f} | " + " | ".join(f"{e[k]:.2f}" for k in ("colour", "remove", "insert", "move", "resize"))
                 + f" | {row['eval']['drift']:.4f} | {s['decoder_ms']:.2f} | {s['decoder_region_ms']:.2f} |")
    L += ["", f"One row's edit success is +-{doc['stderr_points']:.1f} points (one standard error at n = {doc['n']}).", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "engines" / "default" / "checkpoint", help="checkpoint folder")
    p.add_argument("--variants", type=words, default=list(VARIANTS), help="comma-separated, from " + ", ".join(VARIANTS))
    p.add_argument("--n", type=int, default=500, help="validation edits per bundle (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-samples", type=int, default=64, help="as qk-export's default (64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="rounds of decoder-step calls, bundles in turn (default 15)")
    p.add_argument("--machine", default="cpu-2core")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".cache" / "int8_float_study")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<machine>")
    args = p.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        p.error("--n and --rounds must be >= 1")
    if not (args.model / "model.safetensors").is_file():
        p.error(f"--model {args.model}: not a checkpoint folder (needs model.safetensors)")

    def log(msg: str) -> None:
        print(f"int8_float_study: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = {name: bundle_for(name, args.model, args.work, args.calib_samples, log) for name in args.variants}
    rows = []
    for name, folder in bundles.items():
        log(f"{name}: qk-eval, {args.n} val edits")
        groups = VARIANTS[name]
        rows.append({"name": name, "float": "all (FP32)" if groups is None else (", ".join(groups) or "nothing"),
                     "float_groups": groups, "bundle": str(folder), "parity": parity(folder),
                     "eval": evaluate(folder, args.n, args.seed, args.threads)})
    log("decoder steps, bundles in turn")
    steps = step_times(bundles, args.rounds, 5, args.threads)
    for row in rows:
        row["steps"] = steps[row["name"]]
    from qk_bench.machine import describe, summary_line
    from qk_bench.report import write_study
    from qk_runtime.bundle import open_bundle
    from qk_runtime.sampler import edit_branches

    first = open_bundle(next(iter(bundles.values())))
    doc = {"checkpoint": str(args.model), "n": args.n, "split": "val", "seed": args.seed, "threads": args.threads,
           "rounds": args.rounds, "batch": edit_branches(first.sampler.image_guidance),
           "machine": f"{args.machine}: {summary_line(describe(args.machine))}",
           "stderr_points": 100 * (0.25 / args.n) ** 0.5, "rows": rows, "wall_min": (time.perf_counter() - t0) / 60}
    write_study(args.out_dir or REPO / "benchmarks" / "results" / args.machine, "int8_float_study", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
