"""ShapeWorld generator: determinism, splits, layout invariants and every edit kind."""
import re
from dataclasses import replace

import numpy as np
import pytest

from qk_train.data.shapeworld import (
    BACKGROUNDS,
    EDIT_KINDS,
    EXTRA_BACKGROUNDS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZE_RANGES,
    SPLITS,
    TEXTURE_SIGMA,
    Obj,
    Scene,
    caption,
    change_mask,
    edit_layout,
    generation_layout,
    make_edit,
    make_generation,
    make_scene,
    mask_box,
    object_mask,
    position_name,
    render,
    render_edit,
    texture,
)
from qk_runtime.noise import portable_normal

SIDES = (32, 48, 64, 80)
COLOURS = "|".join(PALETTE)
SHAPE_RE = "|".join(SHAPES)
POS_RE = "|".join(POSITIONS)


def _rgb_distance(pixels, rgb):
    return np.sqrt(((pixels.astype(np.float64) - np.asarray(rgb, dtype=np.float64)) ** 2).sum(-1))


def _assert_layout(scene: Scene):
    """The contract's scene rules, checked on the rendered pixels."""
    side = scene.side
    assert 0 <= len(scene.objects) <= 4
    pairs = [(o.colour, o.shape) for o in scene.objects]
    assert len(set(pairs)) == len(pairs), f"duplicate (colour, shape) in {pairs}"
    masks = [object_mask(o, side) for o in scene.objects]
    for o, m in zip(scene.objects, masks):
        lo, hi = SIZE_RANGES[o.size]
        assert lo * side - 1e-9 <= o.r <= hi * side + 1e-9, o
        assert m.any()
        # 2 px margin to the border: the two outer rows/columns stay background
        assert not (m[:2].any() or m[-2:].any() or m[:, :2].any() or m[:, -2:].any()), o
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            yi, xi = np.nonzero(masks[i])
            yj, xj = np.nonzero(masks[j])
            cheb = np.maximum(np.abs(yi[:, None] - yj[None]), np.abs(xi[:, None] - xj[None]))
            assert cheb.min() >= 3, f"objects {i} and {j} closer than a 2 px margin"
    img = render(scene)
    for o, m in zip(scene.objects, masks):
        assert (img[m] == PALETTE[o.colour]).all()


# --------------------------------------------------------------------------- scenes


