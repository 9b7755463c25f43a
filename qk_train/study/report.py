"""The study's report: the figures of each arm-seed evaluation, their spread over training seeds
and their 95 % intervals from the per-item outcomes (the arm entries of the JSON), the markdown
tables, and the writing of both."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.shapeworld import EDIT_KINDS
from .arms import SMOKE_WARNING, Arm
from .stats import mean_interval, seed_interval
from .verdicts import VERDICT_RULE


# --------------------------------------------------------------------------- figures


def seed_figures(record: dict) -> dict:
    """The figures of one arm-seed evaluation (None where they do not apply)."""
    qk = record["qk_eval"]
    edits = qk.get("edit", qk.get("model"))
    gens = qk.get("gen", qk.get("model"))
    det = record["details"]
    success = np.asarray(det["success"], dtype=bool)  # (noise seeds, n)
    box = record["outcomes"]["edits"]["box"]
    colour = np.asarray(edit_kinds(len(box["drift"]))) == "colour"
    drift = np.asarray(box["drift"])
    out = {
        "edit_success": edits["edit_success"]["box"]["overall"],
        "edit_success_no_box": edits["edit_success"]["no_box"]["overall"],
        "edit_success_strict": edits["edit_success_strict"]["box"]["overall"],
        **{f"success_{k}": edits["edit_success"]["box"][k] for k in EDIT_KINDS},
        "drift": edits["drift"]["box"],
        "drift_no_box": edits["drift"]["no_box"],
        "colour_drift": float(drift[colour].mean()) if colour.any() else None,
        "fd": gens["fd"]["value"],
        "fd_floor": gens["fd"]["real_vs_real"],
        "gen_accuracy": gens["gen_accuracy"],
        "stable_share": float(success.all(0).mean()) if success.size else None,
        "stability_mean_success": float(success.mean()) if success.size else None,
        "gate_iou": None, "gate_precision": None, "gate_recall": None,
    }
    if det.get("gate"):
        for k in ("iou", "precision", "recall"):
            out[f"gate_{k}"] = float(np.mean(det["gate"][k])) if det["gate"][k] else None
    if "probe_sets" in det:
        held_in = ~np.asarray(det["probe_pair"], dtype=bool)
        out["probe_held_in"] = float(success[0][held_in].mean()) if held_in.any() else None
        out["probe_held_out_pairs"] = float(np.mean(det["probe_sets"]["held_out_pairs"]["success"]))
        out["probe_background"] = float(np.mean(det["probe_sets"]["background"]["success"]))
    return out


def edit_kinds(n: int) -> list[str]:
    """The kinds of qk-eval's first `n` test edits (edit i is of kind EDIT_KINDS[i % 5])."""
    return [EDIT_KINDS[i % len(EDIT_KINDS)] for i in range(n)]


def arm_samples(records: list[dict]) -> dict[str, np.ndarray]:
    """An arm's per-item outcomes, one (seeds, items) array per figure, from its arm-seed evaluations (one
    row per training seed, the same items in every row); "fd" is one value per seed (a set statistic)."""
    def rows(get) -> np.ndarray:
        return np.asarray([get(r) for r in records], dtype=np.float64)

    box = lambda r: r["outcomes"]["edits"]["box"]  # noqa: E731
    n = len(box(records[0])["success"])
    kinds = np.asarray(edit_kinds(n))
    out = {
        "edit_success": rows(lambda r: box(r)["success"]),
        "edit_success_no_box": rows(lambda r: r["outcomes"]["edits"]["no_box"]["success"]),
        "edit_success_strict": rows(lambda r: box(r)["strict"]),
        "drift": rows(lambda r: box(r)["drift"]),
        "drift_no_box": rows(lambda r: r["outcomes"]["edits"]["no_box"]["drift"]),
        "gen_accuracy": rows(lambda r: r["outcomes"]["generations"]["correct"]),
    }
    fd = [seed_figures(r)["fd"] for r in records]
    out["fd"] = None if None in fd else np.asarray(fd, dtype=np.float64)[:, None]
    for k in EDIT_KINDS:
        out[f"success_{k}"] = out["edit_success"][:, kinds == k]
    out["colour_drift"] = out["drift"][:, kinds == "colour"]
    stab = np.asarray([r["details"]["success"] for r in records], dtype=bool)  # (seeds, noise seeds, stability_n)
    out["stable_share"] = stab.all(1).astype(np.float64)
    out["stability_mean_success"] = stab.mean(1)
    gate = records[0]["details"].get("gate")
    if gate and gate["iou"]:
        for k in ("iou", "precision", "recall"):
            out[f"gate_{k}"] = rows(lambda r: r["details"]["gate"][k])
    if "probe_sets" in records[0]["details"]:
        held_in = ~np.asarray(records[0]["details"]["probe_pair"], dtype=bool)
        if held_in.any():
            out["probe_held_in"] = stab[:, 0, held_in].astype(np.float64)
        for name in ("held_out_pairs", "background"):
            out[f"probe_{name}"] = rows(lambda r: r["details"]["probe_sets"][name]["success"])
    return {k: v for k, v in out.items() if v is not None and v.size}


