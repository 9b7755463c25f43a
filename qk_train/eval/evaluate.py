"""qk-eval: edit success (v1 and strict), drift, seam and generation accuracy on a ShapeWorld split.

    qk-eval --json results.json                         # the shipped default checkpoint
    qk-eval --model runs/small/final --n 500 --json r.json
    qk-eval --model engines/default/int8 --json r.json  # a bundle: run through qk_runtime
    qk-eval --instructions paraphrase --json r.json     # instructions worded unlike training's

A model is a checkpoint folder (run with the torch reference pipeline) or a bundle folder
(anything with a manifest.json, run with the ONNX runtime). Edits are test-split samples
`make_edit(split, i, kind=EDIT_KINDS[i % 5])`, so every kind gets the same share; each is run
with its region box and without it, and scored with the rules of `shapeworld.md` v1.1
(`qk_train.eval.metrics.score_edit`): `edit_success` (rules 1-3) and `edit_success_strict`
(also rule 4, the shape), per setting, per kind and overall; `drift` outside the dilated change
mask; `seam`: inside the model's active region (its gate above the threshold, at pixel
resolution) but outside the change mask dilated by 2 px, the mean abs difference to the source,
averaged over the edits that have such pixels (None for an editor that reports no gate).
`--instructions paraphrase` words each edit with a held-out paraphrase of the same meaning
(`qk_train.eval.paraphrases`, never seen in training); the JSON's `instructions` says which.
Generation: `gen_accuracy` is the share of generated images the v1.1 judge accepts (every
captioned object found with its colour, shape and grid position, and no extra object);
`gen_accuracy_v1` the share the v1 judge accepts (no IoU floor, extra objects not judged).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from qk_runtime.errors import QKRuntimeError
from qk_runtime.files import check_output
from qk_runtime.inputs import check_writable

from ..data.shapeworld import EDIT_KINDS, SPLITS, make_edit, make_generation
from .metrics import judge_generation, judge_generation_v1, score_edit, seam, token_mask_to_pixels
from .paraphrases import paraphrase

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "engines" / "default" / "checkpoint"
SETTINGS = {"box": True, "no_box": False}
INSTRUCTIONS = ("template", "paraphrase")
CHUNK = 16  # samples run together through the torch pipeline
OUTCOME_DIGITS = 6  # per-edit drift (0-1 scale) in the per-item outcomes


@dataclass
class Edited:
    image: np.ndarray  # (H, W, 3) uint8
    active: np.ndarray | None = None  # (grid, grid) bool: the tokens the edit was let change


class Editor(Protocol):
    """`edit_many` answers one `Edited` per edit: the image and the tokens its gate let change (a
    model without a gate has every token active). A plain (H, W, 3) image is also accepted, as
    the benchmark engines answer; such an edit has no seam."""

    side: int

    def edit_many(self, images: list, instructions: list[str], boxes: list, seeds: list[int]) -> list[Edited]: ...

    def generate_many(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]: ...


def active_tokens(gate: np.ndarray | None, threshold: float | None) -> np.ndarray | None:
    """The active region of a (grid, grid) gate: gate > threshold, as the pipelines gate the edit.
    With no threshold the pipelines blend by the gate itself; then > 0.5, their region decoder's rule."""
    if gate is None:
        return None
    return np.asarray(gate) > (0.5 if threshold is None else threshold)


class TorchEditor:
    """A checkpoint, run with the torch reference pipeline."""

    def __init__(self, path: Path, steps: int | None, sparse: str = "none"):
        from ..models.unified import QKModel
        from ..pipeline import Pipeline

        self.pipe = Pipeline(QKModel.from_checkpoint(path))
        self.steps = steps
        self.sparse = sparse
        self.side = self.pipe.side

    def edit_many(self, images, instructions, boxes, seeds):
        if self.sparse == "region":
            outs = [self.pipe.edit(*args, steps=self.steps, seed=sd, sparse="region")
                    for *args, sd in zip(images, instructions, boxes, seeds)]
        else:
            outs = self.pipe.edit_batch(images, instructions, boxes, steps=self.steps, seeds=seeds)
        return [Edited(o.image, active_tokens(o.gate, self.pipe.gate_threshold)) for o in outs]

    def generate_many(self, prompts, seeds):
        return [o.image for o in self.pipe.generate_batch(prompts, steps=self.steps, seeds=seeds)]


