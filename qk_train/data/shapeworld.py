"""ShapeWorld v1: procedurally drawn scenes and edits with exact ground truth.

Implements the contract in `shapeworld.md` (scenes, captions, edits, splits). Pure numpy: the
runtime and the evaluator import this module without torch.

Every sample is drawn in two halves: a *layout* (`edit_layout`, `generation_layout`: scenes,
instruction or caption, box, the objects involved; no pixels) and its rendering (`render`,
`render_edit`). `make_edit` and `make_generation` are the two halves in a row, and
`qk_train.data.render_torch` renders the same layouts on a torch device, pixel for pixel.

Seeds (the split rule)
----------------------
Every scene and edit is a pure function of its arguments. Random numbers come from
``np.random.default_rng(np.random.SeedSequence([DOMAIN, SPLIT_ID[split], index, stream, ...]))``
with ``DOMAIN = 0x5157``, ``SPLIT_ID = {"train": 0, "val": 1, "test": 2}`` and ``stream``:

- ``STREAM_SCENE`` (0): `make_scene` and `make_generation`;
- ``STREAM_EDIT_KIND`` (1): the kind `make_edit` picks when ``kind=None`` (uniform over the five);
- ``STREAM_EDIT`` (2) followed by the kind's position in `EDIT_KINDS`: the edit itself, so
  ``make_edit(s, i, kind=None)`` equals ``make_edit(s, i, kind=<the kind it picked>)``.

The split id is part of every seed, so the seeds of train, val and test are disjoint sets by
construction: no test scene is ever drawn from a seed a train scene uses. `exclude_pairs` and
`backgrounds` only filter choices; they are not part of the seed. When a draw cannot be
satisfied (no free place, no free colour) the generator draws again from the same stream, a
bounded number of times, so the result stays a pure function of the arguments.

Texture
-------
The background of a scene is its base colour plus a texture drawn with the project's portable
generator (`qk_runtime.noise.portable_normal`: SplitMix64 + Box-Muller, reproducible in any
language and on any torch device)::

    texture = portable_normal(texture_seed, (side, side, 3)) * float32(TEXTURE_SIGMA)  # float32
    pixel = uint8(clip(rint(float64(base) + float64(texture)), 0, 255))  # rint: half to even

Texture values are bounded: ``|portable_normal| <= sqrt(-2 log 2^-53) < 8.58``, so a textured
background pixel lies within 51 of its base colour on every channel, while every palette colour
differs from every background by at least 72 on some channel. A background pixel therefore never
equals an object's colour, and the pixels where two renderings of the same texture differ are
exactly the pixels whose topmost painted colour differs (`change_mask`, computed from the objects
alone).

Geometry
--------
Pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)`` and belongs to a shape when its centre
``(x + 0.5, y + 0.5)`` lies inside. An object has centre ``(cx, cy)`` and half-extent ``r``:
circle of radius r; axis-aligned square of half-side r; diamond ``|dx| + |dy| <= r``; triangle
pointing up with apex ``(cx, cy - r)`` and base from ``(cx - r, cy + r)`` to ``(cx + r, cy + r)``
(its widest row is the bottom one). Every shape's extent is the box ``[cx - r, cx + r]^2``.

Layout invariants of every scene drawn here (edit targets included):
- centres lie on pixel centres (k + 0.5), so every shape rasterises symmetrically (a diamond or
  triangle has a one-pixel apex) and the shapes stay tellable apart even at 32 px;
- extents lie in ``[2, side - 2]`` (the two border rows/columns of pixels stay background);
- extents of two objects are at least 3 px apart along x or y, so at least 2 background pixels
  separate their masks (the contract's 2 px margin);
- centres keep 1 px away from the 3x3 grid lines, so the named position can be read back from
  the pixels without ambiguity;
- at most one object per (colour, shape) pair; small half-extents are 10-14 % of the side,
  large ones 16-22 %.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np

from qk_runtime.noise import portable_normal

# --------------------------------------------------------------------------- constants

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "charcoal": (48, 48, 48),
    "slate": (112, 112, 120),
    "navy": (28, 36, 72),
    "brown": (84, 60, 40),
}
# Used only when named in `backgrounds=` (an out-of-distribution probe); never a default.
EXTRA_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "olive": (86, 88, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.10, 0.14), "large": (0.16, 0.22)}
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
EDIT_KINDS: tuple[str, ...] = ("colour", "remove", "insert", "move", "resize")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_ID: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

TEXTURE_SIGMA = 6.0  # on the 0-255 scale (6/255 on 0-1)
BORDER = 2.0  # px between an object's extent and the image border
GAP = 3.0  # px between the extents of two objects (>= 2 background pixels between masks)
GRID_CLEARANCE = 1.0  # px between an object's centre and a grid line
MIN_SIDE = 32
MAX_OBJECTS = 4
RESIZE_FACTOR = 1.3  # resize changes the half-extent by at least this factor
MOVE_MIN_FRACTION = 0.15  # a directional move shifts by at least this fraction of the side

DOMAIN = 0x5157
STREAM_SCENE = 0
STREAM_EDIT_KIND = 1
STREAM_EDIT = 2
_MAX_ATTEMPTS = 200  # scene redraws before giving up on an edit (only reached by extreme exclusions)
_PLACE_TRIES = 24

TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "make the {c} {s} {c2}",
        "change the colour of the {c} {s} to {c2}",
        "paint the {c} {s} {c2}",
    ),
    "remove": ("remove the {c} {s}", "delete the {c} {s}", "erase the {c} {s}"),
    "insert": ("add a {size} {c} {s} at the {position}", "put a {c} {s} at the {position}"),
    "move_to": ("move the {c} {s} to the {position}",),
    "move_dir": ("move the {c} {s} {direction}",),
    "bigger": ("make the {c} {s} bigger",),
    "smaller": ("make the {c} {s} smaller",),
}


# --------------------------------------------------------------------------- scene types


@dataclass(frozen=True)
class Obj:
    shape: str  # one of SHAPES
    colour: str  # one of PALETTE
    size: str  # "small" | "large"
    cx: float  # centre x, pixels
    cy: float  # centre y, pixels
    r: float  # half-extent, pixels

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, tuple(PALETTE))
        _check_choice("size", self.size, SIZES)
        if not self.r > 0:
            raise ValueError(f"Obj.r must be > 0 pixels, got {self.r!r}")


@dataclass(frozen=True)
class Scene:
    side: int  # image is (side, side, 3)
    background: str  # a key of BACKGROUNDS or EXTRA_BACKGROUNDS
    objects: tuple[Obj, ...]
    texture_seed: int  # seeds the background texture; shared by an edit's source and target

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS and self.background not in EXTRA_BACKGROUNDS:
            allowed = tuple(BACKGROUNDS) + tuple(EXTRA_BACKGROUNDS)
            raise ValueError(f"unknown background {self.background!r}; allowed: {allowed}")
        if not isinstance(self.objects, tuple):
            raise ValueError(f"Scene.objects must be a tuple of Obj, got {type(self.objects).__name__}")


def background_rgb(name: str) -> tuple[int, int, int]:
    """Base colour of a background named in BACKGROUNDS or EXTRA_BACKGROUNDS."""
    if name in BACKGROUNDS:
        return BACKGROUNDS[name]
    if name in EXTRA_BACKGROUNDS:
        return EXTRA_BACKGROUNDS[name]
    raise ValueError(f"unknown background {name!r}; allowed: {tuple(BACKGROUNDS) + tuple(EXTRA_BACKGROUNDS)}")


# --------------------------------------------------------------------------- drawing


def object_mask(obj: Obj, side: int) -> np.ndarray:
    """(side, side) bool: exactly the pixels `render` paints for `obj`."""
    c = np.arange(side, dtype=np.float64) + 0.5  # pixel centres
    dx = c[None, :] - obj.cx  # (1, side)
    dy = c[:, None] - obj.cy  # (side, 1)
    r = obj.r
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r  # (side, side)
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if obj.shape == "triangle":
        # apex (cx, cy - r), base y = cy + r, half-width grows from 0 to r down the shape
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    raise ValueError(f"unknown shape {obj.shape!r}; allowed: {SHAPES}")


def texture(texture_seed: int, side: int) -> np.ndarray:
    """(side, side, 3) float32 background texture on the 0-255 scale (see the module doc)."""
    return portable_normal(texture_seed, (side, side, 3)) * np.float32(TEXTURE_SIGMA)


def render(scene: Scene) -> np.ndarray:
    """(side, side, 3) uint8: background base + Gaussian texture (sigma 6/255), then flat objects."""
    side = scene.side
    base = np.asarray(background_rgb(scene.background), dtype=np.float64)  # (3,)
    noise = texture(scene.texture_seed, side).astype(np.float64)  # (side, side, 3)
    img = np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)  # (side, side, 3)
    for obj in scene.objects:
        img[object_mask(obj, side)] = PALETTE[obj.colour]
    return img


def _colour_labels(scene: Scene) -> np.ndarray:
    """(side, side) int8: index in PALETTE of the colour `render` paints last at each pixel, -1 for
    background."""
    labels = np.full((scene.side, scene.side), -1, dtype=np.int8)
    colours = tuple(PALETTE)
    for obj in scene.objects:
        labels[object_mask(obj, scene.side)] = colours.index(obj.colour)
    return labels


def change_mask(source: Scene, target: Scene) -> np.ndarray:
    """(side, side) bool: the pixels where `render(source)` and `render(target)` differ, for two
    scenes of the same side, background and texture, computed from the objects alone (the module
    doc says why no texture value can hide a change)."""
    if (source.side, source.background, source.texture_seed) != (target.side, target.background, target.texture_seed):
        raise ValueError("change_mask compares two scenes of the same side, background and texture_seed; got "
                         f"{(source.side, source.background, source.texture_seed)} and "
                         f"{(target.side, target.background, target.texture_seed)}")
    return _colour_labels(source) != _colour_labels(target)


def position_name(cx: float, cy: float, side: int) -> str:
    """Name of the 3x3 grid cell holding the point (cx, cy) of a (side x side) image."""
    col = min(max(int(cx * 3 // side), 0), 2)
    row = min(max(int(cy * 3 // side), 0), 2)
    return POSITIONS[row * 3 + col]


def caption(scene: Scene) -> str:
    """"a large red circle at the top left and a small blue square at the bottom right"."""
    if not scene.objects:
        return "an empty background"
    return " and ".join(
        f"a {o.size} {o.colour} {o.shape} at the {position_name(o.cx, o.cy, scene.side)}"
        for o in scene.objects
    )


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty (H, W) bool mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("mask_box needs a mask with at least one True pixel; got an empty mask")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


# --------------------------------------------------------------------------- argument checks


def _check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}")


def _check_common(split: str, index: int, side: int) -> tuple[int, int]:
    _check_choice("split", split, SPLITS)
    try:
        index = operator.index(index)
        side = operator.index(side)
    except TypeError as e:
        raise ValueError(f"index and side must be integers, got index={index!r}, side={side!r}") from e
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if side < MIN_SIDE:
        raise ValueError(f"side must be an integer >= {MIN_SIDE} pixels, got {side}; use e.g. 32, 48, 64")
    return index, side


def _allowed_pairs(exclude_pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    excluded = set()
    for pair in exclude_pairs:
        if (
            not isinstance(pair, tuple) or len(pair) != 2
            or pair[0] not in PALETTE or pair[1] not in SHAPES
        ):
            raise ValueError(
                f"exclude_pairs entries must be (colour, shape) tuples with colour in {tuple(PALETTE)} "
                f"and shape in {SHAPES}; got {pair!r}"
            )
        excluded.add(pair)
    pairs = tuple((c, s) for c in PALETTE for s in SHAPES if (c, s) not in excluded)
    if not pairs:
        raise ValueError("exclude_pairs excludes every (colour, shape) pair; leave at least one out")
    return pairs


def _backgrounds(backgrounds: Iterable[str] | None) -> tuple[str, ...]:
    if backgrounds is None:
        return tuple(BACKGROUNDS)
    if isinstance(backgrounds, str):
        raise ValueError(f"backgrounds must be a tuple of names, got the string {backgrounds!r}; "
                         f"write ({backgrounds!r},)")
    names = tuple(backgrounds)
    allowed = tuple(BACKGROUNDS) + tuple(EXTRA_BACKGROUNDS)
    if not names:
        raise ValueError(f"backgrounds is empty; name at least one of {allowed} or pass None")
    for name in names:
        _check_choice("background", name, allowed)
    return names


def _rng(split: str, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([DOMAIN, SPLIT_ID[split], index, *stream]))


# --------------------------------------------------------------------------- placement


def _centre_clear_of_grid(c: float, side: int) -> bool:
    return abs(c - side / 3) >= GRID_CLEARANCE and abs(c - 2 * side / 3) >= GRID_CLEARANCE


def _fits(obj: Obj, others: Iterable[Obj], side: int) -> bool:
    """Inside the border, clear of the grid lines, and GAP px from every other object."""
    if obj.cx - obj.r < BORDER or obj.cx + obj.r > side - BORDER:
        return False
    if obj.cy - obj.r < BORDER or obj.cy + obj.r > side - BORDER:
        return False
    if not (_centre_clear_of_grid(obj.cx, side) and _centre_clear_of_grid(obj.cy, side)):
        return False
    for o in others:
        apart_x = abs(obj.cx - o.cx) >= obj.r + o.r + GAP
        apart_y = abs(obj.cy - o.cy) >= obj.r + o.r + GAP
        if not (apart_x or apart_y):
            return False
    return True


def _cell_range(k: int, r: float, side: int) -> tuple[float, float]:
    """Centre coordinates allowed along one axis for grid index k (0, 1, 2)."""
    lo = max(k * side / 3 + GRID_CLEARANCE, r + BORDER)
    hi = min((k + 1) * side / 3 - GRID_CLEARANCE, side - r - BORDER)
    return lo, hi


def _place(
    rng: np.random.Generator, side: int, shape: str, colour: str, size: str, r: float,
    others: tuple[Obj, ...], cell: int | None = None,
) -> Obj | None:
    """Draw a centre (anywhere, or inside grid cell `cell`) where the object fits; None if none found."""
    if cell is None:
        xlo, xhi = r + BORDER, side - r - BORDER
        ylo, yhi = xlo, xhi
    else:
        xlo, xhi = _cell_range(cell % 3, r, side)
        ylo, yhi = _cell_range(cell // 3, r, side)
    xs, ys = _pixel_centres(xlo, xhi), _pixel_centres(ylo, yhi)
    if len(xs) == 0 or len(ys) == 0:
        return None
    for _ in range(_PLACE_TRIES):
        cx, cy = float(_pick(rng, xs)), float(_pick(rng, ys))
        obj = Obj(shape, colour, size, cx, cy, r)
        if _fits(obj, others, side):
            return obj
    return None


def _pixel_centres(lo: float, hi: float) -> np.ndarray:
    """The pixel-centre coordinates k + 0.5 that lie in [lo, hi]."""
    first, last = int(np.ceil(lo - 0.5)), int(np.floor(hi - 0.5))
    return np.arange(first, last + 1, dtype=np.float64) + 0.5


def _draw_radius(rng: np.random.Generator, size: str, side: int) -> float:
    lo, hi = SIZE_RANGES[size]
    return float(rng.uniform(lo, hi)) * side


def _draw_scene(
    rng: np.random.Generator, side: int, pairs: tuple[tuple[str, str], ...],
    backgrounds: tuple[str, ...], max_objects: int,
) -> Scene:
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    n = int(rng.integers(1, max_objects + 1))
    objects: list[Obj] = []
    for _ in range(n):
        used = {(o.colour, o.shape) for o in objects}
        free = [p for p in pairs if p not in used]
        if not free:
            break
        colour, shape = free[int(rng.integers(len(free)))]
        size = SIZES[int(rng.integers(2))]
        r = _draw_radius(rng, size, side)
        obj = _place(rng, side, shape, colour, size, r, tuple(objects))
        if obj is None and not objects:  # an empty image always has room in the middle
            middle = side // 2 + 0.5
            obj = Obj(shape, colour, size, middle, middle, r)
        if obj is not None:
            objects.append(obj)
    texture_seed = int(rng.integers(2**32))
    return Scene(side, background, tuple(objects), texture_seed)


# --------------------------------------------------------------------------- public scene API


def make_scene(
    split: str, index: int, side: int = 64, *,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    backgrounds: tuple[str, ...] | None = None,
) -> Scene:
    """Scene number `index` of `split`: 1-4 objects, a pure function of the arguments."""
    index, side = _check_common(split, index, side)
    pairs = _allowed_pairs(exclude_pairs)
    bgs = _backgrounds(backgrounds)
    return _draw_scene(_rng(split, index, STREAM_SCENE), side, pairs, bgs, MAX_OBJECTS)


@dataclass(frozen=True)
class GenerationLayout:
    scene: Scene
    caption: str


def generation_layout(
    split: str, index: int, side: int = 64, *,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    backgrounds: tuple[str, ...] | None = None,
) -> GenerationLayout:
    """What `make_generation` draws, without pixels: `make_scene`'s scene and its caption."""
    scene = make_scene(split, index, side, exclude_pairs=exclude_pairs, backgrounds=backgrounds)
    return GenerationLayout(scene, caption(scene))


