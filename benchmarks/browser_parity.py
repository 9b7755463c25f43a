"""The in-browser runtime (runtime/web/, onnxruntime-web) against the Python runtime: pixels and latency.

    python benchmarks/browser_parity.py [--bundles engines/default/fp32 engines/default/int8] [--edits 20]
                                        [--generations 5] [--json benchmarks/results/cpu-2core/browser.json]
    python benchmarks/browser_parity.py --table-only      # browser.md again from browser.json, no measuring

For each bundle, one run: `qk-serve` on a free localhost port, headless Chromium (Playwright, Debian's
chromium) on its page switched to "in this browser" (the bundle fetched and checked once, onnxruntime-web
in a Web Worker, its default backend and threads), and `qk_runtime.EditSession` (ONNX Runtime CPU, one
thread per core) in this process. Both sides run the same ShapeWorld test-split edits (source PNG,
instruction, box, seed 1000 + i) and generations (a test-split caption, seed 2000 + i), alternating
edit by edit so that other work on the machine hits both alike; one warm-up edit and generation per
side are left out. Each side's latency is its runtime's own `timings["total"]` (PNG decoding,
every graph, the loop, compositing); the browser's round trip through the worker is reported beside
it. Parity: the largest per-pixel difference of each output (uint8 levels). Writes the JSON (machine,
date, per-stage medians, parity) and `browser.md` beside it (the table in runtime/web/README.md).
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from qk_bench.machine import cpu_model
from qk_runtime.backend import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cpu-2core" / "browser.json"
STAGES = ("preprocess", "image_encoder", "text_encoder", "gateway", "cmg", "decoder_cond", "decoder", "image_decoder",
          "postprocess", "total")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_flags() -> str:
    flags = cpu_flags()
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags) or "none of avx2 / avx512"


def make_jobs(folder: Path, side: int, edits: int, generations: int) -> tuple[list[dict], list[dict]]:
    from qk_train.data.shapeworld import caption, make_edit, make_scene

    edit_jobs = []
    for i in range(edits + 1):  # the first is the warm-up
        e = make_edit("test", i, side=side)
        path = folder / f"src{i:02d}.png"
        Image.fromarray(e.source).save(path)
        edit_jobs.append({"image": path, "instruction": e.instruction, "box": list(e.box), "seed": 1000 + i})
    gen_jobs = [{"prompt": caption(make_scene("test", 100 + i, side=side)), "seed": 2000 + i} for i in range(generations + 1)]
    return edit_jobs, gen_jobs


class Server:
    """qk-serve in a thread, on `session`."""

    def __init__(self, session):
        import uvicorn

        from qk_runtime.serve import ServeConfig, create_app

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(), session=session), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"qk-serve did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def _median_stages(timings: list[dict]) -> dict:
    return {k: round(statistics.median(t[k] for t in timings), 2) for k in STAGES if all(k in t for t in timings)}


def _label(manifest: dict) -> str:
    """The bundle's precision, "int8 weight-only" for a `qk-export --int8 --weight-only` bundle."""
    weight_only = (manifest.get("quantization") or {}).get("weight_only") or []
    return manifest["precision"] + (" weight-only" if "decoder" in weight_only else "")


