"""qk-eval: edit success, drift and generation accuracy on a ShapeWorld split.

    qk-eval --json results.json                         # the shipped default checkpoint
    qk-eval --model runs/small/final --n 500 --json r.json
    qk-eval --model engines/default/int8 --json r.json  # a bundle: run through qk_runtime

A model is a checkpoint folder (run with the torch reference pipeline) or a bundle folder
(anything with a manifest.json, run with the ONNX runtime). Edits are test-split samples
`make_edit(split, i, kind=EDIT_KINDS[i % 5])`, so every kind gets the same share; each is run
with its region box and without it, and scored with the rule of `shapeworld.md`
(`qk_train.eval.metrics.score_edit`). Generation: `gen_accuracy` is the share of generated
images in which every captioned object is found with its colour, shape and grid position.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from qk_runtime.errors import QKRuntimeError
from qk_runtime.inputs import check_writable

from ..data.shapeworld import EDIT_KINDS, SPLITS, make_edit, make_generation
from .metrics import judge_generation, score_edit

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "engines" / "default" / "checkpoint"
SETTINGS = {"box": True, "no_box": False}
CHUNK = 16  # samples run together through the torch pipeline


class Editor(Protocol):
    side: int

    def edit_many(self, images: list, instructions: list[str], boxes: list, seeds: list[int]) -> list[np.ndarray]: ...

    def generate_many(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]: ...


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
            return [self.pipe.edit(*args, steps=self.steps, seed=sd, sparse="region").image
                    for *args, sd in zip(images, instructions, boxes, seeds)]
        outs = self.pipe.edit_batch(images, instructions, boxes, steps=self.steps, seeds=seeds)
        return [o.image for o in outs]

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
        return [self.session.edit(img, ins, box=box, steps=self.steps, seed=sd, sparse=self.sparse).image
                for img, ins, box, sd in zip(images, instructions, boxes, seeds)]

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


def edit_metrics(editor: Editor, split: str, n: int, settings: list[str], seed: int, progress: Callable) -> dict:
    per = {s: {k: [] for k in EDIT_KINDS} for s in settings}
    drift = {s: [] for s in settings}
    inside = {s: [] for s in settings}
    for start in progress(range(0, n, CHUNK), desc=f"edits ({CHUNK} a batch)"):
        ids = range(start, min(n, start + CHUNK))
        samples = [make_edit(split, i, editor.side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in ids]
        for s in settings:
            outs = editor.edit_many([x.source for x in samples], [x.instruction for x in samples],
                                    [x.box if SETTINGS[s] else None for x in samples], [seed + i for i in ids])
            for sample, out in zip(samples, outs):
                score = score_edit(out, sample)
                per[s][sample.kind].append(bool(score["success"]))
                drift[s].append(score["drift"])
                inside[s].append(score["inside_error"])
    success = {}
    for s in settings:
        table = {k: (float(np.mean(v)) if v else None) for k, v in per[s].items()}
        table["overall"] = float(np.mean([x for v in per[s].values() for x in v])) if n else None
        success[s] = table
    return {
        "edit_success": success,
        "drift": {s: float(np.mean(drift[s])) if n else None for s in settings},
        "inside_error": {s: float(np.mean(inside[s])) if n else None for s in settings},
    }


def generation_metrics(editor: Editor, split: str, n: int, seed: int, progress: Callable, keep: list | None = None) -> dict:
    ok = []
    for start in progress(range(0, n, CHUNK), desc=f"generations ({CHUNK} a batch)"):
        ids = range(start, min(n, start + CHUNK))
        drawn = [make_generation(split, i, editor.side) for i in ids]
        outs = editor.generate_many([caption for _, caption, _ in drawn], [seed + i for i in ids])
        ok.extend(judge_generation(out, scene) for out, (_, _, scene) in zip(outs, drawn))
        if keep is not None:  # the images, for FD-SW
            keep.extend(outs)
    return {"gen_accuracy": float(np.mean(ok)) if ok else None}


def evaluate(model: Path, *, split: str = "test", n: int = 500, gen_n: int | None = None, settings: list[str] | None = None,
             steps: int | None = None, seed: int = 0, backend: str = "auto", sparse: str = "none", progress: bool = True,
             inception: Path | None = None) -> dict:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; choose one of {list(SPLITS)}")
    settings = settings or list(SETTINGS)
    gen_n = n if gen_n is None else gen_n
    bar = _progress if progress else (lambda it, desc=None: it)
    editor = open_editor(model, steps, backend, sparse)
    tic = time.perf_counter()
    result = {"model": str(model), "split": split, "n_edits": n, "n_generations": gen_n, "steps": steps, "seed": seed, "sparse": sparse}
    generated: list = []  # filled by "generation", read by "fd"
    for name, fn in METRICS.items():
        result.update(fn(editor=editor, split=split, n=n, gen_n=gen_n, settings=settings, seed=seed, progress=bar,
                         generated=generated, inception=inception))
    result["elapsed_s"] = round(time.perf_counter() - tic, 1)
    return result


METRICS: dict[str, Callable[..., dict]] = {
    "edit": lambda editor, split, n, settings, seed, progress, **_: edit_metrics(editor, split, n, settings, seed, progress),
    "generation": lambda editor, split, gen_n, seed, progress, generated, **_: generation_metrics(editor, split, gen_n, seed, progress, generated),
    "fd": lambda editor, split, generated, inception, **_: fd_metrics(editor, split, generated, inception),
}


# --------------------------------------------------------------------------- FD-SW (issue #7)


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


def summary_line(r: dict) -> str:
    parts = []
    for s, table in r["edit_success"].items():
        if table["overall"] is None:  # --n 0: generations only
            continue
        parts.append(f"{s}: overall {table['overall']:.3f} (" + ", ".join(f"{k} {table[k]:.2f}" for k in EDIT_KINDS if table[k] is not None) + f"), drift {r['drift'][s]:.4f}")
    if r.get("gen_accuracy") is not None:
        parts.append(f"gen_accuracy {r['gen_accuracy']:.3f}")
    return "; ".join(parts)


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
    except QKRuntimeError as exc:
        parser.error(str(exc))
    settings = ["no_box"] if args.no_box else ["box"] if args.box_only else list(SETTINGS)
    try:
        if args.inception:  # fail before the generations, not after them
            from .fd import check_inception

            check_inception(Path(args.inception))
        result = evaluate(Path(args.model), split=args.split, n=args.n, gen_n=args.gen_n, settings=settings, steps=args.steps,
                          seed=args.seed, backend=args.backend, sparse=args.sparse, progress=not args.no_progress,
                          inception=Path(args.inception) if args.inception else None)
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