def make_generation(
    split: str, index: int, side: int = 64, *,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    backgrounds: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, str, Scene]:
    """(image (side, side, 3) uint8, caption, scene) for text-to-image; the scene is `make_scene`'s."""
    layout = generation_layout(split, index, side, exclude_pairs=exclude_pairs, backgrounds=backgrounds)
    return render(layout.scene), layout.caption, layout.scene


# --------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class EditLayout:
    """What `make_edit` draws, without pixels; `render_edit` turns it into the `EditSample`."""

    source_scene: Scene
    target_scene: Scene  # same side, background and texture_seed as the source
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive); for insert the new object's box
    instruction: str
    kind: str  # one of EDIT_KINDS
    target_obj: Obj | None  # object that must show the requested colour; None for remove
    old_obj: Obj | None  # the object as it was in the source; None for insert


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to a single bool
class EditSample:
    source: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool: every pixel where source != target
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive); for insert the new object's box
    instruction: str
    kind: str  # one of EDIT_KINDS
    source_scene: Scene
    target_scene: Scene
    target_obj: Obj | None  # object that must show the requested colour; None for remove
    old_obj: Obj | None  # the object as it was in the source; None for insert


# An editor takes (rng, source scene, allowed pairs, variant) and returns
# (target objects, instruction, target_obj, old_obj), or None when this scene cannot host the edit.
# `variant` (0 or 1) is drawn once per edit, before any scene, so that the sub-kinds stay balanced
# however often one of them needs a redraw: move 0 = "to the {position}", 1 = a direction;
# resize 0 = bigger, 1 = smaller; unused by the other kinds.
_EditResult = tuple[tuple[Obj, ...], str, "Obj | None", "Obj | None"]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _edit_colour(rng, scene: Scene, pairs, variant: int) -> _EditResult | None:
    objs = scene.objects
    i = int(rng.integers(len(objs)))
    old = objs[i]
    used = {(o.colour, o.shape) for o in objs}
    allowed = set(pairs)
    options = [c for c in PALETTE if (c, old.shape) in allowed and (c, old.shape) not in used]
    if not options:
        return None
    new = replace(old, colour=_pick(rng, options))
    text = _pick(rng, TEMPLATES["colour"]).format(c=old.colour, s=old.shape, c2=new.colour)
    return objs[:i] + (new,) + objs[i + 1:], text, new, old


