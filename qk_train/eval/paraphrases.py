"""Held-out paraphrases of ShapeWorld edit instructions, for `qk-eval --instructions paraphrase`.

Training words every edit with `shapeworld.TEMPLATES`. The templates here word the same edits
differently and are never used in training, so an evaluation with them measures how far a
model follows the meaning of an instruction rather than the training strings. Each is filled
from the sample's own scenes, never from the words of its instruction:

- colour: the old object's colour and shape, and the new object's colour;
- remove: the removed object's colour and shape;
- insert: the new object's colour, shape and size, and the grid cell of its centre;
- move: the object, and either the grid cell of its new centre or the direction of its shift.
  Which of the two the templated instruction gave ("to the {position}" or "left/right/up/down")
  is read from the instruction, the value from the geometry, and the two must agree;
- resize: "bigger" or "smaller", from the old and new half-extents.

Grid cells and directions have wordings of their own (`WHERE`, `AREA`, `TOWARD`, `FURTHER`).
Directions avoid "to the left" and the like, which the training templates use for the cells
("move the red circle to the left" moves it to the left cell). `paraphrase(sample, index)` picks
one template of the edit's sub-kind by a seeded draw from `index`: the same text for the same
sample index every time, independent of qk-eval's cycle of kinds over indices.
"""
from __future__ import annotations

import operator

import numpy as np

from qk_train.data.shapeworld import TEMPLATES, EditSample, Obj, position_name

PARAPHRASE_SEED = 0x50415241  # the seeded draw of `paraphrase`

# "put it {where}"
WHERE: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "up top",
    "top right": "in the top right corner",
    "left": "on the left side",
    "center": "in the middle",
    "right": "on the right side",
    "bottom left": "in the bottom left corner",
    "bottom": "down at the bottom",
    "bottom right": "in the bottom right corner",
}
# "take it to {area}"
AREA: dict[str, str] = {
    "top left": "the upper left corner",
    "top": "the middle of the top edge",
    "top right": "the upper right corner",
    "left": "the middle of the left side",
    "center": "the centre of the image",
    "right": "the middle of the right side",
    "bottom left": "the lower left corner",
    "bottom": "the middle of the bottom edge",
    "bottom right": "the lower right corner",
}
# "slide it {toward}", "shift it {further}"
TOWARD: dict[str, str] = {"left": "leftwards", "right": "rightwards", "up": "upwards", "down": "downwards"}
FURTHER: dict[str, str] = {"left": "further left", "right": "further right", "up": "higher up", "down": "lower down"}

# Fields: {c} {s} the object as it was (colour, shape), {c2} the new colour, {size} "small" or
# "large", {where} / {area} the grid cell, {toward} / {further} the direction.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "colour": (
        "could you colour the {c} {s} {c2}",
        "turn the {c} {s} {c2}",
        "recolour the {c} {s} {c2}",
        "the {c} {s} should be {c2}",
        "fill the {c} {s} with {c2}",
        "give the {c} {s} a {c2} colour",
        "switch the {c} {s} to {c2}",
        "i want the {c} {s} in {c2}",
        "repaint the {c} {s} in {c2}",
        "the {c} {s} needs to become {c2}",
    ),
    "remove": (
        "the {c} {s} has to go",
        "get rid of the {c} {s}",
        "take out the {c} {s}",
        "could you take away the {c} {s}",
        "wipe the {c} {s} off the picture",
        "drop the {c} {s}",
        "clear away the {c} {s}",
        "make the {c} {s} disappear",
        "leave the {c} {s} out of the picture",
        "i do not want the {c} {s} any more",
    ),
    "insert": (
        "draw a {size} {c} {s} {where}",
        "place a {c} {s} {where}",
        "add one {size} {c} {s} to {area}",
        "there should be a {size} {c} {s} {where}",
        "insert a {c} {s} into {area}",
        "could you draw a {c} {s} {where}",
        "{where}, add a {size} {c} {s}",
        "give the picture a {size} {c} {s} {where}",
        "i would like a {c} {s} {where}",
        "put in a {size} {c} {s}, {where}",
    ),
    "move_to": (
        "put the {c} {s} {where}",
        "relocate the {c} {s} to {area}",
        "the {c} {s} belongs {where}",
        "take the {c} {s} over to {area}",
        "could you shift the {c} {s} to {area}",
        "drag the {c} {s} into {area}",
        "the {c} {s} should be {where}",
        "send the {c} {s} to {area}",
    ),
    "move_dir": (
        "slide the {c} {s} {toward}",
        "shift the {c} {s} {further}",
        "push the {c} {s} {toward}",
        "the {c} {s} should sit {further}",
        "take the {c} {s} and carry it {toward}",
        "drag the {c} {s} {toward}",
        "the {c} {s} needs to go {further}",
        "reposition the {c} {s} {further}",
    ),
    "bigger": (
        "enlarge the {c} {s}",
        "scale up the {c} {s}",
        "make the {c} {s} larger",
        "the {c} {s} should be bigger",
        "grow the {c} {s}",
        "increase the size of the {c} {s}",
        "the {c} {s} is too small",
    ),
    "smaller": (
        "shrink the {c} {s}",
        "scale down the {c} {s}",
        "reduce the size of the {c} {s}",
        "the {c} {s} should be smaller",
        "decrease the size of the {c} {s}",
        "the {c} {s} is too big",
        "make the {c} {s} less large",
    ),
}
KIND_OF: dict[str, str] = {"colour": "colour", "remove": "remove", "insert": "insert", "move_to": "move",
                           "move_dir": "move", "bigger": "resize", "smaller": "resize"}