class BundleEditor:
    """A bundle, run with qk_runtime (ONNX Runtime or OpenVINO)."""

    def __init__(self, path: Path, steps: int | None, backend: str = "auto", sparse: str = "none"):
        from qk_runtime.session import EditSession

        self.session = EditSession(path, backend=backend)
        self.steps = steps
        self.sparse = sparse  # "none" runs the dense decoder even where the bundle has the region one
        self.side = int(self.session.bundle.dims.image_size)

    def edit_many(self, images, instructions, boxes, seeds):
        threshold = self.session.bundle.sampler.gate_threshold
        outs = [self.session.edit(img, ins, box=box, steps=self.steps, seed=sd, sparse=self.sparse)
                for img, ins, box, sd in zip(images, instructions, boxes, seeds)]
        return [Edited(r.image, active_tokens(r.gate, threshold)) for r in outs]

    def generate_many(self, prompts, seeds):
        return [self.session.generate(p, steps=self.steps, seed=sd).image for p, sd in zip(prompts, seeds)]


def open_editor(path: Path, steps: int | None = None, backend: str = "auto", sparse: str = "none") -> Editor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist; pass --model with a checkpoint folder (qk-train's final/) or a bundle (qk-export's output)")
    if (path / "manifest.json").exists():
        return BundleEditor(path, steps, backend, sparse)
    return TorchEditor(path, steps, sparse)


# --------------------------------------------------------------------------- metrics registry


def _edited(out) -> Edited:
    """An Editor's answer for one edit; a plain image (an editor that reports no gate) has no seam."""
    return out if isinstance(out, Edited) else Edited(np.asarray(out))