def _edit_remove(rng, scene: Scene, pairs, variant: int) -> _EditResult | None:
    objs = scene.objects
    i = int(rng.integers(len(objs)))
    old = objs[i]
    text = _pick(rng, TEMPLATES["remove"]).format(c=old.colour, s=old.shape)
    return objs[:i] + objs[i + 1:], text, None, old


def _edit_insert(rng, scene: Scene, pairs, variant: int) -> _EditResult | None:
    objs = scene.objects
    if len(objs) >= MAX_OBJECTS:
        return None
    used = {(o.colour, o.shape) for o in objs}
    free = [p for p in pairs if p not in used]
    if not free:
        return None
    colour, shape = _pick(rng, free)
    size = SIZES[int(rng.integers(2))]
    r = _draw_radius(rng, size, scene.side)
    for cell in rng.permutation(len(POSITIONS)):
        new = _place(rng, scene.side, shape, colour, size, r, objs, cell=int(cell))
        if new is not None:
            text = _pick(rng, TEMPLATES["insert"]).format(
                size=size, c=colour, s=shape, position=POSITIONS[int(cell)])
            return objs + (new,), text, new, None
    return None


def _edit_move(rng, scene: Scene, pairs, variant: int) -> _EditResult | None:
    objs, side = scene.objects, scene.side
    i = int(rng.integers(len(objs)))
    old = objs[i]
    others = objs[:i] + objs[i + 1:]
    new: Obj | None = None
    if variant == 0:  # "to the {position}": any other grid cell
        here = POSITIONS.index(position_name(old.cx, old.cy, side))
        for cell in rng.permutation(len(POSITIONS)):
            if cell == here:
                continue
            new = _place(rng, side, old.shape, old.colour, old.size, old.r, others, cell=int(cell))
            if new is not None:
                text = _pick(rng, TEMPLATES["move_to"]).format(
                    c=old.colour, s=old.shape, position=POSITIONS[int(cell)])
                break
    else:  # "left/right/up/down": shift along one axis by a visible amount
        min_shift = max(MOVE_MIN_FRACTION * side, 4.0)
        for d in rng.permutation(len(DIRECTIONS)):
            direction = DIRECTIONS[int(d)]
            centre = old.cx if direction in ("left", "right") else old.cy
            room = centre - old.r - BORDER if direction in ("left", "up") else side - BORDER - old.r - centre
            if np.floor(room) < np.ceil(min_shift):
                continue
            for _ in range(_PLACE_TRIES // 4):
                shift = float(rng.integers(int(np.ceil(min_shift)), int(np.floor(room)) + 1))
                sign = -1.0 if direction in ("left", "up") else 1.0
                if direction in ("left", "right"):
                    cand = replace(old, cx=old.cx + sign * shift)
                else:
                    cand = replace(old, cy=old.cy + sign * shift)
                if _fits(cand, others, side):
                    new = cand
                    break
            if new is not None:
                text = _pick(rng, TEMPLATES["move_dir"]).format(
                    c=old.colour, s=old.shape, direction=direction)
                break
    if new is None:
        return None
    return objs[:i] + (new,) + objs[i + 1:], text, new, old


def _edit_resize(rng, scene: Scene, pairs, variant: int) -> _EditResult | None:
    objs, side = scene.objects, scene.side
    bigger = variant == 0
    candidates = [j for j, o in enumerate(objs) if (o.size == "small") == bigger]
    if not candidates:
        return None
    i = _pick(rng, candidates)
    old = objs[i]
    others = objs[:i] + objs[i + 1:]
    if bigger:  # bigger: a large half-extent at least RESIZE_FACTOR times the old one
        size, words = "large", "bigger"
        lo = max(SIZE_RANGES["large"][0] * side, old.r * RESIZE_FACTOR)
        hi = SIZE_RANGES["large"][1] * side
    else:  # smaller: a small half-extent at most 1/RESIZE_FACTOR of the old one
        size, words = "small", "smaller"
        lo = SIZE_RANGES["small"][0] * side
        hi = min(SIZE_RANGES["small"][1] * side, old.r / RESIZE_FACTOR)
    if hi < lo:
        return None
    for _ in range(_PLACE_TRIES // 4):  # same centre; redraw the scene if it does not fit
        new = replace(old, size=size, r=float(rng.uniform(lo, hi)))
        if _fits(new, others, side):
            text = _pick(rng, TEMPLATES[words]).format(c=old.colour, s=old.shape)
            return objs[:i] + (new,) + objs[i + 1:], text, new, old
    return None


_EDITORS: dict[str, Callable[..., _EditResult | None]] = {
    "colour": _edit_colour,
    "remove": _edit_remove,
    "insert": _edit_insert,
    "move": _edit_move,
    "resize": _edit_resize,
}


def make_edit(
    split: str, index: int, side: int = 64, kind: str | None = None, *,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    backgrounds: tuple[str, ...] | None = None,
) -> EditSample:
    """Edit number `index` of `split`; `kind=None` picks one of EDIT_KINDS uniformly from the seed."""
    return render_edit(edit_layout(split, index, side, kind, exclude_pairs=exclude_pairs, backgrounds=backgrounds))


def render_edit(layout: EditLayout) -> EditSample:
    """The pixels of an edit layout: source, target and their change mask (every pixel that differs)."""
    source, target = render(layout.source_scene), render(layout.target_scene)
    mask = (source != target).any(axis=-1)  # (side, side)
    return EditSample(source, target, mask, layout.box, layout.instruction, layout.kind, layout.source_scene,
                      layout.target_scene, layout.target_obj, layout.old_obj)


def edit_layout(
    split: str, index: int, side: int = 64, kind: str | None = None, *,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    backgrounds: tuple[str, ...] | None = None,
) -> EditLayout:
    """What `make_edit` draws for these arguments (scenes, instruction, box), without pixels."""
    index, side = _check_common(split, index, side)
    if kind is None:
        kind = EDIT_KINDS[int(_rng(split, index, STREAM_EDIT_KIND).integers(len(EDIT_KINDS)))]
    _check_choice("edit kind", kind, EDIT_KINDS)
    pairs = _allowed_pairs(exclude_pairs)
    bgs = _backgrounds(backgrounds)
    rng = _rng(split, index, STREAM_EDIT, EDIT_KINDS.index(kind))
    variant = int(rng.integers(2))
    editor = _EDITORS[kind]
    most = MAX_OBJECTS - 1 if kind == "insert" else MAX_OBJECTS
    for attempt in range(_MAX_ATTEMPTS):
        # after half the attempts, draw sparse scenes (one object) that host any edit easily
        scene = _draw_scene(rng, side, pairs, bgs, most if attempt < _MAX_ATTEMPTS // 2 else 1)
        result = editor(rng, scene, pairs, variant)
        if result is None:
            continue
        objects, instruction, target_obj, old_obj = result
        target_scene = replace(scene, objects=objects)
        mask = change_mask(scene, target_scene)  # (side, side): the pixels render_edit finds changed
        if not mask.any():
            continue
        box = mask_box(object_mask(target_obj, side)) if kind == "insert" else mask_box(mask)
        return EditLayout(scene, target_scene, box, instruction, kind, target_obj, old_obj)
    raise ValueError(
        f"could not draw a {kind!r} edit for split={split!r} index={index} side={side} in "
        f"{_MAX_ATTEMPTS} attempts: exclude_pairs leaves too few (colour, shape) pairs "
        f"({len(pairs)} allowed); exclude fewer pairs"
    )
