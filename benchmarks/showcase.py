"""The README's picture: a few edits and text-to-image generations of a bundle, beside what was asked.

    python benchmarks/showcase.py                                   # engines/default/int8 -> docs/showcase.png
    python benchmarks/showcase.py --bundle engines/default/fp32 --out /tmp/showcase.png --scale 2

Rows, top to bottom:
- edits (one per kind of `--kinds`): ShapeWorld validation edit `make_edit("val", index, kind=kind)`,
  noise seed = index; columns: the source with the region query (box) drawn on it, the bundle's
  output, ShapeWorld's target (the exact expected image) and the instruction with the verdict of
  `qk_train.eval.metrics.score_edit` (strict rule, v1.1);
- generations (one per index of `--gen-indices`): `make_generation("val", index)`, noise seed =
  index; columns: empty, the bundle's output, the scene the caption was drawn from, and the
  caption with the verdict of `judge_generation` (v1.1).

The samples are fixed by their indices, not picked for success: the picture shows what the bundle
does on them, failures included. Everything runs through `qk_runtime.EditSession` (numpy + ONNX
Runtime, no torch); captions are drawn with Pillow. Writes the PNG and a JSON beside it (same
name, `.json`) with each row's instruction, verdict and where its tiles lie in the PNG.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "engines" / "default" / "int8"
DEFAULT_OUT = REPO / "docs" / "showcase.png"
EDIT_KINDS_SHOWN = ("colour", "remove", "insert", "move")
SIDE = 64  # ShapeWorld's side for the small preset; checked against the bundle

# layout, in pixels of the picture
PAD = 8
TEXT_W = 300
HEADER_H = 24
SECTION_H = 26
BG = (255, 255, 255)
INK = (20, 20, 20)
GREY = (110, 110, 110)
BOX_INK = (255, 255, 255)
PASS_INK = (20, 120, 40)
FAIL_INK = (180, 30, 30)


@dataclass(frozen=True)
class Row:
    """One row of the picture: images are (side, side, 3) uint8; `source` is None for generations."""

    task: str  # "edit" | "generate"
    kind: str  # edit kind or "generate"
    index: int  # ShapeWorld validation index (also the noise seed)
    text: str  # instruction or caption
    source: np.ndarray | None
    box: tuple[int, int, int, int] | None
    output: np.ndarray
    expected: np.ndarray
    verdict: dict  # the judge's findings


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"indices are >= 0, got {text!r}")
    return values


def _kinds(text: str) -> tuple[str, ...]:
    from qk_train.data.shapeworld import EDIT_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown edit kind(s) {bad}; allowed: {', '.join(EDIT_KINDS)}")
    return kinds


# --------------------------------------------------------------------------- running the bundle


def run_rows(session, kinds, edit_index: int, gen_indices, steps: int | None) -> list[Row]:
    """Run the edits and generations on `session` (an open `qk_runtime.EditSession`) and judge them."""
    from qk_train.data.shapeworld import make_edit, make_generation, render
    from qk_train.eval.metrics import generation_findings, judge_generation, score_edit

    if session.side != SIDE:
        raise ValueError(f"this picture uses {SIDE} px ShapeWorld scenes; the bundle's side is {session.side} "
                         f"(pass a bundle of the small preset)")
    rows = []
    for kind in kinds:
        sample = make_edit("val", edit_index, SIDE, kind=kind)  # (64, 64, 3) uint8 source and target
        result = session.edit(sample.source, sample.instruction, box=sample.box, steps=steps, seed=edit_index)
        score = score_edit(result.image, sample)
        rows.append(Row("edit", kind, edit_index, sample.instruction, sample.source, sample.box, result.image,
                        sample.target, {"strict": score["strict"], "success": score["success"],
                                        "drift": round(score["drift"], 4)}))
    for index in gen_indices:
        _, caption, scene = make_generation("val", index, SIDE)
        result = session.generate(caption, steps=steps, seed=index)
        findings = generation_findings(result.image, scene)
        rows.append(Row("generate", "generate", index, caption, None, None, result.image, render(scene),
                        {"pass": judge_generation(result.image, scene),
                         "objects_found": f"{sum(findings['found'])}/{len(findings['found'])}",
                         "extra_objects": findings["extra_objects"]}))
    return rows


# --------------------------------------------------------------------------- drawing


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def _verdict_line(row: Row) -> tuple[str, tuple[int, int, int]]:
    v = row.verdict
    if row.task == "edit":
        ok = v["strict"]
        return (f"{'pass' if ok else 'fail'} (strict rule), drift {v['drift']:.4f}", PASS_INK if ok else FAIL_INK)
    ok = v["pass"]
    return (f"{'pass' if ok else 'fail'}: objects found {v['objects_found']}, extra {v['extra_objects']}",
            PASS_INK if ok else FAIL_INK)


def draw(rows: list[Row], scale: int, title: str) -> tuple[Image.Image, list[dict]]:
    """The picture, and per row where its tiles lie: {"source"|"output"|"expected": [x0, y0, x1, y1]}."""
    from PIL import Image, ImageDraw

    tile = SIDE * scale
    font, small, bold = _font(15), _font(13), _font(16)
    cols_x = [PAD + c * (tile + PAD) for c in range(3)]
    text_x = cols_x[2] + tile + 2 * PAD
    width = text_x + TEXT_W + PAD
    sections = sorted({r.task for r in rows}, key=("edit", "generate").index)
    height = HEADER_H + 2 * PAD + len(sections) * SECTION_H + len(rows) * (tile + PAD) + PAD
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    d.text((PAD, PAD), title, fill=INK, font=bold)

    y = HEADER_H + 2 * PAD
    places = []
    for task in sections:
        heads = (("source + box", "output", "target"), "instruction") if task == "edit" else \
                (("", "output", "scene of the caption"), "prompt")
        d.text((PAD, y + 4), "Edits" if task == "edit" else "Text to image", fill=INK, font=bold)
        for x, head in zip(cols_x, heads[0]):
            if head:
                d.text((x + tile // 2, y + 6), head, fill=GREY, font=small, anchor="ma")
        d.text((text_x, y + 6), heads[1], fill=GREY, font=small)
        y += SECTION_H
        for row in (r for r in rows if r.task == task):
            place = {}
            for x, name, image in zip(cols_x, ("source", "output", "expected"), (row.source, row.output, row.expected)):
                if image is None:
                    continue
                big = np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8))  # (tile, tile, 3) nearest
                img.paste(Image.fromarray(big), (x, y))
                place[name] = [x, y, x + tile, y + tile]
            if row.box is not None:
                x0, y0, x1, y1 = row.box
                sx, sy = place["source"][:2]
                d.rectangle((sx + x0 * scale, sy + y0 * scale, sx + x1 * scale - 1, sy + y1 * scale - 1),
                            outline=BOX_INK, width=2)
            lines = textwrap.wrap(f'"{row.text}"', width=34)
            ty = y + 4
            for line in lines:
                d.text((text_x, ty), line, fill=INK, font=font)
                ty += 19
            label = row.kind if row.task == "edit" else "generation"
            d.text((text_x, ty + 4), f"{label}, val #{row.index}, seed {row.index}", fill=GREY, font=small)
            verdict, colour = _verdict_line(row)
            d.text((text_x, ty + 24), verdict, fill=colour, font=small)
            places.append(place)
            y += tile + PAD
    return img, places


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="showcase", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: engines/default/int8)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: docs/showcase.png); "
                   "the rows' details go to the same name with .json")
    p.add_argument("--kinds", type=_kinds, default=EDIT_KINDS_SHOWN,
                   help="edit kinds, one row each (default: colour,remove,insert,move)")
    p.add_argument("--edit-index", type=int, default=0, help="ShapeWorld validation index of every edit row (default 0)")
    p.add_argument("--gen-indices", type=_ints, default=(0, 1, 2),
                   help="ShapeWorld validation indices of the generation rows (default 0,1,2)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the bundle's)")
    p.add_argument("--backend", default="ort-cpu", help="runtime backend (default ort-cpu, so the picture does not "
                   "depend on which runtimes are installed)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--scale", type=int, default=3, choices=range(1, 7), metavar="1..6",
                   help="pixels of the picture per image pixel (default 3)")
    args = p.parse_args(argv)
    if args.edit_index < 0:
        p.error(f"--edit-index is >= 0, got {args.edit_index}")
    if not args.kinds and not args.gen_indices:
        p.error("nothing to draw: give --kinds or --gen-indices")
    if args.out.suffix.lower() != ".png":
        p.error(f"--out must end in .png, got {args.out}")

    from qk_runtime import EditSession
    from qk_runtime.engines import atomic_write
    from qk_runtime.errors import BackendUnavailable, BundleError, InputError

    t0 = time.perf_counter()
    try:
        with EditSession(args.bundle, backend=args.backend, threads=args.threads) as session:
            rows = run_rows(session, args.kinds, args.edit_index, args.gen_indices, args.steps)
            steps = args.steps if args.steps is not None else session.bundle.sampler.steps
    except (BundleError, InputError, BackendUnavailable, ValueError) as exc:
        print(f"showcase: {exc}", file=sys.stderr)
        return 2
    try:
        bundle_name = str(args.bundle.resolve().relative_to(REPO))
    except ValueError:
        bundle_name = str(args.bundle)
    img, places = draw(rows, args.scale, f"{bundle_name}, {steps} steps, ShapeWorld validation split")
    data = png_bytes(img)
    atomic_write(args.out, data)
    doc = {
        "bundle": bundle_name,
        "backend": args.backend,
        "steps": steps,
        "scale": args.scale,
        "command": "python benchmarks/showcase.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "rows": [{"task": r.task, "kind": r.kind, "index": r.index, "seed": r.index, "text": r.text,
                  "box": list(r.box) if r.box else None, "verdict": r.verdict, "tiles": place}
                 for r, place in zip(rows, places)],
    }
    atomic_write(args.out.with_suffix(".json"), (json.dumps(doc, indent=2) + "\n").encode())
    edits = [r for r in rows if r.task == "edit"]
    gens = [r for r in rows if r.task == "generate"]
    print(f"showcase: wrote {args.out} ({len(data) / 1024:.0f} KB, {img.width}x{img.height}) in "
          f"{time.perf_counter() - t0:.1f} s; edits passing the strict rule {sum(r.verdict['strict'] for r in edits)}"
          f"/{len(edits)}, generations passing {sum(r.verdict['pass'] for r in gens)}/{len(gens)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # qk_train.data (numpy only) from a checkout
    sys.exit(main())
