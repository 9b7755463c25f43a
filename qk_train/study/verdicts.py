"""The article's claims, row by row: the article's figure, ours with its 95 % interval (`stats`),
the scale it was measured at, and a verdict by the rule below, which the report prints under its
claims table.

Each testable claim is an effect between two arms (or two item sets of one arm) with a no-effect
line (0 for a difference or a reduction, 1 for a ratio) and the article's figure on the claimed
side of it (the figure itself, or the no-effect line where the article claims only a direction).
With [lo, hi] the effect's 95 % interval:
- "holds": the interval lies entirely on the claimed side of no effect (lo > no effect) and
  reaches the article's figure (hi >= figure): an effect is shown, and the data do not rule out
  the article's size.
- "contradicted": the whole interval falls short of the article's figure (hi < figure): the
  article's size is ruled out (the row says whether a smaller effect is still shown, none is,
  or the opposite one is).
- "not shown": otherwise: the interval reaches the figure but includes no effect.
A "no worse than" claim (generalization: success on held-out items at most 5 points below
held-in) holds when lo >= -0.05, is contradicted when hi < -0.05, and is not shown otherwise.
A claim of several comparisons holds when every one holds and is contradicted when any one is.
"""
from __future__ import annotations

import numpy as np

from .stats import Interval, compare_interval, seed_interval

HOLDS, NOT_SHOWN, CONTRADICTED, UNTESTABLE = "holds", "not shown", "contradicted", "cannot be tested here"
RULES = ("effect", "no_worse")
GENERALIZATION_MARGIN = 0.05  # success points held-out items may lose against held-in ones
VERDICT_RULE = (
    "Verdict rule, on each effect's 95 % interval [lo, hi]: **holds** when the interval lies entirely on the claimed side of "
    "no effect (0 for a difference or reduction, 1x for a ratio) and reaches the article's figure (hi >= figure; for a claim "
    "of direction only, the figure is the no-effect line); **contradicted** when the whole interval falls short of the "
    "article's figure (hi < figure); **not shown** otherwise (the interval reaches the figure but includes no effect). "
    f"Generalization (no worse than held-in by more than {100 * GENERALIZATION_MARGIN:.0f} points): holds when "
    f"lo >= -{GENERALIZATION_MARGIN}, contradicted when hi < -{GENERALIZATION_MARGIN}. A claim of several comparisons holds "
    "when each holds and is contradicted when any is."
)


def judge(iv: Interval, *, null: float, figure: float, rule: str = "effect") -> str:
    """The verdict of one effect's interval (see the module docstring): "holds", "contradicted" or "not shown"."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}; choose one of {list(RULES)}")
    if rule == "effect":
        if figure < null:
            raise ValueError(f"figure {figure} lies below the no-effect line {null}; a claimed effect is >= no effect")
        if iv.lo > null and iv.hi >= figure:
            return HOLDS
        return CONTRADICTED if iv.hi < figure else NOT_SHOWN
    if iv.lo >= figure:
        return HOLDS
    return CONTRADICTED if iv.hi < figure else NOT_SHOWN


def combine(verdicts: list[str]) -> str:
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return CONTRADICTED if CONTRADICTED in verdicts else NOT_SHOWN


def reading(verdict: str, iv: Interval, null: float, figure: float) -> str:
    """What an effect's verdict says, in words."""
    if verdict == HOLDS:
        return "the interval lies above no effect and " + (
            "at or above the article's figure" if iv.lo >= figure else "reaches the article's figure")
    if verdict == CONTRADICTED:
        if iv.lo > null:
            return "an effect is shown, but the whole interval lies below the article's figure"
        if iv.hi < null:
            return "the whole interval lies on the other side of no effect"
        return "the interval includes no effect and excludes the article's figure"
    return "the interval includes no effect, so the data cannot tell"


def _effect(what: str, iv: Interval, null: float, figure: float, rule: str = "effect") -> dict:
    return {"what": what, **iv.to_dict(), "null": null, "figure": round(figure, 6), "rule": rule,
            "verdict": judge(iv, null=null, figure=figure, rule=rule)}