def run_bundle(bundle: Path, page_factory, edits: int, generations: int) -> dict:
    from qk_runtime import EditSession

    manifest = json.loads((bundle / "manifest.json").read_text())
    side = manifest["dims"]["image_size"]
    with tempfile.TemporaryDirectory(prefix="qk-browser-") as tmp, EditSession(bundle, backend="ort-cpu") as session:
        edit_jobs, gen_jobs = make_jobs(Path(tmp), side, edits, generations)
        with Server(session) as url, page_factory(url) as page:
            page.goto(url + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            t0 = time.perf_counter()
            page.check("#mode-browser")
            page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=300_000)
            if page.get_attribute("body", "data-state") != "ready":
                raise SystemExit(f"the page could not load {bundle} in the browser: {page.inner_text('#status')}")
            load_s = time.perf_counter() - t0
            info = page.evaluate("window.qkPage.info()")
            rows = {"edit": [], "generate": []}
            for kind, jobs in (("edit", edit_jobs), ("generate", gen_jobs)):
                for i, job in enumerate(jobs):
                    if kind == "edit":
                        png = list(Path(job["image"]).read_bytes())
                        b = page.evaluate("""async ([png, instruction, box, seed]) =>
                            window.qkPage.edit({ png: new Uint8Array(png).buffer, instruction, box, seed: String(seed) })""",
                                          [png, job["instruction"], job["box"], job["seed"]])
                        p = session.edit(job["image"], job["instruction"], box=tuple(job["box"]), seed=job["seed"])
                    else:
                        b = page.evaluate("""async ([prompt, seed]) => window.qkPage.generate({ prompt, seed: String(seed) })""",
                                          [job["prompt"], job["seed"]])
                        p = session.generate(job["prompt"], seed=job["seed"])
                    got = np.asarray(Image.open(io.BytesIO(bytes(b["png"]))).convert("RGB"))
                    diff = np.abs(got.astype(np.int16) - p.image.astype(np.int16))
                    if i == 0:
                        continue  # warm-up
                    rows[kind].append({"max_diff": int(diff.max()), "levels_over_1": int((diff > 1).sum()),
                                       "mean_diff": float(diff.mean()), "browser": b["timings"], "python": p.timings,
                                       "round_trip_ms": b["roundTripMs"]})
                    print(f"  {bundle.name} {kind} {i}: browser {b['timings']['total']:.0f} ms, python {p.timings['total']:.0f} ms, "
                          f"max diff {int(diff.max())}", flush=True)
    edits_rows, gen_rows = rows["edit"], rows["generate"]
    e_b, e_p = _median_stages([r["browser"] for r in edits_rows]), _median_stages([r["python"] for r in edits_rows])
    g_b, g_p = _median_stages([r["browser"] for r in gen_rows]), _median_stages([r["python"] for r in gen_rows])
    return {
        "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle), "precision": _label(manifest),
        "format_version": manifest["format_version"], "side": side, "steps": manifest["sampler"]["steps"],
        "browser_backend": info["backend"], "browser_backend_reason": info["backendReason"], "browser_threads": info["threads"],
        "browser_open_ms": {k: round(v, 1) for k, v in info["openTimings"].items()}, "browser_load_s": round(load_s, 2),
        "python_threads": "one per core (ONNX Runtime default)",
        "edits": len(edits_rows), "generations": len(gen_rows),
        "max_pixel_diff": max(r["max_diff"] for r in edits_rows + gen_rows),
        "max_pixel_diff_edits": max(r["max_diff"] for r in edits_rows),
        "max_pixel_diff_generations": max(r["max_diff"] for r in gen_rows),
        "per_output_max_diff": {"edits": [r["max_diff"] for r in edits_rows], "generations": [r["max_diff"] for r in gen_rows]},
        "outputs_within_1_level": sum(r["max_diff"] <= 1 for r in edits_rows + gen_rows),
        "mean_abs_diff_edits": round(statistics.mean(r["mean_diff"] for r in edits_rows), 4),
        "edit_ms_browser": e_b["total"], "edit_ms_python": e_p["total"],
        "edit_ratio_browser_over_python": round(e_b["total"] / e_p["total"], 2),
        "edit_round_trip_ms_browser": round(statistics.median(r["round_trip_ms"] for r in edits_rows), 2),
        "generate_ms_browser": g_b["total"], "generate_ms_python": g_p["total"],
        "edit_stages_ms_browser": e_b, "edit_stages_ms_python": e_p,
        "generate_stages_ms_browser": g_b, "generate_stages_ms_python": g_p,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, {m['browser']}, onnxruntime-web {m['onnxruntime_web']} vs onnxruntime "
             f"{m['onnxruntime']}, {result['date']} (load average {m['load_average_at_start']} at the start: "
             f"{m['note']}).", "",
             "| bundle | browser backend | edit ms, browser | edit ms, Python | ratio | generation ms, browser / Python "
             "| max pixel diff, edits / generations | outputs within 1 level |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["bundles"].items():
        threads = f"{r['browser_threads']} thread" + ("s" if r["browser_threads"] != 1 else "")
        lines.append(f"| {name} | {r['browser_backend']}, {threads} | {r['edit_ms_browser']:.0f} | "
                     f"{r['edit_ms_python']:.0f} | {r['edit_ratio_browser_over_python']:.1f}x | {r['generate_ms_browser']:.0f} / "
                     f"{r['generate_ms_python']:.0f} | {r['max_pixel_diff_edits']} / {r['max_pixel_diff_generations']} | "
                     f"{r['outputs_within_1_level']} of {r['edits'] + r['generations']} |")
    lines += ["", "Median edit, ms per stage (browser / Python):", "",
              "| stage | " + " | ".join(result["bundles"]) + " |", "|---|" + "---|" * len(result["bundles"])]
    for stage in STAGES:
        cells = []
        for r in result["bundles"].values():
            b, p = r["edit_stages_ms_browser"].get(stage), r["edit_stages_ms_python"].get(stage)
            cells.append("" if b is None or p is None else f"{b:.1f} / {p:.1f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Atomically: a temporary name in the same folder, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=Path, nargs="+", default=[ROOT / "engines/default/fp32", ROOT / "engines/default/int8"])
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--table-only", action="store_true", help="write the .md table from an existing --json, measure nothing")
    args = ap.parse_args(argv)
    if args.table_only:
        table = markdown(json.loads(args.json.read_text()))
        _write(args.json.with_suffix(".md"), table)
        print(table)
        return 0
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is not installed: pip install -c constraints.txt -e '.[dev]'") from None
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    import onnxruntime

    from qk_runtime.serve.web import find_ort_web

    ort_web = find_ort_web()
    if not ort_web.available:
        raise SystemExit(ort_web.reason)
    load = os.getloadavg()[0]
    result = {"date": datetime.date.today().isoformat(), "command": "python benchmarks/browser_parity.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu": cpu_model(), "cpu_flags": _cpu_flags(), "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
                          "onnxruntime_web": ort_web.version, "load_average_at_start": round(load, 2),
                          "note": "shared with a training run" if load > 1.0 else "idle"},
              "bundles": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        result["machine"]["browser"] = f"Chromium {browser.version} (headless)"

        class PageFactory:
            def __init__(self, url):
                self.context = None

            def __enter__(self):
                self.context = browser.new_context()
                return self.context.new_page()

            def __exit__(self, *exc):
                self.context.close()

        for bundle in args.bundles:
            r = run_bundle(bundle.resolve(), PageFactory, args.edits, args.generations)
            result["bundles"][r["precision"]] = r
            print(f"browser_parity: {r['precision']}: edit {r['edit_ms_browser']:.0f} ms in the browser vs {r['edit_ms_python']:.0f} ms "
                  f"in Python ({r['edit_ratio_browser_over_python']:.1f}x); max pixel diff {r['max_pixel_diff']} "
                  f"({r['outputs_within_1_level']} of {r['edits'] + r['generations']} outputs within 1 level)", flush=True)
        browser.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    _write(args.json, json.dumps(result, indent=2) + "\n")
    _write(args.json.with_suffix(".md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
