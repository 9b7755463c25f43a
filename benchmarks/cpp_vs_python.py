"""C++ runtime vs Python runtime on the same bundle and backend (ONNX Runtime, CPU), one run.

    python benchmarks/cpp_vs_python.py --bundle DIR [--edits 20] [--rounds 3] [--threads 1]
                                       [--sparse none|region] [--json OUT.json]

Both runtimes edit the same ShapeWorld test-split scenes (at the bundle's side) with the same
instructions, boxes and seeds. Each side's latency is its own `timings["total"]` of an edit
(preprocessing, every graph, the loop, postprocessing; images already in memory, no file I/O),
first edit of each round excluded (it encodes the empty string once). Rounds alternate C++ and
Python so that load from other work on the machine hits both alike. Also reports parity: the
largest per-pixel difference between the two outputs of each edit.

Needs the C++ build (runtime/cpp/build.sh) and qk_train (for the ShapeWorld scenes).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_jobs(folder: Path, side: int, n: int, sparse: str) -> list[dict]:
    from qk_train.data.shapeworld import make_edit

    jobs = []
    for i in range(n):
        e = make_edit("test", i, side=side)
        path = folder / f"src{i:02d}.png"
        Image.fromarray(e.source).save(path)
        jobs.append({"image": str(path), "instruction": e.instruction, "box": list(e.box), "seed": 1000 + i,
                     "steps": 0, "sparse": sparse, "out": str(folder / f"cpp{i:02d}.png")})
    return jobs


def run_cpp(probe: Path, bundle: Path, jobs: list[dict], folder: Path, threads: int) -> list[dict]:
    warm = dict(jobs[0], out=str(folder / "warm.png"))
    (folder / "jobs.json").write_text(json.dumps([warm] + jobs))
    run = subprocess.run([str(probe), "edits", str(bundle), str(folder / "jobs.json"), str(threads)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"qk_cpp_probe failed: {run.stdout}{run.stderr}")
    return json.loads(run.stdout)["results"][1:]


def run_python(session, jobs: list[dict]) -> tuple[list[dict], list[np.ndarray]]:
    images = [np.asarray(Image.open(j["image"]).convert("RGB")) for j in jobs]
    session.edit(images[0], jobs[0]["instruction"], box=tuple(jobs[0]["box"]), seed=jobs[0]["seed"], sparse=jobs[0]["sparse"])
    timings, outs = [], []
    for job, img in zip(jobs, images):
        r = session.edit(img, job["instruction"], box=tuple(job["box"]), seed=job["seed"], sparse=job["sparse"])
        timings.append(r.timings)
        outs.append(r.image)
    return timings, outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both sides")
    ap.add_argument("--sparse", choices=("none", "region"), default="none")
    ap.add_argument("--build", type=Path, default=ROOT / "runtime" / "cpp" / "build")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from qk_runtime import EditSession

    probe = args.build / "qk_cpp_probe"
    if not probe.is_file():
        raise SystemExit(f"{probe} is missing; build it with runtime/cpp/build.sh")
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    side = manifest["dims"]["image_size"]
    cpp_ms, py_ms, cpp_dec, py_dec, diffs = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="qk-cpp-bench-") as tmp, \
            EditSession(args.bundle, backend="ort-cpu", threads=args.threads) as session:
        folder = Path(tmp)
        jobs = make_jobs(folder, side, args.edits, args.sparse)
        for rnd in range(args.rounds):
            cpp = run_cpp(probe, args.bundle, jobs, folder, args.threads)
            py, outs = run_python(session, jobs)
            cpp_ms += [r["timings"]["total"] for r in cpp]
            cpp_dec += [r["timings"]["decoder"] for r in cpp]
            py_ms += [t["total"] for t in py]
            py_dec += [t["decoder"] for t in py]
            if rnd == 0:
                for job, out in zip(jobs, outs):
                    got = np.asarray(Image.open(job["out"]))
                    diffs.append(int(np.abs(got.astype(int) - out.astype(int)).max()))
    result = {
        "bundle": str(args.bundle), "precision": manifest["precision"], "side": side, "steps": manifest["sampler"]["steps"],
        "sparse": args.sparse, "threads": args.threads, "edits": args.edits, "rounds": args.rounds,
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "cpp_total_ms_median": statistics.median(cpp_ms), "python_total_ms_median": statistics.median(py_ms),
        "cpp_decoder_ms_median": statistics.median(cpp_dec), "python_decoder_ms_median": statistics.median(py_dec),
        "cpp_total_ms_p90": float(np.percentile(cpp_ms, 90)), "python_total_ms_p90": float(np.percentile(py_ms, 90)),
        "max_pixel_diff": max(diffs), "edits_identical": sum(d == 0 for d in diffs),
    }
    print(f"{'':10} {'total ms (median)':>18} {'p90':>8} {'decoder loop ms':>16}")
    print(f"{'C++':10} {result['cpp_total_ms_median']:18.2f} {result['cpp_total_ms_p90']:8.2f} {result['cpp_decoder_ms_median']:16.2f}")
    print(f"{'Python':10} {result['python_total_ms_median']:18.2f} {result['python_total_ms_p90']:8.2f} {result['python_decoder_ms_median']:16.2f}")
    print(f"cpp_vs_python: {manifest['precision']} bundle, {args.edits} edits x {args.rounds} rounds, {args.threads} thread(s): "
          f"C++ {result['cpp_total_ms_median']:.2f} ms vs Python {result['python_total_ms_median']:.2f} ms per edit "
          f"({result['python_total_ms_median'] / result['cpp_total_ms_median']:.2f}x); max pixel diff {result['max_pixel_diff']}, "
          f"{result['edits_identical']}/{len(diffs)} identical")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