def _success_table(per: dict[str, list[bool]]) -> dict:
    table = {k: (float(np.mean(v)) if v else None) for k, v in per.items()}
    every = [x for v in per.values() for x in v]
    table["overall"] = float(np.mean(every)) if every else None
    return table


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def edit_metrics(editor: Editor, split: str, n: int, settings: list[str], seed: int, progress: Callable,
                 instructions: str = "template", outcomes: bool = False) -> dict:
    """The edit figures; with `outcomes` also each edit's own (in test-item order, per setting:
    `success` and `strict` 0/1, `drift`) under "outcomes", for paired comparisons and intervals."""
    if instructions not in INSTRUCTIONS:
        raise ValueError(f"instructions={instructions!r}; choose one of {list(INSTRUCTIONS)}")
    per = {s: {k: [] for k in EDIT_KINDS} for s in settings}
    strict = {s: {k: [] for k in EDIT_KINDS} for s in settings}
    drift = {s: [] for s in settings}
    inside = {s: [] for s in settings}
    seams = {s: [] for s in settings}
    items = {s: {"success": [], "strict": [], "drift": []} for s in settings}
    for start in progress(range(0, n, CHUNK), desc=f"edits ({CHUNK} a batch)"):
        ids = range(start, min(n, start + CHUNK))
        samples = [make_edit(split, i, editor.side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in ids]
        texts = [x.instruction if instructions == "template" else paraphrase(x, i) for x, i in zip(samples, ids)]
        for s in settings:
            outs = editor.edit_many([x.source for x in samples], texts,
                                    [x.box if SETTINGS[s] else None for x in samples], [seed + i for i in ids])
            for sample, out in zip(samples, map(_edited, outs)):
                score = score_edit(out.image, sample)
                per[s][sample.kind].append(bool(score["success"]))
                strict[s][sample.kind].append(bool(score["strict"]))
                drift[s].append(score["drift"])
                items[s]["success"].append(int(bool(score["success"])))
                items[s]["strict"].append(int(bool(score["strict"])))
                items[s]["drift"].append(round(float(score["drift"]), OUTCOME_DIGITS))
                inside[s].append(score["inside_error"])
                if out.active is not None:
                    active = token_mask_to_pixels(out.active, sample.source.shape[0])
                    value = seam(out.image, sample.source, sample.mask, active)
                    if value is not None:
                        seams[s].append(value)
    result = {
        "edit_success": {s: _success_table(per[s]) for s in settings},
        "edit_success_strict": {s: _success_table(strict[s]) for s in settings},
        "drift": {s: _mean(drift[s]) for s in settings},
        "inside_error": {s: _mean(inside[s]) for s in settings},
        "seam": {s: _mean(seams[s]) for s in settings},
    }
    if outcomes:
        result["outcomes"] = {"edits": items if n else None}
    return result


def generation_metrics(editor: Editor, split: str, n: int, seed: int, progress: Callable, keep: list | None = None,
                       outcomes: bool = False) -> dict:
    """gen_accuracy (v1.1 judge) and gen_accuracy_v1; with `outcomes` also each generation's
    `correct` and `correct_v1` (0/1, in test-item order) under "outcomes"."""
    ok, ok_v1 = [], []
    for start in progress(range(0, n, CHUNK), desc=f"generations ({CHUNK} a batch)"):
        ids = range(start, min(n, start + CHUNK))
        drawn = [make_generation(split, i, editor.side) for i in ids]
        outs = editor.generate_many([caption for _, caption, _ in drawn], [seed + i for i in ids])
        for out, (_, _, scene) in zip(outs, drawn):
            ok.append(judge_generation(out, scene))
            ok_v1.append(judge_generation_v1(out, scene))
        if keep is not None:  # the images, for FD-SW
            keep.extend(outs)
    result = {"gen_accuracy": _mean(ok), "gen_accuracy_v1": _mean(ok_v1)}
    if outcomes:
        result["outcomes"] = {"generations": {"correct": [int(bool(x)) for x in ok], "correct_v1": [int(bool(x)) for x in ok_v1]}
                              if n else None}
    return result


def evaluate(model: Path, *, split: str = "test", n: int = 500, gen_n: int | None = None, settings: list[str] | None = None,
             steps: int | None = None, seed: int = 0, backend: str = "auto", sparse: str = "none", progress: bool = True,
             inception: Path | None = None, instructions: str = "template", outcomes: bool = False) -> dict:
    """qk-eval's figures of `model`; with `outcomes`, the per-item outcomes behind them under
    "outcomes" ({"edits": {setting: {success, strict, drift}}, "generations": {correct, correct_v1}},
    lists in test-item order), whose means are the figures."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; choose one of {list(SPLITS)}")
    if instructions not in INSTRUCTIONS:
        raise ValueError(f"instructions={instructions!r}; choose one of {list(INSTRUCTIONS)}")
    settings = settings or list(SETTINGS)
    gen_n = n if gen_n is None else gen_n
    bar = _progress if progress else (lambda it, desc=None: it)
    editor = open_editor(model, steps, backend, sparse)
    tic = time.perf_counter()
    result = {"model": str(model), "split": split, "n_edits": n, "n_generations": gen_n, "steps": steps, "seed": seed, "sparse": sparse,
              "instructions": instructions}
    generated: list = []  # filled by "generation", read by "fd"
    items: dict = {}
    for name, fn in METRICS.items():
        part = fn(editor=editor, split=split, n=n, gen_n=gen_n, settings=settings, seed=seed, progress=bar,
                  generated=generated, inception=inception, instructions=instructions, outcomes=outcomes)
        items.update(part.pop("outcomes", {}))
        result.update(part)
    if outcomes:
        result["outcomes"] = {"edits": items.get("edits"), "generations": items.get("generations")}
    result["elapsed_s"] = round(time.perf_counter() - tic, 1)
    return result


METRICS: dict[str, Callable[..., dict]] = {
    "edit": lambda editor, split, n, settings, seed, progress, instructions, outcomes=False, **_: edit_metrics(
        editor, split, n, settings, seed, progress, instructions, outcomes),
    "generation": lambda editor, split, gen_n, seed, progress, generated, outcomes=False, **_: generation_metrics(
        editor, split, gen_n, seed, progress, generated, outcomes),
    "fd": lambda editor, split, generated, inception, **_: fd_metrics(editor, split, generated, inception),
}


# --------------------------------------------------------------------------- FD-SW


def fd_metrics(editor: Editor, split: str, generated: list, inception: Path | None) -> dict:
    """`fd`: FD-SW of the generations above against real images (see qk_train/eval/fd.py); true FID
    only with local Inception weights (`--inception`). Without torch it says why it is missing."""
    try:
        from .fd import fd_report
    except ImportError as exc:
        return {"fd": {"value": None, "reason": f"FD-SW needs torch ({exc}); pip install -e '.[train]'"}}
    return {"fd": fd_report(generated, split=split, side=editor.side, inception=inception)}


def _progress(iterable, desc=None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, dynamic_ncols=True, file=sys.stderr)


def _kinds(table: dict) -> str:
    return ", ".join(f"{k} {table[k]:.2f}" for k in EDIT_KINDS if table[k] is not None)


def summary_line(r: dict) -> str:
    parts = []
    for s, table in r["edit_success"].items():
        if table["overall"] is None:  # --n 0: generations only
            continue
        part = f"{s}: overall {table['overall']:.3f} ({_kinds(table)})"
        strict = r.get("edit_success_strict", {}).get(s)
        if strict is not None:
            part += f", strict {strict['overall']:.3f} ({_kinds(strict)})"
        part += f", drift {r['drift'][s]:.4f}"
        if r.get("seam", {}).get(s) is not None:
            part += f", seam {r['seam'][s]:.4f}"
        parts.append(part)
    if r.get("gen_accuracy") is not None:
        parts.append(f"gen_accuracy {r['gen_accuracy']:.3f}"
                     + (f" (v1 {r['gen_accuracy_v1']:.3f})" if r.get("gen_accuracy_v1") is not None else ""))
    return "; ".join(parts)


def model_folders(model: Path) -> list[Path]:
    """The folders --model reads: the checkpoint or bundle, and a sibling bundle a bundle shares
    its text encoder with."""
    from qk_runtime.bundle import open_bundle

    if (model / "manifest.json").is_file():
        try:
            return [model, *open_bundle(model, verify=False).folders]
        except QKRuntimeError:
            pass  # evaluate() names what is wrong with the bundle
    return [model]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qk-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help=f"checkpoint or bundle folder (default: {DEFAULT_MODEL.relative_to(REPO_ROOT)})")
    parser.add_argument("--split", default="test", choices=list(SPLITS), help="ShapeWorld split (default: test)")
    parser.add_argument("--n", type=int, default=500, help="number of edits (default 500; kinds in equal shares)")
    parser.add_argument("--gen-n", type=int, default=None, help="number of generations (default: --n)")
    box = parser.add_mutually_exclusive_group()
    box.add_argument("--no-box", action="store_true", help="evaluate edits without the region box only")
    box.add_argument("--box-only", action="store_true", help="evaluate edits with the region box only")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's, 20)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first sample (sample i uses seed + i)")
    parser.add_argument("--backend", default="auto", help="for bundles: auto|ort|openvino (default auto)")
    parser.add_argument("--sparse", default="none", choices=["none", "region"], help="decoder sparsity for edits")
    parser.add_argument("--instructions", default="template", choices=list(INSTRUCTIONS),
                        help="edit instructions: the training templates' (default) or held-out paraphrases of the same meaning")
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help="local Inception-v3 state dict (torchvision layout; needs torchvision): adds true FID to `fd`")
    parser.add_argument("--json", required=True, help="write the figures to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 0 or (args.gen_n is not None and args.gen_n < 0):
        parser.error("--n and --gen-n must be >= 0")
    if args.n == 0 and not args.gen_n:
        parser.error("nothing to evaluate: --n 0 with no --gen-n; give --n N for edits and/or --gen-n N for generations")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        parser.error(f"--steps {args.steps}: must be an integer from 1 to 1000")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be >= 0")
    try:  # before the evaluation, not after it
        check_writable("--json", Path(args.json))
        check_output("--json", Path(args.json), inputs=[("--inception", args.inception and Path(args.inception))],
                     folders=[("--model", f) for f in model_folders(Path(args.model))])
    except QKRuntimeError as exc:
        parser.error(str(exc))
    settings = ["no_box"] if args.no_box else ["box"] if args.box_only else list(SETTINGS)
    try:
        if args.inception:  # fail before the generations, not after them
            from .fd import check_inception

            check_inception(Path(args.inception))
        result = evaluate(Path(args.model), split=args.split, n=args.n, gen_n=args.gen_n, settings=settings, steps=args.steps,
                          seed=args.seed, backend=args.backend, sparse=args.sparse, progress=not args.no_progress,
                          inception=Path(args.inception) if args.inception else None, instructions=args.instructions)
    except (FileNotFoundError, ValueError, QKRuntimeError) as exc:  # QKRuntimeError: e.g. an unknown or missing backend
        print(f"qk-eval: error: {exc}", file=sys.stderr)
        return 2
    from ..checkpoint import atomic_write_bytes

    print(summary_line(result))  # first: the figures are on screen even if the file cannot be written
    try:
        atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    except OSError as exc:
        print(f"qk-eval: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
