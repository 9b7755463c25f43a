"""Fixed-budget training benchmark: how far a recipe gets in a stated amount of CPU time.

A recipe (`benchmarks/train_speed_recipes.yaml`: a preset plus `--set` overrides) is trained
from scratch for `--budget` minutes of this machine's training time, starting from the shipped
checkpoint's frozen autoencoder so that every recipe shares the codec. Its learning-rate
schedule spans the budget. At `--points` evenly spaced points the run is checkpointed and
evaluated on the **validation** split (never `test`): `--n` edits with the region box (the five
kinds in equal shares) and `--gen-n` generations, v1 and strict (v1.1) rules, plus a held-out
flow-matching loss on fixed validation batches (a low-noise signal for short runs).

Time is counted in steps: minutes = steps x the recipe's step time, measured by `--time` on a
quiet machine (median of single steps after a warm-up, 2 threads) and stored in
`step_times.json`, so that the curves do not depend on what else ran while they trained. The
baseline's step time is measured on the code as it was before any of the recipes' engineering
changes (`--time --code DIR`, a checkout of that code), and `baseline_minutes` is the shipped
default's 14,000 steps at that step time.

    python benchmarks/train_speed.py --time baseline muon             # step times (quiet machine!)
    python benchmarks/train_speed.py --time baseline --code /tmp/base --as baseline_code
    python benchmarks/train_speed.py --reference                      # the shipped default, same protocol
    python benchmarks/train_speed.py --recipe muon --budget 45 --points 4
    python benchmarks/train_speed.py --table                          # train_speed.md from the JSON files

Writes benchmarks/results/<machine>/train_speed/<recipe>-<budget>m.json (the curve, `minutes_to_reference`,
`baseline_minutes`) and train_speed.md. Runs are kept in --work (default
benchmarks/.cache/train_speed/<recipe>-<budget>m) and resume where they stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RECIPES = REPO / "benchmarks" / "train_speed_recipes.yaml"
SHIPPED = REPO / "engines" / "default" / "checkpoint"
BASELINE_STEPS = 14_000  # the shipped default's joint steps of batch 32
EDIT_KEY, GEN_KEY = "edit_success_strict", "gen_accuracy"  # the figures minutes_to_reference needs


def load_recipes(path: Path = RECIPES) -> dict[str, dict]:
    """The recipes by name (keys starting with "_" are notes, not recipes)."""
    return {k: v for k, v in yaml.safe_load(Path(path).read_text()).items() if not k.startswith("_")}


def untried_levers(path: Path = RECIPES) -> list[str]:
    return list(yaml.safe_load(Path(path).read_text()).get("_not_tried") or [])


def recipe_overrides(recipe: dict, total_steps: int | None = None, other_code: bool = False) -> list[str]:
    # every recipe shares the shipped, frozen autoencoder; code without train.codec_from times the
    # same joint step with an untrained one (no autoencoder stage either way)
    if recipe.get("codec_from", "shipped") is None:  # the preset's own codec stage (e.g. tiny: pixels)
        extra = []
    else:
        extra = ["train.ae_steps=0"] if other_code else [f"train.codec_from={SHIPPED}"]
    if total_steps is not None:
        extra.append(f"train.steps={total_steps}")
    return list(recipe.get("set", [])) + extra


def run_name(recipe: str, budget: float) -> str:
    return f"{recipe}-{budget:g}m.json"


def results_dir(machine: str) -> Path:
    return REPO / "benchmarks" / "results" / machine / "train_speed"


# --------------------------------------------------------------------------- step time


def _step_seconds_from_log(log: Path, batch: int, skip: int) -> list[float]:
    """Per-step seconds from a log.jsonl written with log_every=1 (img_s is cumulative)."""
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs = [r for r in recs if r.get("stage") == "main"]
    ends = [r["step"] * batch / r["img_s"] for r in recs]  # seconds since the stage's clock started
    return [b - a for a, b in zip([0.0] + ends, ends)][skip:]


def time_recipe(name: str, recipe: dict, steps: int, warmup: int, code: Path | None) -> dict:
    """Median seconds of one training step (batch, text, forward, backward, optimizer, EMA)."""
    with tempfile.TemporaryDirectory() as tmp:
        sets = recipe_overrides(recipe, other_code=code is not None) + ["train.log_every=1", f"train.checkpoint_every={steps + warmup + 10}"]
        cmd = [sys.executable, "-m", "qk_train.train", "--preset", recipe["preset"], "--out", f"{tmp}/run",
               "--max-steps", str(steps + warmup), "--threads", "2", "--no-progress"]
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "PYTHONPATH": str(code) if code else os.environ.get("PYTHONPATH", "")}
        subprocess.run(cmd, cwd=code or REPO, env=env, check=True)
        from qk_train.train import resolve_config

        batch = resolve_config(recipe["preset"], list(recipe.get("set", [])), None).train.batch_size
        times = _step_seconds_from_log(Path(tmp) / "run" / "log.jsonl", batch, warmup)
    return {"step_seconds": statistics.median(times), "steps_timed": len(times), "warmup": warmup,
            "code": str(code) if code else "this checkout", "load_average": os.getloadavg()[0], "date": str(date.today())}


# --------------------------------------------------------------------------- evaluation


def validation_loss(model, cfg, batches: int = 4, size: int = 64) -> float:
    """Mean joint loss on fixed validation batches with fixed noise (the model in eval mode)."""
    import torch

    from qk_train.train import STAGE_MAIN, make_batch

    cfg64 = cfg.replace(data={"buckets": [cfg.data.image_size], "bucket_weights": [1.0]})
    losses = []
    with torch.no_grad():
        for k in range(batches):
            batch = make_batch(cfg64, STAGE_MAIN, k, 0, 1, size=size, split="val")
            loss, _ = model.loss(batch, torch.Generator().manual_seed(1000 + k))
            losses.append(float(loss))
    return statistics.fmean(losses)


def evaluate_point(path: Path, n: int, gen_n: int) -> dict:
    from qk_train.eval.evaluate import evaluate
    from qk_train.models.unified import QKModel

    tic = time.perf_counter()
    r = evaluate(path, split="val", n=n, gen_n=gen_n, settings=["box"], progress=False)
    model = QKModel.from_checkpoint(path)
    point = {
        "edit_success": r["edit_success"]["box"],
        "edit_success_strict": r.get("edit_success_strict", {}).get("box"),
        "gen_accuracy": r.get("gen_accuracy"),
        "gen_accuracy_v1": r.get("gen_accuracy_v1"),
        "drift": r["drift"]["box"],
        "seam": (r.get("seam") or {}).get("box"),
        "val_loss": validation_loss(model, model.cfg),
        "eval_seconds": round(time.perf_counter() - tic, 1),
    }
    return point


def headline(p: dict) -> str:
    strict = (p.get("edit_success_strict") or {}).get("overall")
    return (f"edit v1 {_fig(p['edit_success']['overall'])}, strict {_fig(strict)}, gen {_fig(p.get('gen_accuracy'))}, "
            f"val loss {_fig(p.get('val_loss'), '{:.4f}')}")


def reaches(point: dict, ref: dict) -> bool:
    edit = (point.get(EDIT_KEY) or {}).get("overall")
    ref_edit = (ref.get(EDIT_KEY) or {}).get("overall")
    if edit is None or ref_edit is None or point.get(GEN_KEY) is None or ref.get(GEN_KEY) is None:
        return False
    return edit >= ref_edit and point[GEN_KEY] >= ref[GEN_KEY]


# --------------------------------------------------------------------------- a run


CHECKPOINT_EVERY_S = 600  # a long run cut short loses at most ten minutes


def train_recipe(name: str, recipe: dict, budget: float, points: int, step_seconds: float, work: Path,
                 n: int, gen_n: int, folder: Path, machine: str, baseline_seconds: float | None) -> dict:
    import torch

    from qk_train import checkpoint as ckpt
    from qk_train.train import Trainer, resolve_config

    torch.set_num_threads(2)
    total = max(points, int(round(budget * 60 / step_seconds)))
    marks = [round(total * (k + 1) / points) for k in range(points)]
    cfg = resolve_config(recipe["preset"], recipe_overrides(recipe, total) + [f"train.checkpoint_every={max(50, total // 20)}"], None)
    run = work / "run"
    out_json = folder / run_name(name, budget)
    doc = json.loads(out_json.read_text()) if out_json.exists() else {}
    if doc.get("total_steps") != total or doc.get("step_seconds") != step_seconds:
        doc = {}
    doc.update({
        "recipe": name, "what": recipe.get("what", ""), "preset": recipe["preset"], "overrides": recipe.get("set", []),
        "budget_minutes": budget, "step_seconds": step_seconds, "total_steps": total,
        "batch_size": cfg.train.batch_size, "codec": "frozen, from engines/default/checkpoint",
        "baseline_minutes": round(BASELINE_STEPS * baseline_seconds / 60, 1) if baseline_seconds else None,
        "eval": {"split": "val", "edits_with_box": n, "generations": gen_n},
        "command": " ".join(["python", "benchmarks/train_speed.py", *sys.argv[1:]]),
    })
    doc.setdefault("points", [])
    done = {p["step"] for p in doc["points"]}
    for mark in marks:
        if mark in done:
            continue
        trainer = Trainer(cfg, run, progress=False, max_steps=None, checkpoint_every_s=CHECKPOINT_EVERY_S)
        latest = ckpt.latest_checkpoint(run)
        at = 0 if latest is None else int(json.loads((latest / ckpt.STATE_META).read_text())["step"])
        trainer.max_steps = mark - at
        tic = time.perf_counter()
        path = trainer.run() if mark > at else latest
        if mark == total:
            path = run / "final"
        wall = time.perf_counter() - tic
        point = {"step": mark, "minutes": round(mark * step_seconds / 60, 2), "samples": mark * cfg.train.batch_size,
                 "train_wall_seconds": round(wall, 1), **evaluate_point(Path(path), n, gen_n)}
        kept = work / "points" / f"step-{mark:07d}"
        if not kept.exists():
            ckpt.release(Path(path), kept)
        doc["points"].append(point)
        print(f"{name} step {mark} ({point['minutes']:.1f} min): {headline(point)}", flush=True)
        _finish(doc, folder, machine)
    return _finish(doc, folder, machine)


def _finish(doc: dict, folder: Path, machine: str) -> dict:
    from qk_bench.machine import describe

    ref_path = folder / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else None
    doc["points"].sort(key=lambda p: p["step"])
    doc["minutes_to_reference"] = next((p["minutes"] for p in doc["points"] if ref and reaches(p, ref)), None)
    doc["machine"] = describe(machine)
    doc["date"] = str(date.today())
    out = folder / run_name(doc["recipe"], doc["budget_minutes"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


# --------------------------------------------------------------------------- the table


def _fig(v, fmt="{:.3f}"):
    return "–" if v is None else fmt.format(v)


def table(folder: Path, machine: str, recipes_path: Path = RECIPES) -> str:
    ref_path = folder / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else None
    times = json.loads((folder / "step_times.json").read_text()) if (folder / "step_times.json").exists() else {}
    lines = [f"# Training speed: recipes at a fixed budget ({machine})", "",
             "Validation split: edits with the box (strict rule, v1 in brackets), generations (v1.1 rule), "
             "held-out loss. Minutes = steps x the recipe's quiet step time. Written by "
             "`python benchmarks/train_speed.py --table` from the JSON files beside it.", ""]
    if ref:
        lines += [f"Reference ({ref.get('model', '')}): strict edit "
                  f"{_fig((ref.get(EDIT_KEY) or {}).get('overall'))} (v1 {_fig(ref['edit_success']['overall'])}), "
                  f"gen {_fig(ref.get(GEN_KEY))}, val loss {_fig(ref.get('val_loss'), '{:.4f}')}.", ""]
    if times:
        lines += ["| recipe | step s | measured on |", "|---|---|---|"]
        lines += [f"| {k} | {v['step_seconds']:.3f} | {v['code']}, {v['date']} |" for k, v in sorted(times.items())]
        lines += [""]
    lines += ["| recipe | what changed | budget | points: minutes -> strict edit (v1) / gen / val loss | minutes to reference | baseline minutes |",
              "|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        if path.name in ("reference.json", "step_times.json"):
            continue
        d = json.loads(path.read_text())
        pts = "; ".join(f"{p['minutes']:.0f}: {_fig((p.get(EDIT_KEY) or {}).get('overall'))} ({_fig(p['edit_success']['overall'])})"
                        f" / {_fig(p.get(GEN_KEY))} / {_fig(p['val_loss'], '{:.4f}')}" for p in d["points"])
        lines.append(f"| {d['recipe']} | {d['what']} | {d['budget_minutes']:g} min | {pts} | "
                     f"{_fig(d.get('minutes_to_reference'), '{:.0f}')} | {_fig(d.get('baseline_minutes'), '{:.0f}')} |")
    recipes = load_recipes(recipes_path)
    verdicts = [(k, r["verdict"]) for k, r in recipes.items() if r.get("verdict")]
    if verdicts:
        lines += ["", "## The levers: kept or dropped, and why", "", "| recipe | verdict |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in verdicts]
    untried = untried_levers(recipes_path)
    if untried:
        lines += ["", "Not yet screened at an equal budget: " + "; ".join(untried) + "."]
    md = "\n".join(lines) + "\n"
    (folder / "train_speed.md").write_text(md)
    return md


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", help="train this recipe for --budget minutes")
    parser.add_argument("--time", nargs="+", metavar="RECIPE", help="measure these recipes' step times (quiet machine)")
    parser.add_argument("--code", type=Path, default=None, help="with --time: time the code in this checkout instead")
    parser.add_argument("--as", dest="as_name", default=None, help="with --time: store the step time under this name")
    parser.add_argument("--reference", action="store_true", help="evaluate the shipped default under the same protocol")
    parser.add_argument("--table", action="store_true", help="write train_speed.md from the JSON files")
    parser.add_argument("--budget", type=float, default=45.0, help="training minutes (default 45)")
    parser.add_argument("--points", type=int, default=4, help="evaluation points over the budget (default 4)")
    parser.add_argument("--n", type=int, default=200, help="validation edits with the box per point (default 200)")
    parser.add_argument("--gen-n", type=int, default=100, help="validation generations per point (default 100)")
    parser.add_argument("--machine", default="cpu-2core", help="machine id: results go to benchmarks/results/<machine>/train_speed (default cpu-2core)")
    parser.add_argument("--results", type=Path, default=None, help="results folder instead (tests)")
    parser.add_argument("--recipes", type=Path, default=RECIPES, help=f"recipes file (default {RECIPES.relative_to(REPO)})")
    parser.add_argument("--work", type=Path, default=None, help="run folder (default benchmarks/.cache/train_speed/<recipe>-<budget>m)")
    parser.add_argument("--timing-steps", type=int, default=30)
    parser.add_argument("--timing-warmup", type=int, default=40)
    args = parser.parse_args(argv)
    recipes = load_recipes(args.recipes)
    for name in ([args.recipe] if args.recipe else []) + (args.time or []):
        if name not in recipes:
            parser.error(f"unknown recipe {name!r}; {args.recipes} has {sorted(recipes)}")
    if args.budget <= 0 or args.points < 1:
        parser.error("--budget must be > 0 and --points >= 1")
    folder = args.results or results_dir(args.machine)
    folder.mkdir(parents=True, exist_ok=True)
    times_path = folder / "step_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if args.time:
        for name in args.time:
            t = time_recipe(name, recipes[name], args.timing_steps, args.timing_warmup, args.code)
            times[args.as_name or name] = t
            print(f"{args.as_name or name}: {t['step_seconds']:.3f} s/step ({t['code']}, load {t['load_average']:.2f})", flush=True)
            times_path.write_text(json.dumps(times, indent=2) + "\n")
    if args.reference:
        import torch

        torch.set_num_threads(2)
        ref = {"model": "engines/default/checkpoint", **evaluate_point(SHIPPED, args.n, args.gen_n),
               "command": " ".join(["python", "benchmarks/train_speed.py", *sys.argv[1:]]), "date": str(date.today())}
        (folder / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
        print(f"reference: {headline(ref)}")
    if args.recipe:
        timed = recipes[args.recipe].get("step_time_of", args.recipe)  # a recipe that only changes rates costs the same
        if timed not in times:
            parser.error(f"no step time for {timed!r} in {times_path}; run --time {timed} first (quiet machine)")
        base = times.get("baseline_code", {}).get("step_seconds")
        work = args.work or REPO / "benchmarks" / ".cache" / "train_speed" / f"{args.recipe}-{args.budget:g}m"
        doc = train_recipe(args.recipe, recipes[args.recipe], args.budget, args.points, times[timed]["step_seconds"],
                           work, args.n, args.gen_n, folder, args.machine, base)
        print(f"{args.recipe}: minutes to reference {doc['minutes_to_reference']}")
    if args.table or args.recipe or args.reference:
        print(table(folder, args.machine, args.recipes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