def test_scene_is_deterministic_and_edit_arrays_identical():
    assert make_scene("train", 7) == make_scene("train", 7)
    a, b = make_edit("val", 3, 48), make_edit("val", 3, 48)
    for name in ("source", "target", "mask"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert (a.instruction, a.box, a.kind, a.source_scene) == (b.instruction, b.box, b.kind, b.source_scene)
    g1, g2 = make_generation("test", 5), make_generation("test", 5)
    assert np.array_equal(g1[0], g2[0]) and g1[1:] == g2[1:]


def test_splits_draw_different_scenes_for_the_same_index():
    for i in range(30):
        scenes = [make_scene(split, i) for split in SPLITS]
        assert scenes[0] != scenes[1] and scenes[0] != scenes[2] and scenes[1] != scenes[2]
        assert not np.array_equal(render(scenes[0]), render(scenes[2]))
        assert make_edit("train", i).source_scene != make_edit("test", i).source_scene


def test_golden_values_pin_the_generator():
    # A change here means every published ShapeWorld number changes: bump the version instead.
    assert caption(make_scene("test", 0)) == GOLDEN_TEST0_CAPTION
    assert [make_edit("train", 0, 64, k).instruction for k in EDIT_KINDS] == GOLDEN_TRAIN0_EDITS


GOLDEN_TEST0_CAPTION = "a large blue circle at the center and a small magenta diamond at the top"
GOLDEN_TRAIN0_EDITS = [
    "make the magenta square orange",
    "delete the cyan circle",
    "add a small blue circle at the left",
    "move the cyan diamond down",
    "make the white circle bigger",
]


@pytest.mark.parametrize("side", SIDES)
def test_scene_layout_rules_hold(side):
    counts = set()
    for i in range(40):
        scene = make_scene("train", i, side)
        assert scene.side == side and 1 <= len(scene.objects) <= 4
        assert scene.background in BACKGROUNDS
        _assert_layout(scene)
        counts.add(len(scene.objects))
    assert counts >= {1, 2, 3}


def test_render_has_textured_background_and_flat_objects():
    scene = make_scene("train", 3)
    img = render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    covered = np.zeros((64, 64), bool)
    for o in scene.objects:
        covered |= object_mask(o, 64)
    bg = img[~covered].astype(np.float64) - BACKGROUNDS[scene.background]
    assert abs(bg.mean()) < 1.0 and 5.0 < bg.std() < 7.0  # sigma 6/255 texture
    other = Scene(64, scene.background, scene.objects, scene.texture_seed + 1)
    assert not np.array_equal(render(other)[~covered], img[~covered])


def test_shapes_rasterise_as_described():
    side = 64
    tri = object_mask(Obj("triangle", "red", "large", 32.5, 32.5, 12.0), side)
    rows = tri.sum(axis=1)[tri.any(axis=1)]
    assert rows[0] == 1 and rows.argmax() == len(rows) - 1  # apex up, widest row at the bottom
    dia = object_mask(Obj("diamond", "red", "large", 32.5, 32.5, 12.0), side)
    rows = dia.sum(axis=1)[dia.any(axis=1)]
    assert rows[0] == 1 and rows[-1] == 1 and rows.argmax() == len(rows) // 2
    sq = object_mask(Obj("square", "red", "large", 32.5, 32.5, 12.0), side)
    assert sq.sum() == 25 * 25 and mask_box(sq) == (20, 20, 45, 45)
    circ = object_mask(Obj("circle", "red", "large", 32.5, 32.5, 12.0), side)
    assert abs(circ.sum() - np.pi * 144) < 15


def test_position_names_and_caption_format():
    assert position_name(1, 1, 64) == "top left"
    assert position_name(32, 1, 64) == "top"
    assert position_name(63, 32, 64) == "right"
    assert position_name(32, 32, 64) == "center"
    assert position_name(63, 63, 64) == "bottom right"
    scene = Scene(64, "charcoal", (
        Obj("circle", "red", "large", 12.5, 12.5, 11.0),
        Obj("square", "blue", "small", 52.5, 52.5, 7.0),
    ), 0)
    assert caption(scene) == "a large red circle at the top left and a small blue square at the bottom right"
    pattern = re.compile(rf"a (small|large) ({COLOURS}) ({SHAPE_RE}) at the ({POS_RE})")
    for i in range(20):
        image, text, scene = make_generation("val", i, 48)
        parts = text.split(" and ")
        assert len(parts) == len(scene.objects)
        for part, o in zip(parts, scene.objects):
            m = pattern.fullmatch(part)
            assert m and m.groups() == (o.size, o.colour, o.shape, position_name(o.cx, o.cy, 48))
        assert np.array_equal(image, render(scene))


def test_exclude_pairs_and_backgrounds():
    held_out = frozenset({("red", "circle"), ("blue", "square"), ("green", "triangle")})
    for i in range(40):
        scene = make_scene("train", i, exclude_pairs=held_out)
        assert not {(o.colour, o.shape) for o in scene.objects} & held_out
        for kind in EDIT_KINDS:
            s = make_edit("train", i, 48, kind, exclude_pairs=held_out)
            for sc in (s.source_scene, s.target_scene):
                assert not {(o.colour, o.shape) for o in sc.objects} & held_out
    assert {make_scene("train", i).background for i in range(60)} == set(BACKGROUNDS)
    extra = next(iter(EXTRA_BACKGROUNDS))
    assert extra not in BACKGROUNDS
    for i in range(10):
        assert make_scene("val", i, backgrounds=(extra,)).background == extra
        assert make_edit("val", i, backgrounds=(extra, "navy")).source_scene.background in (extra, "navy")


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: make_scene("training", 0), "'training'"),
        (lambda: make_scene("train", -1), "-1"),
        (lambda: make_scene("train", 0, 31), "31"),
        (lambda: make_edit("train", 0, 64, "recolour"), "'recolour'"),
        (lambda: make_generation("train", 0, exclude_pairs=frozenset({("pink", "circle")})), "pink"),
        (lambda: make_scene("train", 0, backgrounds=("olive-green",)), "olive-green"),
        (lambda: make_scene("train", 0, backgrounds="navy"), "navy"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()


def test_kind_none_picks_every_kind_from_the_seed():
    kinds = [make_edit("train", i).kind for i in range(60)]
    assert set(kinds) == set(EDIT_KINDS)
    for i in range(5):
        auto = make_edit("test", i)
        same = make_edit("test", i, kind=auto.kind)
        assert auto.instruction == same.instruction and np.array_equal(auto.target, same.target)


# --------------------------------------------------------------------------- edits


def _check_common(s, side):
    assert s.source.shape == s.target.shape == (side, side, 3)
    assert np.array_equal(s.source, render(s.source_scene))
    assert np.array_equal(s.target, render(s.target_scene))
    assert s.source_scene.texture_seed == s.target_scene.texture_seed
    assert s.source_scene.background == s.target_scene.background
    assert s.mask.dtype == bool and np.array_equal(s.mask, (s.source != s.target).any(-1))
    assert s.mask.any()
    _assert_layout(s.source_scene)
    _assert_layout(s.target_scene)
    assert 1 <= len(s.source_scene.objects)
    if s.kind == "insert":
        assert s.box == mask_box(object_mask(s.target_obj, side))
    else:
        assert s.box == mask_box(s.mask)
    x0, y0, x1, y1 = s.box
    assert s.mask[y0:y1, x0:x1].sum() == s.mask.sum()  # the box holds every changed pixel
    if s.target_obj is not None:
        m = object_mask(s.target_obj, side)
        assert (s.target[m] == PALETTE[s.target_obj.colour]).all()
        assert s.target_obj in s.target_scene.objects
    if s.old_obj is not None:
        assert s.old_obj in s.source_scene.objects


def _looks_like_background(image, mask, background):
    return (_rgb_distance(image[mask], BACKGROUNDS[background]) <= 40).all()


@pytest.mark.parametrize("side", [32, 64])
def test_colour_edits(side):
    for i in range(25):
        s = make_edit("train", i, side, "colour")
        _check_common(s, side)
        old, new = s.old_obj, s.target_obj
        m = re.fullmatch(
            rf"(?:make the ({COLOURS}) ({SHAPE_RE}) ({COLOURS})|change the colour of the ({COLOURS}) "
            rf"({SHAPE_RE}) to ({COLOURS})|paint the ({COLOURS}) ({SHAPE_RE}) ({COLOURS}))",
            s.instruction,
        )
        assert m, s.instruction
        words = [g for g in m.groups() if g]
        assert words == [old.colour, old.shape, new.colour]
        assert new.colour != old.colour and (new.shape, new.cx, new.cy, new.r) == (old.shape, old.cx, old.cy, old.r)
        assert np.array_equal(s.mask, object_mask(old, side))
        assert len(s.target_scene.objects) == len(s.source_scene.objects)


@pytest.mark.parametrize("side", [32, 64])
def test_remove_edits(side):
    for i in range(25):
        s = make_edit("val", i, side, "remove")
        _check_common(s, side)
        assert s.target_obj is None
        m = re.fullmatch(rf"(remove|delete|erase) the ({COLOURS}) ({SHAPE_RE})", s.instruction)
        assert m and m.groups()[1:] == (s.old_obj.colour, s.old_obj.shape)
        assert s.old_obj not in s.target_scene.objects
        assert len(s.target_scene.objects) == len(s.source_scene.objects) - 1
        assert np.array_equal(s.mask, object_mask(s.old_obj, side))
        assert _looks_like_background(s.target, s.mask, s.source_scene.background)


@pytest.mark.parametrize("side", [32, 64])
def test_insert_edits(side):
    for i in range(25):
        s = make_edit("test", i, side, "insert")
        _check_common(s, side)
        new = s.target_obj
        assert s.old_obj is None
        m = re.fullmatch(
            rf"(?:add a (small|large) ({COLOURS}) ({SHAPE_RE})|put a ({COLOURS}) ({SHAPE_RE})) at the ({POS_RE})",
            s.instruction,
        )
        assert m, s.instruction
        size, c1, s1, c2, s2, position = m.groups()
        assert (c1 or c2, s1 or s2) == (new.colour, new.shape)
        assert size in (None, new.size)
        assert position == position_name(new.cx, new.cy, side)
        assert (new.colour, new.shape) not in {(o.colour, o.shape) for o in s.source_scene.objects}
        assert len(s.target_scene.objects) == len(s.source_scene.objects) + 1
        assert np.array_equal(s.mask, object_mask(new, side))


@pytest.mark.parametrize("side", [32, 64])
def test_move_edits(side):
    forms = set()
    for i in range(30):
        s = make_edit("train", i, side, "move")
        _check_common(s, side)
        old, new = s.old_obj, s.target_obj
        assert (new.colour, new.shape, new.size, new.r) == (old.colour, old.shape, old.size, old.r)
        to = re.fullmatch(rf"move the ({COLOURS}) ({SHAPE_RE}) to the ({POS_RE})", s.instruction)
        way = re.fullmatch(rf"move the ({COLOURS}) ({SHAPE_RE}) (left|right|up|down)", s.instruction)
        assert to or way, s.instruction
        if to:
            forms.add("to")
            assert to.groups()[:2] == (old.colour, old.shape)
            assert position_name(new.cx, new.cy, side) == to.group(3)
            assert position_name(old.cx, old.cy, side) != to.group(3)
        else:
            forms.add("direction")
            assert way.groups()[:2] == (old.colour, old.shape)
            dx, dy = new.cx - old.cx, new.cy - old.cy
            expected = {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0}[way.group(3)]
            assert expected and (dx == 0 or dy == 0)
            assert max(abs(dx), abs(dy)) >= 0.15 * side  # a visible amount
        vacated = object_mask(old, side) & ~object_mask(new, side)
        assert vacated.any()
        assert _looks_like_background(s.target, vacated, s.source_scene.background)
    assert forms == {"to", "direction"}


@pytest.mark.parametrize("side", [32, 64])
def test_resize_edits(side):
    words = set()
    for i in range(30):
        s = make_edit("val", i, side, "resize")
        _check_common(s, side)
        old, new = s.old_obj, s.target_obj
        m = re.fullmatch(rf"make the ({COLOURS}) ({SHAPE_RE}) (bigger|smaller)", s.instruction)
        assert m and m.groups()[:2] == (old.colour, old.shape)
        words.add(m.group(3))
        assert (new.cx, new.cy, new.colour, new.shape) == (old.cx, old.cy, old.colour, old.shape)
        if m.group(3) == "bigger":
            assert (old.size, new.size) == ("small", "large") and new.r >= 1.3 * old.r - 1e-9
        else:
            assert (old.size, new.size) == ("large", "small") and new.r <= old.r / 1.3 + 1e-9
            ring = object_mask(old, side) & ~object_mask(new, side)
            assert _looks_like_background(s.target, ring, s.source_scene.background)
    assert words == {"bigger", "smaller"}


def test_hand_checked_sample():
    # Read off the rendered pair by eye: a lone small magenta square in the top right, centre
    # (51.5, 11.5), half-extent 6.86, turns blue. Pixel centres 44.64..58.36 -> columns 45..57.
    s = make_edit("train", 2, 64, "colour")
    assert s.instruction == "change the colour of the magenta square to blue"
    assert s.source_scene.objects == (s.old_obj,)
    assert (s.old_obj.cx, s.old_obj.cy) == (51.5, 11.5)
    assert position_name(s.old_obj.cx, s.old_obj.cy, 64) == "top right"
    assert s.box == (45, 5, 58, 18)
    assert s.mask.sum() == 13 * 13
    assert tuple(s.source[11, 51]) == PALETTE["magenta"] and tuple(s.target[11, 51]) == PALETTE["blue"]


# --------------------------------------------------------------------------- texture and layouts


def test_texture_is_the_portable_generator():
    # a change here changes every ShapeWorld image (and the torch renderer must follow)
    img = render(Scene(32, "charcoal", (), 0))
    assert img[0, :3].tolist() == [[37, 53, 49], [48, 47, 51], [49, 44, 52]]  # 48 + 6 * (-1.884, 0.865, 0.228, ...)
    for scene in (make_scene("train", 5, 48), Scene(40, "olive", (), 2**32 - 1)):
        side = scene.side
        tex = portable_normal(scene.texture_seed, (side, side, 3)) * np.float32(TEXTURE_SIGMA)
        assert tex.dtype == np.float32 and np.array_equal(texture(scene.texture_seed, side), tex)
        base = np.asarray(BACKGROUNDS.get(scene.background, EXTRA_BACKGROUNDS.get(scene.background)), np.float64)
        want = np.clip(np.rint(base + tex.astype(np.float64)), 0, 255).astype(np.uint8)
        covered = np.zeros((side, side), bool)
        for o in scene.objects:
            covered |= object_mask(o, side)
        assert np.array_equal(render(scene)[~covered], want[~covered])


def test_no_texture_value_can_equal_an_object_colour():
    # what lets change_mask (objects only) stand for the pixel difference: the texture's reach
    # (|portable_normal| <= sqrt(-2 ln 2^-53), times sigma, plus rounding) stays below the
    # smallest per-channel gap between a palette colour and a background
    reach = np.sqrt(-2.0 * np.log(2.0 ** -53)) * TEXTURE_SIGMA + 0.5
    gap = min(max(abs(a - b) for a, b in zip(p, q))
              for p in PALETTE.values() for q in (*BACKGROUNDS.values(), *EXTRA_BACKGROUNDS.values()))
    assert reach < 52 and gap >= 72


def test_change_mask_is_the_pixel_difference():
    red = Obj("circle", "red", "large", 20.5, 20.5, 10.0)
    sq = Obj("square", "red", "small", 26.5, 26.5, 6.0)  # overlaps the circle, same colour
    cases = [((red,), (red,)), ((red,), (red, sq)), ((red, sq), (sq, red)), ((), (sq,)),
             ((red,), (replace(red, colour="blue"),)), ((red, sq), (replace(sq, colour="red"), replace(red, colour="blue")))]
    for a, b in cases:
        sa, sb = Scene(48, "slate", a, 11), Scene(48, "slate", b, 11)
        assert np.array_equal(change_mask(sa, sb), (render(sa) != render(sb)).any(-1)), (a, b)
    assert not change_mask(Scene(48, "slate", (red,), 11), Scene(48, "slate", (red,), 11)).any()
    with pytest.raises(ValueError, match="same side, background and texture_seed"):
        change_mask(Scene(48, "slate", (red,), 11), Scene(48, "slate", (red,), 12))


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_layout_decides_what_make_edit_renders(kind):
    """The layout's box and redraw decision come from object masks; the pixels agree at every side."""
    for side in SIDES:
        for i in range(75):
            layout = edit_layout("train", 1000 * side + i, side, kind)
            s = make_edit("train", 1000 * side + i, side, kind)
            assert (s.source_scene, s.target_scene, s.instruction, s.kind, s.target_obj, s.old_obj, s.box) == (
                layout.source_scene, layout.target_scene, layout.instruction, layout.kind, layout.target_obj,
                layout.old_obj, layout.box)
            pixels = (render(layout.source_scene) != render(layout.target_scene)).any(-1)
            assert pixels.any() and np.array_equal(s.mask, pixels)
            assert np.array_equal(change_mask(layout.source_scene, layout.target_scene), pixels)
            want = mask_box(object_mask(layout.target_obj, side)) if kind == "insert" else mask_box(pixels)
            assert layout.box == want
            if i < 3:
                r = render_edit(layout)
                assert np.array_equal(r.source, s.source) and np.array_equal(r.target, s.target)


def test_generation_layout_is_make_generations_scene_and_caption():
    for side in SIDES:
        for i in range(25):
            layout = generation_layout("val", i, side, backgrounds=("navy", "olive"))
            image, text, scene = make_generation("val", i, side, backgrounds=("navy", "olive"))
            assert (layout.scene, layout.caption) == (scene, text) and np.array_equal(image, render(layout.scene))