NO_SEED_INTERVAL = "no interval: FD-SW is a set statistic (no per-item outcomes) and there is one training seed"


def intervals(samples: dict[str, np.ndarray]) -> dict:
    """95 % intervals of an arm's figures (`stats`): per-item figures over seeds and items, FD-SW over seeds only."""
    out = {}
    for k, v in samples.items():
        if k != "fd":
            out[k] = mean_interval(v).to_dict()
        elif v.shape[0] > 1:
            out[k] = seed_interval(v[:, 0]).to_dict()
        else:
            out[k] = {"estimate": float(v[0, 0]), "lo": None, "hi": None, "over": NO_SEED_INTERVAL}
    return out


def seed_stats(values: list) -> dict | None:
    """mean, min, max and sample std (ddof 1; 0 for one seed) of per-seed values; None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


METRIC_NOTES = {
    "edit_success": "qk-eval, test split, with the box: overall share of successful edits (shapeworld.md's rule v1); "
                    "edit_success_no_box without it; edit_success_strict with rule 4 (the shape) too; success_<kind> per kind "
                    "with the box",
    "drift": "qk-eval, with the box: mean abs difference to the source outside the change mask dilated by 2 px (0-1 scale)",
    "colour_drift": "qk-eval's per-edit drift (with the box) of the colour (attribute) edits only",
    "fd": "FD-SW of the generations against the real test images of the same captions (qk-eval's fd.value); "
          "fd_floor: FD-SW of two disjoint real samples of the same size",
    "gen_accuracy": "qk-eval: share of generations in which every captioned object is found",
    "stable_share": "share of the stability pass's edits that succeed for every noise seed; stability_mean_success: "
                    "mean success over edits and noise seeds; stable_share_all_training_seeds: for every training seed too",
    "gate_iou": "the CMG's gate (> 0.5) vs the true change mask at token resolution, mean over edits (with precision, recall); "
                "null without a CMG",
    "probe_held_in / probe_held_out_pairs / probe_background": "success (first noise seed, with the box) on test edits not "
        "involving the probe pairs / whose edited object is a probe pair / on the fifth background",
    "per_seed, spread": "one value per training seed; mean, min, max and sample std over training seeds",
    "ci95": "95 % interval of each figure: a two-level bootstrap over training seeds and test items of the per-item "
            "outcomes each eval.json keeps (one seed: over items only; FD-SW: over training seeds only, none with one seed); "
            "the study's `statistics` says how",
}


def arm_entry(arm: Arm, seeds: list[int], records: list[dict], params: int, train: list[dict],
              samples: dict[str, np.ndarray] | None = None) -> dict:
    """An arm's entry of the study's JSON: means over seeds, per-seed values, spread, and 95 % intervals (`ci95`)."""
    figures = [seed_figures(r) for r in records]
    samples = arm_samples(records) if samples is None else samples
    names = list(figures[0])
    stats = {k: seed_stats([f[k] for f in figures]) for k in names}
    entry = {"name": arm.name, "what": arm.what, "alias_of": arm.alias_of, "seeds": seeds, "trainable_parameters": params}
    for k in names:
        entry[k] = None if stats[k] is None else stats[k]["mean"]
    entry["per_seed"] = {k: [f[k] for f in figures] for k in names}
    entry["spread"] = {k: stats[k] for k in names}
    entry["ci95"] = intervals(samples)
    if len(records) > 1:  # an edit stable for every training seed and every noise seed
        every = np.stack([np.asarray(r["details"]["success"], dtype=bool).all(0) for r in records]).all(0)
        entry["stable_share_all_training_seeds"] = float(every.mean())
    entry["train"] = train
    return entry


# --------------------------------------------------------------------------- tables


def _cell(entry: dict, metric: str, digits: int) -> str:
    """The mean over seeds, then its 95 % interval in brackets (or, where there is none, the seeds' range)."""
    st = entry["spread"].get(metric)
    if st is None:
        return "-"
    text = f"{st['mean']:.{digits}f}"
    iv = entry.get("ci95", {}).get(metric)
    if iv and iv["lo"] is not None:
        text += f" [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"
    elif len(entry["seeds"]) > 1:
        text += f" ({st['min']:.{digits}f}-{st['max']:.{digits}f})"
    return text


TABLE_COLUMNS = (  # (header, metric, digits)
    ("edit success, box", "edit_success", 3), ("strict", "edit_success_strict", 3), ("no box", "edit_success_no_box", 3),
    ("colour", "success_colour", 3),
    ("remove", "success_remove", 3), ("move", "success_move", 3), ("drift", "drift", 4), ("colour-edit drift", "colour_drift", 4),
    ("FD-SW", "fd", 3), ("FD-SW real floor", "fd_floor", 3), ("gen acc", "gen_accuracy", 3), ("stable", "stable_share", 3),
    ("gate IoU", "gate_iou", 3),
)


def markdown(study: dict) -> str:
    lines = []
    if study["smoke"]:
        lines += [f"> **{SMOKE_WARNING}**", f"> Smoke because: {'; '.join(study['smoke_reasons'])}.", ""]
    ev = study["eval"]
    lines += [
        "# Query-Kontext study: ablations on ShapeWorld", "",
        f"`{study['command']}`  ", f"preset `{study['preset']}`, {study['steps']} joint steps per model, training seeds "
        f"{', '.join(map(str, study['seeds']))}; {ev['n']} test edits (with and without the box), {ev['gen_n']} generations, "
        f"stability over {ev['stability_seeds']} noise seeds on {ev['stability_n']} edits; compute {study['wall_s']['total_compute']:.0f} s "
        f"on {study['machine']['cpu']} ({study['machine']['cores']} cores).", "",
        "Figures are means over training seeds, each followed by its 95 % interval in square brackets: "
        f"{study['statistics']['method']} {study['statistics']['resamples']:,} resamples, percentile interval, RNG seed "
        f"{study['statistics']['rng_seed']}. Where there is no interval (FD-SW and its floor with one seed) the seeds' "
        "range (min-max) follows in round brackets when there are several seeds. "
        "FD-SW is a Frechet distance on ShapeWorld-classifier features, **not Inception FID**; the real floor is FD-SW "
        "between two disjoint real samples of the same size. Stable: share of edits that succeed for every noise seed.", "",
        "| arm | what | params | " + " | ".join(h for h, _, _ in TABLE_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for a in study["arms"]:
        cells = [f"`{a['name']}`", a["what"], f"{a['trainable_parameters'] / 1e6:.3f} M"]
        cells += [_cell(a, m, d) for _, m, d in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    ds = study["dual_sizing"]
    lines += ["", f"Dual pipeline sizing: full {ds['full']:,} trainable parameters (width {ds['full_width']}); generation model "
              f"{ds['gen']:,} + editing model {ds['edit']:,} = {ds['dual_total']:,} ({100 * ds['ratio']:.1f} % of full) at width "
              f"{ds['width']}. Counted: {ds['how']}.", ""]
    if study["smoke"]:
        lines += [f"> **{SMOKE_WARNING}**", ""]
    lines += ["## The article's claims, row by row", "",
              "| claim | article | ours (95 % interval) | verdict | measured at |", "|---|---|---|---|---|"]
    for c in study["claims"]:
        lines.append(f"| {c['claim']} | {c['article']} | {c['ours']} | **{c['verdict']}**: {c['why']} | {c['scale']} |")
    lines += ["", VERDICT_RULE, ""]
    return "\n".join(lines)


def write_study(study: dict, json_path: Path, table_path: Path) -> None:
    """The study's JSON and its markdown tables, each written atomically."""
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(json_path, (json.dumps(study, indent=2) + "\n").encode())
    atomic_write_bytes(table_path, markdown(study).encode())
