"""One benchmark run, start to end, in the order that keeps its ratios comparable:

1. describe the machine; choose the configurations (and record why others are skipped);
2. prepare the bundles they read (cached export, `bundles.py`);
3. import time (`python -c "import qk_runtime"`, fresh interpreters) and the machine's peak
   (`peak.py`), in this run so that they see the same load as the configurations;
4. every configuration in its own process (`worker.py`), the torch reference first (the others
   compare their images with its outputs), then the decoder graphs side by side; with `rounds` > 1
   all of that again, round-robin, timing only (quality is measured in round 1);
5. scaling points (`scaling.py`), each in its own process;
6. the report: `bench.json`, `bench.md`, `bench.png`, `scaling.json`, `scaling.png`.

This process imports neither torch nor a runtime backend; workers do.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qk_runtime.errors import InputError
from qk_runtime.inputs import check_threads

from . import bundles as bundles_mod
from .configs import FRACTIONS, QUICK_FRACTIONS, BenchConfig, cpu_flags, select
from .machine import describe, summary_line

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "engines" / "default" / "checkpoint"
DEFAULT_CACHE = REPO_ROOT / "benchmarks" / ".cache"
RESULTS = REPO_ROOT / "benchmarks" / "results"
IMPORT_PROBES = {  # what a fresh interpreter imports, timed from outside
    "python": "pass",
    "qk_runtime": "import qk_runtime",
    "qk_runtime+onnxruntime": "import qk_runtime, onnxruntime",
    "qk_runtime+openvino": "import qk_runtime, openvino",
    "torch reference (qk_train.pipeline)": "import qk_train.pipeline",
}


class BenchError(RuntimeError):
    """A run that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Options:
    model: Path = DEFAULT_MODEL
    machine: str = "cpu-2core"
    out_dir: Path | None = None  # default: benchmarks/results/<machine>
    json_path: Path | None = None
    cache: Path = DEFAULT_CACHE
    quick: bool = False
    threads: int = 2
    steps: int = 20
    repeats: int = 4
    micro_repeats: int = 20
    quality_n: int = 15
    fractions: tuple[float, ...] = FRACTIONS
    configs: tuple[str, ...] | None = None
    calib_samples: int = 16
    weight_bits: int = 7
    scaling: bool = True
    scaling_presets: tuple[str, ...] = ("small", "base")
    scaling_sides: tuple[int, ...] = (64, 128, 256)
    scaling_modes: tuple[str, ...] = ("dense", "window", "region")
    scaling_repeats: int = 3
    peak_size: int = 1024
    import_repeats: int = 5
    timeout_s: int = 900
    prepare_only: bool = False
    rounds: int = 1  # every configuration this many times, round-robin; targets from the median round
    spin: bool = False  # idle threads spin: ONNX Runtime allow_spinning, torch OMP_WAIT_POLICY=ACTIVE (a dedicated CPU)
    log: object = field(default=print, compare=False)

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else RESULTS / self.machine


def quick_options(**overrides) -> dict:
    """The settings `--quick` changes (a few minutes on a 2-core CPU)."""
    base = {"repeats": 2, "micro_repeats": 8, "quality_n": 5, "fractions": QUICK_FRACTIONS,
            "scaling_presets": ("small",), "scaling_sides": (64, 128), "scaling_modes": ("dense", "region"),
            "scaling_repeats": 2, "peak_size": 768, "import_repeats": 2}
    base.update(overrides)
    return base


def worker_env(run_dir: Path, name: str, spin: bool = False) -> dict:
    env = dict(os.environ)
    # workers import this very qk_bench, whatever the installed package maps (an editable install
    # made from another checkout would otherwise hide it)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # torch's OpenMP threads must not spin on a shared CPU; with --spin every engine's threads do
    env["OMP_WAIT_POLICY"] = "ACTIVE" if spin else env.get("OMP_WAIT_POLICY", "PASSIVE")
    env["QK_RUNTIME_CACHE"] = str(run_dir / "runtime-cache" / name)  # an empty OpenVINO compile cache: cold starts are cold
    return env


