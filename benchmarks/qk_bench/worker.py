"""One measurement in its own process: `python -m qk_bench.worker SPEC.json OUT.json`.

SPEC's `kind` says what: `config` (one configuration: cold start, timed edits per region size,
generations, decoder steps alone at batch 1 and the guidance batch, peak RSS, quality), `scaling`
(one point of `scaling.py`), `peak` (`peak.py`) or `params` (parameter counts of the presets).
A process per measurement keeps each peak RSS its own and each import cost paid once. The result
(or the error, with the last lines of its traceback) is written to OUT atomically; the exit status
is 0 on success, 1 on error.

Order inside a `config` run: imports (timed), open + first edit (cold start), one warm-up edit per
region size and one generation, then the timed edits (seeds 1..R per size), the timed generations,
the decoder alone, and peak RSS is read there, before quality (whose imports and images are not
part of a configuration's footprint).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .configs import BenchConfig
from .timing import summarize, time_calls
from .workload import edit_job, prompt, psnr

MICRO_WARMUP = 3


def _atomic_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _spins(backend: str) -> bool:
    from qk_runtime.backend import REGISTRY, canonical

    return REGISTRY[canonical(backend)].spins


def make_engine(c: BenchConfig, spec: dict):
    from . import engines

    threads, steps = int(spec["threads"]), int(spec["steps"])
    if c.engine == "torch":
        return engines.TorchEngine(Path(spec["checkpoint"]), threads=threads, steps=steps, compile=c.compile)
    if c.engine == "runtime":
        return engines.RuntimeEngine(Path(spec["bundle"]), backend=c.backend, threads=threads, steps=steps,
                                     sparse=c.session_sparse, precision_hint="bf16" if c.precision == "bf16" else None,
                                     spinning=bool(spec.get("spin")) and _spins(c.backend))
    if c.engine == "peer":
        return engines.PeerEngine(Path(spec["bundle"]), threads=threads, steps=steps)
    raise ValueError(f"engine {c.engine!r} is not measured by the CPU worker")


def _import_engine_modules(c: BenchConfig) -> None:
    """Import what the engine needs, so the import cost is timed apart from the cold start."""
    if c.engine == "torch":
        import torch  # noqa: F401

        import qk_train.pipeline  # noqa: F401
    else:
        import importlib

        import qk_runtime  # noqa: F401
        from qk_runtime.backend import REGISTRY

        # the peer runs the bundle on plain OpenVINO; the runtime's backends say what they need
        importlib.import_module("openvino" if c.engine == "peer" else REGISTRY[c.backend].needs)


def _stage_stats(outcomes) -> dict:
    keys = [k for k in outcomes[0].timings if k != "decoder_steps"]
    return {k: summarize([o.timings[k] for o in outcomes]) for k in keys}


def _micro(fn, repeats: int) -> dict | None:
    if fn is None:
        return None
    return summarize(time_calls(fn, repeats, warmup=MICRO_WARMUP))


def run_config(spec: dict) -> dict:
    c = BenchConfig(**spec["config"])
    repeats, fractions = int(spec["repeats"]), [float(f) for f in spec["fractions"]]
    micro_repeats = int(spec["micro_repeats"])
    result: dict = {"config": c.to_dict(), "bundle": spec.get("bundle"), "threads": spec["threads"],
                    "steps": spec["steps"], "load_average_start": list(os.getloadavg()), "notes": []}
    wall0, cpu0 = time.perf_counter(), _cpu_s()

    t0 = time.perf_counter()
    _import_engine_modules(c)
    result["import_ms"] = (time.perf_counter() - t0) * 1000.0

    t0 = time.perf_counter()
    engine = make_engine(c, spec)
    result["open_ms"] = getattr(engine, "open_ms", None) or (time.perf_counter() - t0) * 1000.0
    jobs = {f: edit_job(engine.side, f) for f in fractions}
    first = engine.edit(jobs[fractions[0]], 0)
    result["cold_start_ms"] = (time.perf_counter() - t0) * 1000.0
    result["first_edit_ms"] = first.timings["total"]

    for f in fractions[1:]:  # warm-up: each size once (new region buckets, first shapes)
        engine.edit(jobs[f], 0)
    do_generation = not c.compile  # a compiled decoder would recompile for the generation batch
    text = prompt(engine.side)
    if do_generation:
        engine.generate(text, 0)
    else:
        result["notes"].append("generation not timed: torch.compile would recompile the decoder for batch 2")

    reference = Path(spec["reference"])
    ref = dict(np.load(reference)) if reference.is_file() and not spec.get("write_reference") else None
    images: dict[str, np.ndarray] = {}
    rows = []
    for f in fractions:
        outs = [engine.edit(jobs[f], seed) for seed in range(1, repeats + 1)]
        for seed, o in zip(range(1, repeats + 1), outs):
            images[f"{f}-{seed}"] = o.image
        steps = [s for o in outs for s in o.timings["decoder_steps"]]
        row = {
            "fraction": f, "box": list(jobs[f].box), "box_fraction": jobs[f].box_fraction,
            "instruction": jobs[f].instruction, "active_tokens": outs[0].active_tokens,
            "edit_ms": summarize([o.timings["total"] for o in outs]),
            "stages_ms": _stage_stats(outs),
            "decoder_step_ms": summarize(steps),
        }
        if ref is not None:
            keys = [k for k in images if k.startswith(f"{f}-") and k in ref]
            row["psnr_vs_torch_db"] = float(np.mean([psnr(images[k], ref[k]) for k in keys])) if keys else None
        rows.append(row)
    result["fractions"] = rows
    if spec.get("write_reference"):
        np.savez(reference, **images)

    if do_generation:
        gens = [engine.generate(text, seed) for seed in range(1, repeats + 1)]
        result["generation"] = {"prompt": text, "gen_ms": summarize([g.timings["total"] for g in gens]),
                                "stages_ms": _stage_stats(gens),
                                "decoder_step_ms": summarize([s for g in gens for s in g.timings["decoder_steps"]])}

    # the decoder alone: batch 1 and the guidance batches (an edit's: 2 or 3; a generation's: 2)
    eb = engine.edit_batch
    result["edit_batch"] = eb
    micro = {}
    for b in (1, 2, 3):
        if c.compile and b != eb:
            continue  # compiled for the edit's batch only
        micro[f"dense_b{b}"] = _micro(engine.decoder_call(b), micro_repeats)
    if c.sparse == "region":
        for row in rows:
            m = row["active_tokens"]
            if m and f"region{m}_b{eb}" not in micro:
                micro[f"region{m}_b1"] = _micro(engine.decoder_call(1, m), micro_repeats)
                micro[f"region{m}_b{eb}"] = _micro(engine.decoder_call(eb, m), micro_repeats)
    result["decoder_micro"] = micro
    result["peak_rss_mb"] = _peak_rss_mb()
    result["load_average_end"] = list(os.getloadavg())
    wall = time.perf_counter() - wall0
    result["cpu_share"] = (_cpu_s() - cpu0) / wall / max(1, int(spec["threads"]))  # of the cores it may use

    if c.backend == "ort-cpu":  # where ONNX Runtime spends a step, per op type
        from .engines import ort_op_profile

        row = next((r for r in rows if abs(r["fraction"] - 0.25) < 1e-9), rows[0])
        active = row["active_tokens"] if c.sparse == "region" else None
        graph, feeds = engine.graph_feeds(eb, active)
        result["op_profile"] = {"graph": graph, "batch": eb, "active": active,
                                **ort_op_profile(engine.session.bundle.graphs[graph].path, feeds, int(spec["threads"]))}
    if c.engine == "torch" and not c.compile:  # the analytic FLOP count is checked against these
        quarter = max(1, engine.tokens // 4)
        result["flops_counted"] = {"dense_b3": engine.counted_flops(3), f"region{quarter}_b3": engine.counted_flops(3, quarter)}
        result["parameters"] = engine.parameter_counts()

    if int(spec.get("quality_n", 0)) > 0 and not c.compile:
        from .quality import edit_quality

        t0 = time.perf_counter()
        result["quality"] = edit_quality(engine, int(spec["quality_n"]))
        result["quality"]["seconds"] = time.perf_counter() - t0
    elif c.compile:
        result["notes"].append("quality not run: the compiled decoder has the eager weights; its PSNR against eager is given")
    engine.close()
    result["wall_s"] = time.perf_counter() - wall0
    return result


def run_paired(spec: dict) -> dict:
    """Decoder graphs of several bundles / backends called in turn, round after round, in one
    process: their ratios hold even when the machine's load drifts between configurations."""
    from qk_runtime.backend import make_backend
    from qk_runtime.bundle import open_bundle

    from .workload import graph_feeds

    entries, calls = [], []
    for e in spec["entries"]:
        bundle = open_bundle(e["bundle"], verify=False)
        spin = {"spinning": True} if spec.get("spin") and _spins(e["backend"]) else {}
        backend = make_backend(e["backend"], bundle, threads=int(spec["threads"]), **spin)
        backend.activate([e["graph"]])
        feeds = graph_feeds(bundle.graphs[e["graph"]].inputs, int(e.get("batch") or spec.get("batch", 3)), e.get("active"))
        calls.append((backend, e["graph"], feeds))
        entries.append(dict(e, times=[]))
    for backend, graph, feeds in calls:  # warm-up
        for _ in range(MICRO_WARMUP):
            backend.infer(graph, feeds)
    for _ in range(int(spec["rounds"])):
        for entry, (backend, graph, feeds) in zip(entries, calls):
            t0 = time.perf_counter()
            backend.infer(graph, feeds)
            entry["times"].append((time.perf_counter() - t0) * 1000.0)
    for entry, (backend, _, _) in zip(entries, calls):
        entry["ms"] = summarize(entry.pop("times"))
        backend.deactivate()
    return {"batch": int(spec.get("batch", 3)), "rounds": int(spec["rounds"]), "entries": entries}


def run(spec: dict) -> dict:
    kind = spec.get("kind")
    if kind == "config":
        return run_config(spec)
    if kind == "scaling":
        from .scaling import run_point

        return run_point(spec["preset"], int(spec["side"]), spec["mode"], repeats=int(spec["repeats"]),
                         threads=int(spec["threads"]))
    if kind == "peak":
        from .peak import measure

        return measure({k: tuple(v) for k, v in spec["shapes"].items()}, threads=int(spec["threads"]),
                       repeats=int(spec["repeats"]), torch_fp32=bool(spec.get("torch", True)))
    if kind == "paired":
        return run_paired(spec)
    if kind == "params":
        from .scaling import checkpoint_decoder, parameter_counts

        return {"presets": parameter_counts(tuple(spec["presets"])), "checkpoint_decoder": checkpoint_decoder(Path(spec["checkpoint"]))}
    raise ValueError(f"worker spec kind {kind!r}; expected config, scaling, peak or params")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m qk_bench.worker SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    try:
        result = run(json.loads(spec_path.read_text()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records it
        tail = traceback.format_exc().strip().splitlines()[-6:]
        _atomic_json(out_path, {"error": f"{type(exc).__name__}: {exc}", "traceback": tail})
        return 1
    _atomic_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