def _pct(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "n/a" if x is None or np.isnan(x) else ("+inf" if x > 0 else "-inf")
    return f"{100 * x:+.1f} %" if abs(x) < 0.1 else f"{100 * x:+.0f} %"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _lower(r: float | None) -> str:
    if r is None or not np.isfinite(r):
        return "no ratio (baseline is 0)"
    return f"{100 * r:.0f} % lower" if r >= 0 else f"{-100 * r:.0f} % higher"


def _ci(iv: Interval, fmt) -> str:
    return f"95 % CI {fmt(iv.lo)} to {fmt(iv.hi)}"


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if np.isfinite(x) else "inf"


def claims(arms: dict[str, dict], samples: dict[str, dict[str, np.ndarray]], smoke: bool, scale: dict) -> list[dict]:
    """One row per claim of the article: its figure, ours with its interval, a verdict with one sentence, and the scale.

    `arms`: the study's arm entries by name; `samples`: each arm's per-item outcomes as (seeds, items) arrays by
    figure name (`report.arm_samples`), "fd" one value per seed; `scale`: preset, steps, seeds and eval sizes."""
    rows = []
    full, no_cmg, no_gw, dual, probe = (arms.get(k) for k in ("full", "no_cmg", "no_gateway", "dual", "probe"))
    sm = {k: samples.get(k, {}) for k in ("full", "no_cmg", "no_gateway", "dual", "probe")}
    ev = scale["eval"]
    where = f"preset {scale['preset']}, {scale['steps']} steps, {len(scale['seeds'])} seed(s)"

    def row(claim, article, ours, verdict, why, items="-", effects=()):
        rows.append({"claim": claim, "article": article, "ours": ours, "verdict": verdict, "why": why,
                     "scale": f"{where}, {items}" if items != "-" else where, "effects": list(effects)})

    # 1. CMG and out-of-region changes
    if full and no_cmg:
        iv = compare_interval(sm["full"]["drift"], sm["no_cmg"]["drift"], statistic="reduction")
        e = _effect("reduction of mean drift (with the box), full vs no_cmg, paired by edit", iv, 0.0, 1 / 3)
        gate = (f"full's gate vs the true change tokens: IoU {full['gate_iou']:.3f}, precision {full['gate_precision']:.3f}, "
                f"recall {full['gate_recall']:.3f}") if full.get("gate_iou") is not None else "full has no gate figures"
        ours = (f"drift {full['drift']:.4f} (full) vs {no_cmg['drift']:.4f} (no_cmg): {_lower(iv.estimate)} "
                f"(reduction {_ci(iv, _pct)})")
        claim, article = "CMG cuts out-of-region changes", "~1/3 (33 %) lower"
        if no_cmg["drift"] == 0:
            row(claim, article, ours, UNTESTABLE, "no_cmg has no drift at all, so a reduction is undefined.", f"{ev['n']} edits")
        else:
            why = f"{reading(e['verdict'], iv, 0.0, 1 / 3)}; {gate}."
            if e["verdict"] != HOLDS:
                why += (" (A gate that opens on tokens that should not change lets the decoder repaint them; one that misses "
                        "changed tokens forces them back to the source.)")
            row(claim, article, ours, e["verdict"], why, f"{ev['n']} edits", [e])
    # 2. attribute (colour) edits drift
    if full and no_gw:
        a, b = sm["full"]["colour_drift"], sm["no_gateway"]["colour_drift"]
        iv = compare_interval(a, b, statistic="reduction")
        e = _effect("reduction of mean colour-edit drift, full vs no_gateway, paired by edit", iv, 0.0, 0.45)
        extra = ""
        if no_cmg and no_cmg.get("colour_drift"):
            extra = f"; vs no_cmg {no_cmg['colour_drift']:.4f} ({_lower(1 - full['colour_drift'] / no_cmg['colour_drift'])})"
        ours = (f"colour-edit drift {full['colour_drift']:.4f} (full) vs {no_gw['colour_drift']:.4f} (no_gateway): "
                f"{_lower(iv.estimate)} (reduction {_ci(iv, _pct)}){extra}")
        claim = "Attribute edits drift less"
        if float(np.mean(b)) == 0:
            row(claim, "45 % less", ours, UNTESTABLE, "no_gateway's colour edits have no drift, so a reduction is undefined.",
                f"{a.shape[1]} colour edits")
        else:
            row(claim, "45 % less", ours, e["verdict"], reading(e["verdict"], iv, 0.0, 0.45) + " (against text-only conditioning).",
                f"{a.shape[1]} colour edits", [e])
    # 3. unified beats dual and no-query-conditioning
    if full and dual and no_gw:
        effects = []
        for other in ("dual", "no_gateway"):
            iv = compare_interval(sm["full"]["edit_success"], sm[other]["edit_success"], statistic="difference")
            effects.append(_effect(f"edit success (with the box) full - {other}, paired by edit", iv, 0.0, 0.0))
        ours = (f"edit success (box) {full['edit_success']:.3f} (full) vs {dual['edit_success']:.3f} (dual) vs "
                f"{no_gw['edit_success']:.3f} (no_gateway); full - dual {_pts(effects[0]['estimate'])} "
                f"({_ci(_iv(effects[0]), _pts)}), full - no_gateway {_pts(effects[1]['estimate'])} ({_ci(_iv(effects[1]), _pts)})")
        if full.get("fd") is not None and dual.get("fd") is not None:
            ours += f"; FD-SW {full['fd']:.3f} (full) vs {dual['fd']:.3f} (dual)"
        claim, article = "Unified beats dual pipeline and no-query-conditioning baseline", "72 % user preference; 83.2 vs 60.1 / 52 % edit success"
        if max(full["edit_success"], dual["edit_success"], no_gw["edit_success"]) == 0:
            row(claim, article, ours, UNTESTABLE, "no arm edits successfully at this budget, so there is nothing to compare.",
                f"{ev['n']} edits")
        else:
            verdict = combine([e["verdict"] for e in effects])
            why = "; ".join(f"against {o}: {e['verdict']} ({reading(e['verdict'], _iv(e), 0.0, 0.0)})"
                            for o, e in zip(("dual", "no_gateway"), effects))
            row(claim, article, ours, verdict, why + ". The claim is a direction (full's success higher); the article's "
                "rates are on another benchmark, so its gap is not the figure.", f"{ev['n']} edits", effects)
    # 4. per-task edit success
    if full:
        ours = (f"colour {full['success_colour']:.3f} / remove {full['success_remove']:.3f} / move {full['success_move']:.3f} "
                f"(insert {full['success_insert']:.3f}, resize {full['success_resize']:.3f})")
        row("Edit success per task", "83.2 % colour / 76.5 % removal / 68.7 % layout", ours, UNTESTABLE,
            "the article's rates are on COCO-EDITS (real photos, its own judge); ShapeWorld edits under shapeworld.md's exact rule "
            "are a different test, so only our own figures (with intervals in the arms table) are shown beside them.",
            f"{ev['n']} edits")
    # 5. FID with joint training
    if full and dual and full.get("fd") is not None and dual.get("fd") is not None:
        claim, article = "Joint training improves generation", "FID 18.2 -> 12.4 (31.9 % lower)"
        gen = compare_interval(sm["full"]["gen_accuracy"], sm["dual"]["gen_accuracy"], statistic="difference")
        gen_text = (f"; gen accuracy full - dual {_pts(gen.estimate)} ({_ci(gen, _pts)}); real-vs-real floor "
                    f"{full['fd_floor']:.3f}")
        fd_full, fd_dual = np.ravel(sm["full"]["fd"]), np.ravel(sm["dual"]["fd"])
        r = 1 - full["fd"] / dual["fd"] if dual["fd"] > 0 else None
        items = f"{ev['gen_n']} generations"
        if len(fd_full) < 2:
            row(claim, article, f"FD-SW {full['fd']:.3f} (full, joint) vs {dual['fd']:.3f} (dual's generation-only model): "
                f"{_lower(r)}, no interval" + gen_text, NOT_SHOWN,
                "FD-SW is a set statistic (no per-generation outcome to resample) and one training seed gives no spread, so "
                "it has no interval; run several --seeds.", items)
        else:
            iv = seed_interval(fd_full, fd_dual, statistic="reduction")
            e = _effect("reduction of FD-SW, full (joint) vs dual's generation-only model, paired by seed", iv, 0.0, 0.319)
            row(claim, article, f"FD-SW {full['fd']:.3f} (full, joint) vs {dual['fd']:.3f} (dual's generation-only model): "
                f"{_lower(iv.estimate)} (reduction {_ci(iv, _pct)}, over training seeds only)" + gen_text, e["verdict"],
                reading(e["verdict"], iv, 0.0, 0.319) + " (FD-SW, not FID: only the relative change is compared; the interval "
                "is over training seeds only; the dual generation model has half the parameters of full).", items, [e])
    # 6. stability
    if full and no_gw:
        claim, items = "Query gateway gives 2.1x editing stability", f"{ev['stability_n']} edits x {ev['stability_seeds']} noise seeds"
        a, b = sm["full"]["stable_share"], sm["no_gateway"]["stable_share"]
        if float(np.mean(b)) == 0:
            row(claim, "2.1x", f"stable share {full['stable_share']:.3f} (full) vs 0 (no_gateway)", UNTESTABLE,
                "the text-only baseline has no edit that succeeds for every noise seed at this budget, so a ratio is undefined.",
                items)
        else:
            iv = compare_interval(a, b, statistic="ratio")
            e = _effect("ratio of stable shares, full / no_gateway, paired by edit", iv, 1.0, 2.1)
            row(claim, "2.1x", f"stable share {full['stable_share']:.3f} (full) vs {no_gw['stable_share']:.3f} (no_gateway): "
                f"{_ratio(iv.estimate)} ({_ci(iv, _ratio)})", e["verdict"],
                reading(e["verdict"], iv, 1.0, 2.1) + " (stable: the edit succeeds for every noise seed).", items, [e])
    # 7. generalization
    if probe and sm["probe"].get("probe_held_out_pairs") is not None:
        claim, article = "Generalizes to held-out variants", "claimed (held-out CelebA-HQ-like subset), no figure"
        held_in = sm["probe"].get("probe_held_in")
        items = f"{ev['probe_n']} held-out-pair and {ev['probe_n']} fifth-background edits vs the held-in ones of {ev['stability_n']}"
        ref = f"; full (trained on them) {full['probe_held_out_pairs']:.3f}" if full and full.get("probe_held_out_pairs") is not None else ""
        if held_in is None or float(np.mean(held_in)) == 0:
            row(claim, article, f"probe arm: held-in {_num(probe.get('probe_held_in'))}, held-out pairs "
                f"{probe['probe_held_out_pairs']:.3f}{ref}; fifth background {probe['probe_background']:.3f}", UNTESTABLE,
                "the probe arm succeeds on no held-in edit at this budget, so a drop on held-out edits cannot show.", items)
        else:
            effects = []
            for name in ("probe_held_out_pairs", "probe_background"):
                iv = compare_interval(sm["probe"][name], held_in, statistic="difference", paired=False)
                effects.append(_effect(f"success {name.removeprefix('probe_')} - held-in (probe arm, different edits)", iv, 0.0,
                                       -GENERALIZATION_MARGIN, rule="no_worse"))
            ours = (f"probe arm: held-in {probe['probe_held_in']:.3f}, held-out pairs {probe['probe_held_out_pairs']:.3f} "
                    f"({_pts(effects[0]['estimate'])}, {_ci(_iv(effects[0]), _pts)}){ref}; fifth background "
                    f"{probe['probe_background']:.3f} ({_pts(effects[1]['estimate'])}, {_ci(_iv(effects[1]), _pts)})")
            verdict = combine([e["verdict"] for e in effects])
            why = {HOLDS: "on never-seen colour-shape pairs and on the unseen background, success is at most "
                          f"{100 * GENERALIZATION_MARGIN:.0f} points below held-in edits (whole interval).",
                   CONTRADICTED: f"success drops by more than {100 * GENERALIZATION_MARGIN:.0f} points (whole interval) on "
                                 + " and ".join(n for n, e in (("never-seen pairs", effects[0]), ("the unseen background", effects[1]))
                                                if e["verdict"] == CONTRADICTED) + ".",
                   NOT_SHOWN: f"the intervals do not rule out a drop of more than {100 * GENERALIZATION_MARGIN:.0f} points."}[verdict]
            row(claim, article, ours, verdict, why, items, effects)
    row("Users prefer the unified model", "72 % over the dual pipeline", "-", UNTESTABLE,
        "a user-preference study needs human raters; none were available.")
    row("LPIPS", "0.18 (vs 0.25 baseline)", "-", UNTESTABLE,
        "LPIPS needs pretrained AlexNet/VGG weights, which cannot be downloaded on these machines.")
    if smoke:
        for r in rows:
            r["verdict"] = f"{r['verdict']} (SMOKE RUN: NOT EVIDENCE)"
    return rows


def _iv(effect: dict) -> Interval:
    """An effect row's interval back as an Interval (for formatting)."""
    lo, hi = (float(effect[k]) for k in ("lo", "hi"))
    return Interval(float(effect["estimate"]), lo, hi, effect["over"])