def _need(obj: Obj | None, what: str, sample: EditSample) -> Obj:
    if obj is None:
        raise ValueError(f"a {sample.kind!r} sample needs {what}; got None")
    return obj


def _cell(obj: Obj, side: int) -> dict[str, str]:
    position = position_name(obj.cx, obj.cy, side)
    return {"where": WHERE[position], "area": AREA[position]}


def _direction(old: Obj, new: Obj) -> str | None:
    """The direction of a shift along one axis, or None for any other move."""
    dx, dy = new.cx - old.cx, new.cy - old.cy
    if dy == 0 and dx != 0:
        return "left" if dx < 0 else "right"
    if dx == 0 and dy != 0:
        return "up" if dy < 0 else "down"
    return None


def _move(sample: EditSample, fields: dict[str, str]) -> tuple[str, dict[str, str]]:
    old, new = _need(sample.old_obj, "old_obj", sample), _need(sample.target_obj, "target_obj", sample)
    side = sample.source.shape[0]
    position = position_name(new.cx, new.cy, side)
    if sample.instruction in {t.format(**fields, position=position) for t in TEMPLATES["move_to"]}:
        return "move_to", {**fields, **_cell(new, side)}
    direction = _direction(old, new)
    if direction and sample.instruction in {t.format(**fields, direction=direction) for t in TEMPLATES["move_dir"]}:
        return "move_dir", {**fields, "toward": TOWARD[direction], "further": FURTHER[direction]}
    raise ValueError(
        f"move instruction {sample.instruction!r} names neither the new place ({position!r}) nor the "
        f"direction of the shift ({direction or 'not along one axis'}) in shapeworld.TEMPLATES' words; "
        "paraphrases reword samples of make_edit only"
    )


def edit_meaning(sample: EditSample) -> tuple[str, dict[str, str]]:
    """(sub-kind, template fields) of an edit, read from its scenes: the sub-kind is a key of
    PARAPHRASES (colour, remove, insert, move_to, move_dir, bigger, smaller)."""
    side = sample.source.shape[0]
    if sample.kind == "insert":
        new = _need(sample.target_obj, "target_obj", sample)
        return "insert", {"c": new.colour, "s": new.shape, "size": new.size, **_cell(new, side)}
    old = _need(sample.old_obj, "old_obj", sample)
    fields = {"c": old.colour, "s": old.shape}
    if sample.kind == "remove":
        return "remove", fields
    new = _need(sample.target_obj, "target_obj", sample)
    if sample.kind == "colour":
        return "colour", {**fields, "c2": new.colour}
    if sample.kind == "move":
        return _move(sample, fields)
    if sample.kind == "resize":
        return ("bigger" if new.r > old.r else "smaller"), fields
    raise ValueError(f"unknown edit kind {sample.kind!r}; allowed: {tuple(sorted(set(KIND_OF.values())))}")


def paraphrase(sample: EditSample, index: int) -> str:
    """A held-out wording of `sample`'s edit, the same for the same `index` (>= 0) every time."""
    try:
        index = operator.index(index)
    except TypeError as e:
        raise ValueError(f"paraphrase index must be an integer >= 0, got {index!r}") from e
    if index < 0:
        raise ValueError(f"paraphrase index must be an integer >= 0, got {index}")
    sub, fields = edit_meaning(sample)
    templates = PARAPHRASES[sub]
    rng = np.random.default_rng(np.random.SeedSequence([PARAPHRASE_SEED, index]))
    return templates[int(rng.integers(len(templates)))].format(**fields)

