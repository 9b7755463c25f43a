"""Few-step sampling: the same model's quality at 1, 2, 4 and 20 steps, from qk-eval's JSON files.

A model trained with the shortcut objective (`decoder.step_size_cond`, `train.shortcut_fraction`:
qk_train/README.md) samples its `train.shortcut_steps` counts with uniform sigmas and the step
size fed to the decoder; every other count is the ordinary sampler. This script reads one qk-eval
JSON per (model, step count) from a folder and writes the table beside them:

    qk-eval --model MODEL --split val --n 200 --gen-n 100 --box-only --steps S --json DIR/<label>_s<S>.json
    python benchmarks/few_step.py DIR          # DIR/few_step.md (and prints it)

An optional DIR/latency.json (edit latency at 4 and 20 steps against the torch reference's 20,
from runtime_smoke.py) is summarised too; an optional DIR/runs.json ({"machine", "date", "eval", "models": {label: how it was made}}) is
written under the table.

Labels name the models (for example `finetuned` and `base`); rows are sorted by label, then by
step count. Strict edit success is with the box (the ShapeWorld v1.1 rule), per kind and overall;
`gen` is gen_accuracy (v1.1 judge); drift and seam with the box.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

KINDS = ("colour", "remove", "insert", "move", "resize")
NAME = re.compile(r"^(?P<label>.+)_s(?P<steps>\d+)\.json$")


def _fig(v, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def rows(folder: Path) -> list[dict]:
    found = []
    for path in folder.glob("*.json"):
        m = NAME.match(path.name)
        if not m:
            continue
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"few_step.py: cannot read {path}: {exc}")
        if "edit_success_strict" not in r:
            raise SystemExit(f"few_step.py: {path} is not a qk-eval JSON (no edit_success_strict)")
        found.append({"label": m["label"], "steps": int(m["steps"]), "r": r, "file": path.name})
    return sorted(found, key=lambda x: (x["label"], x["steps"]))


def table(folder: Path) -> str:
    found = rows(folder)
    if not found:
        raise SystemExit(f"few_step.py: no <label>_s<steps>.json files in {folder}; write them with qk-eval --json")
    first = found[0]["r"]
    lines = ["# Few-step sampling: quality by step count", "",
             f"qk-eval on the {first.get('split')} split: {first.get('n_edits')} edits with the box, "
             f"{first.get('n_generations')} generations. Written by `python benchmarks/few_step.py` from the JSON "
             "files beside it.", "",
             "| model | steps | strict edit (v1) | " + " | ".join(KINDS) + " | gen | drift | seam | eval s |",
             "|---|---|---|" + "---|" * len(KINDS) + "---|---|---|---|"]
    for x in found:
        r = x["r"]
        strict = (r.get("edit_success_strict") or {}).get("box") or {}
        v1 = (r.get("edit_success") or {}).get("box") or {}
        lines.append(f"| {x['label']} | {x['steps']} | {_fig(strict.get('overall'))} ({_fig(v1.get('overall'))}) | "
                     + " | ".join(_fig(strict.get(k)) for k in KINDS)
                     + f" | {_fig(r.get('gen_accuracy'))} | {_fig((r.get('drift') or {}).get('box'), '{:.4f}')}"
                       f" | {_fig((r.get('seam') or {}).get('box'), '{:.4f}')} | {_fig(r.get('elapsed_s'), '{:.0f}')} |")
    runs = folder / "runs.json"  # optional: how each model was made and evaluated
    if runs.is_file():
        info = json.loads(runs.read_text())
        lines += ["", f"Machine: {info.get('machine', '?')}, {info.get('date', '?')}. Evaluation: `{info.get('eval', '')}`.", ""]
        lines += [f"- `{label}`: {what}" for label, what in sorted((info.get("models") or {}).items())]
    latency = folder / "latency.json"  # optional: runtime_smoke.py timings at a few and at 20 steps
    if latency.is_file():
        lat = json.loads(latency.read_text())
        lines += ["", f"Edit latency ({lat.get('machine', '?')}, {lat.get('date', '?')}): the torch reference, FP32 eager, "
                  f"takes {lat['torch_reference_20_steps_ms']:.0f} ms at 20 steps; how many times faster each runtime is:", "",
                  "| backend | at 4 steps | at 20 steps |", "|---|---|---|"]
        lines += [f"| {name} | {r['4_steps']:.1f}x | {r['20_steps']:.1f}x |" for name, r in lat["ratios_vs_torch_20_steps"].items()]
    md = "\n".join(lines) + "\n"
    (folder / "few_step.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="folder of <label>_s<steps>.json qk-eval files")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"few_step.py: {args.folder} is not a folder", file=sys.stderr)
        return 2
    print(table(args.folder), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