def run_worker(spec: dict, run_dir: Path, name: str, timeout_s: int, spin: bool = False) -> dict:
    """Run `python -m qk_bench.worker` on `spec`; its result, or {"error": ...}."""
    spec_path, out_path = run_dir / f"{name}.spec.json", run_dir / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "qk_bench.worker", str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout_s, env=worker_env(run_dir, name, spin), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s (raise --timeout-s)"}
    try:
        result = json.loads(out_path.read_text())
    except (OSError, ValueError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        return {"error": f"worker exited {proc.returncode} without a result: " + " | ".join(tail)}
    result.setdefault("process_s", time.perf_counter() - t0)
    return result


def import_times(repeats: int) -> dict:
    """Median wall time of fresh interpreters importing each probe (ms), and minus bare python."""
    out = {}
    for name, code in IMPORT_PROBES.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
            times.append((time.perf_counter() - t0) * 1000.0)
            if run.returncode != 0:
                times = None
                break
        out[name] = {"ms_median": statistics.median(times), "ms_all": times} if times else {"error": "import failed"}
    base = out["python"].get("ms_median", 0.0)
    for name, r in out.items():
        if name != "python" and "ms_median" in r:
            r["ms_over_python"] = r["ms_median"] - base
    return out


def _progress(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


def _say(opts: Options, msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        opts.log(msg)


def run(opts: Options) -> dict:
    t_start = time.perf_counter()
    model = Path(opts.model)
    if not (model / "model.safetensors").is_file() or not (model / "hyperparameters.yaml").is_file():
        raise BenchError(f"--model {model} is not a checkpoint folder (needs model.safetensors and hyperparameters.yaml); "
                         f"pass the folder qk-train wrote (its final/), e.g. engines/default/checkpoint")
    if opts.threads < 1 or opts.steps < 1 or opts.repeats < 1 or opts.rounds < 1:
        raise BenchError(f"--threads, --steps, --repeats and --rounds must be >= 1 "
                         f"(got {opts.threads}, {opts.steps}, {opts.repeats}, {opts.rounds})")
    try:  # the runtime's rule, up front rather than in every configuration's worker
        check_threads(opts.threads)
    except InputError as exc:
        raise BenchError(f"--{exc}") from None
    machine = describe(opts.machine)
    _say(opts, f"qk-bench: {summary_line(machine)}")
    try:
        configs, skipped = select(list(opts.configs) if opts.configs else None, quick=opts.quick, flags=cpu_flags())
    except ValueError as exc:
        raise BenchError(str(exc)) from exc

    variants = sorted({c.bundle_variant for c in configs if c.bundle_variant})
    t0 = time.perf_counter()
    try:
        folders = bundles_mod.prepare(model, Path(opts.cache), variants, calib_samples=opts.calib_samples,
                                      weight_bits=opts.weight_bits, log=lambda m: _say(opts, m), env=bundles_mod.bundle_env())
    except bundles_mod.BundleError as exc:
        raise BenchError(str(exc)) from exc
    prepare_s = time.perf_counter() - t0
    bundle_info = {v: {"path": str(p), "export": bundles_mod.export_record(p)} for v, p in folders.items()}
    if opts.prepare_only:
        _say(opts, f"qk-bench: bundles ready ({', '.join(variants) or 'none needed'}) in {prepare_s:.0f} s")
        return {"bundles": bundle_info}

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_mkdir(Path(opts.cache) / "runs")))
    try:
        doc = _measure(opts, model, machine, configs, skipped, folders, bundle_info, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    doc["run"]["bundle_prepare_s"] = prepare_s
    doc["run"]["wall_s"] = time.perf_counter() - t_start

    from .report import write_all

    written = write_all(doc, opts.results_dir, opts.json_path)
    doc["written"] = [str(p) for p in written]
    return doc


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _measure(opts: Options, model: Path, machine: dict, configs: list[BenchConfig], skipped, folders: dict,
             bundle_info: dict, run_dir: Path) -> dict:
    _say(opts, "qk-bench: import time and the machine's peak")
    imports = import_times(opts.import_repeats)
    info = run_worker({"kind": "params", "presets": list(dict.fromkeys(("small", "base", *opts.scaling_presets))),
                       "checkpoint": str(model)}, run_dir, "params", opts.timeout_s)
    shape = info.get("checkpoint_decoder") if "error" not in info else None
    shapes = {"large": [opts.peak_size] * 3}
    if shape:
        tokens = (shape["latent_size"] // shape["patch"]) ** 2
        shapes["decoder"] = [edit_batch(folders) * tokens, shape["width"], int(shape["width"] * shape["mlp_ratio"])]
    peak_spec = {"kind": "peak", "shapes": shapes, "threads": opts.threads, "repeats": 4 if opts.quick else 10}
    peak_start = run_worker(peak_spec, run_dir, "peak-start", opts.timeout_s)

    results = _config_round(opts, model, configs, folders, run_dir, 1)
    entries = paired_entries(configs, results, folders)
    paired = _paired_round(opts, entries, folders, run_dir, 1)
    later = []  # rounds 2..N: the same workers in the same order, so that drifting load hits every configuration alike
    for k in range(2, opts.rounds + 1):
        results_k = _config_round(opts, model, configs, folders, run_dir, k)
        later.append((results_k, _paired_round(opts, entries, folders, run_dir, k)))
    peak_end = run_worker(peak_spec, run_dir, "peak-end", opts.timeout_s)
    peak = combine_peaks(peak_start, peak_end)

    scaling = None
    if opts.scaling:
        points = []
        grid = [(p, s, m) for p in opts.scaling_presets for s in opts.scaling_sides for m in opts.scaling_modes]
        for preset, side, mode in _progress(grid, "scaling"):
            r = run_worker({"kind": "scaling", "preset": preset, "side": side, "mode": mode,
                            "repeats": opts.scaling_repeats, "threads": opts.threads},
                           run_dir, f"scaling-{preset}-{side}-{mode}", opts.timeout_s)
            if "error" in r:
                r.update({"preset": preset, "side": side, "mode": mode})
            points.append(r)
        scaling = {"points": points, "threads": opts.threads, "weights": "random", "batch": 1, "engine": "torch FP32 eager"}

    from .report import assemble

    settings = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in opts.__dict__.items() if k != "log"}
    return assemble(machine=machine, settings=settings, imports=imports, info=info, peak=peak, results=results,
                    skipped=skipped, bundle_info=bundle_info, scaling=scaling, paired=paired, rounds=later or None)


def _config_round(opts: Options, model: Path, configs: list[BenchConfig], folders: dict, run_dir: Path,
                  k: int) -> list[dict]:
    """Every configuration once, in order. Round 1 measures quality too; later rounds time only."""
    if opts.rounds > 1:
        _say(opts, f"qk-bench: round {k} of {opts.rounds}")
    results = []
    reference = run_dir / "reference.npz"
    desc = "configurations" if opts.rounds == 1 else f"configurations, round {k}/{opts.rounds}"
    for c in _progress(configs, desc):
        spec = {"kind": "config", "config": c.to_dict(), "checkpoint": str(model),
                "bundle": str(folders[c.bundle_variant]) if c.bundle_variant else None,
                "threads": opts.threads, "steps": opts.steps, "repeats": opts.repeats, "fractions": list(opts.fractions),
                "micro_repeats": opts.micro_repeats, "reference": str(reference),
                "quality_n": opts.quality_n if k == 1 else 0, "spin": opts.spin,
                "write_reference": c.engine == "torch" and not c.compile}
        # a name per round: its own spec/result files, and an empty OpenVINO compile cache (cold starts stay cold)
        r = run_worker(spec, run_dir, _round_name(c.name, k), opts.timeout_s, opts.spin)
        r.setdefault("config", c.to_dict())
        results.append(r)
        _say(opts, _config_line(c, r, k if opts.rounds > 1 else None))
    return results


def _paired_round(opts: Options, entries: list[dict], folders: dict, run_dir: Path, k: int) -> dict | None:
    if not entries:
        return None
    _say(opts, f"qk-bench: {len(entries)} decoder graphs side by side" + (f" (round {k})" if opts.rounds > 1 else ""))
    return run_worker({"kind": "paired", "entries": entries, "threads": opts.threads, "batch": edit_batch(folders),
                       "rounds": 10 if opts.quick else 30, "spin": opts.spin}, run_dir, _round_name("paired", k),
                      opts.timeout_s, opts.spin)


def _round_name(name: str, k: int) -> str:
    return name if k == 1 else f"{name}.round{k}"


def paired_entries(configs: list[BenchConfig], results: list[dict], folders: dict) -> list[dict]:
    """FP32 and INT8, dense (the edit's batch and 2) and region (the edit's batch, at the 25 % edit's
    active tokens), per runtime backend."""
    active = {}
    batch = {r["config"]["name"]: r["edit_batch"] for r in results if "edit_batch" in r and "config" in r}
    for r in results:
        c = r.get("config", {})
        for row in r.get("fractions") or []:
            if c.get("sparse") == "region" and abs(row["fraction"] - 0.25) < 1e-9 and row.get("active_tokens"):
                active[(c["backend"], c["precision"])] = row["active_tokens"]
    entries = []
    for c in configs:
        if c.engine != "runtime" or c.precision not in ("fp32", "int8") or c.sparse == "window":
            continue
        folder = folders.get(c.bundle_variant)
        if folder is None:
            continue
        eb = batch.get(c.name, 3)
        if c.sparse == "dense":  # the guidance batches of an edit (3, or 2 where image guidance is 1) and a generation (2)
            entries.append({"label": c.name, "bundle": str(folder), "backend": c.backend, "graph": "decoder", "active": None,
                            "batch": eb})
            entries.append({"label": f"{c.name}@b2", "bundle": str(folder), "backend": c.backend, "graph": "decoder",
                            "active": None, "batch": 2})
        elif (c.backend, c.precision) in active:
            entries.append({"label": c.name, "bundle": str(folder), "backend": c.backend, "graph": "decoder_region",
                            "active": active[(c.backend, c.precision)], "batch": eb})
    return entries


def edit_batch(folders: dict) -> int:
    """The decoder batch of one edit step with the bundles' sampler defaults: 2 where image
    guidance is 1 (the third guidance branch has weight 0 and is not run), else 3."""
    for folder in folders.values():
        manifest = Path(folder) / "manifest.json"
        if manifest.is_file():
            from qk_runtime.sampler import edit_branches

            return edit_branches(json.loads(manifest.read_text())["sampler"]["image_guidance"])
    return 3


def combine_peaks(start: dict, end: dict) -> dict:
    """Both peak measurements, and the table of the best of the two (a limit: load only lowers it)."""
    from .peak import peak_table

    runs = [dict(r, when="start") for r in start.get("runs", [])] + [dict(r, when="end") for r in end.get("runs", [])]
    out = {"runs": runs, "peak": peak_table(runs), "peak_start": start.get("peak"), "peak_end": end.get("peak")}
    errors = [x["error"] for x in (start, end) if "error" in x]
    if errors:
        out["errors"] = errors
    return out


def _config_line(c: BenchConfig, r: dict, k: int | None = None) -> str:
    head = f"qk-bench: {c.name}" + (f" (round {k})" if k else "")
    if "error" in r:
        return f"{head}: error: {r['error']}"
    rows = r.get("fractions") or []
    mid = next((x for x in rows if abs(x["fraction"] - 0.25) < 1e-9), rows[0] if rows else None)
    if mid is None:
        return f"{head}: no rows"
    q = r.get("quality") or {}
    success = f", success {q['edit_success']:.2f}" if q.get("edit_success") is not None else ""
    return (f"{head}: edit {mid['edit_ms']['median']:.0f} ms (region {mid['fraction']:.0%}), step "
            f"{mid['decoder_step_ms']['median']:.1f} ms, peak RSS {r['peak_rss_mb']:.0f} MB{success}")
