"""Edit scoring and the generation judge, on ShapeWorld ground truth and hand-spoiled outputs."""
from dataclasses import replace

import numpy as np
import pytest

from qk_train.data.shapeworld import (
    BACKGROUNDS,
    EDIT_KINDS,
    PALETTE,
    SHAPES,
    Obj,
    Scene,
    make_edit,
    make_generation,
    object_mask,
    render,
)
from qk_train.eval.metrics import (
    METRICS,
    classify_shape,
    connected_components,
    dilate,
    generation_findings,
    judge_generation,
    judge_generation_v1,
    object_verdicts,
    score_edit,
    seam,
    shape_fit,
    token_mask_to_pixels,
)

KEYS = {"success", "strict", "region_ok", "preserved", "shape_ok", "shape_iou", "drift", "inside_error"}


# --------------------------------------------------------------------------- dilate


def test_dilate_grows_by_a_square_and_clips_at_the_border():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = dilate(m, 2)
    assert d.sum() == 25 and d[2:7, 2:7].all()
    corner = np.zeros((9, 9), bool)
    corner[0, 0] = True
    assert dilate(corner, 2).sum() == 9
    assert np.array_equal(dilate(m, 0), m)
    with pytest.raises(ValueError, match="-1"):
        dilate(m, -1)
    with pytest.raises(ValueError, match="shape"):
        dilate(np.zeros((2, 2, 2), bool), 1)


# --------------------------------------------------------------------------- score_edit


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("split, side", [("val", 64), ("test", 64), ("test", 32)])
def test_perfect_edit_succeeds_and_unchanged_image_fails(kind, split, side):
    for i in range(8):
        s = make_edit(split, i, side, kind)
        perfect = score_edit(s.target, s)
        assert set(perfect) == KEYS
        assert perfect["success"] and perfect["region_ok"] and perfect["preserved"], (kind, i, s.instruction)
        assert perfect["strict"], (kind, i, s.instruction, perfect["shape_iou"])
        assert perfect["drift"] == 0.0 and perfect["inside_error"] == 0.0
        if kind == "remove":
            assert perfect["shape_ok"] is None and perfect["shape_iou"] is None
        else:
            assert perfect["shape_ok"] and perfect["shape_iou"] >= 0.6
        unchanged = score_edit(s.source, s)
        assert unchanged["preserved"] and unchanged["drift"] == 0.0
        assert not unchanged["region_ok"] and not unchanged["success"], (kind, i, s.instruction)
        assert not unchanged["strict"], (kind, i, s.instruction)
        assert unchanged["inside_error"] > 0.05


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_noise_outside_the_mask_fails_preservation(kind):
    s = make_edit("val", 1, 64, kind)
    rng = np.random.default_rng(0)
    noisy = s.target.astype(np.int64) + rng.normal(0, 60, s.target.shape).round().astype(np.int64)
    keep = s.mask.copy()
    if s.target_obj is not None:  # a bigger object also covers unchanged pixels: keep those too
        keep |= object_mask(s.target_obj, 64)
    out = np.where(keep[..., None], s.target, np.clip(noisy, 0, 255)).astype(np.uint8)
    r = score_edit(out, s)
    assert r["region_ok"] and not r["preserved"] and not r["success"]
    assert r["drift"] > 0.05 and r["inside_error"] == 0.0


def test_small_drift_is_tolerated_and_reported():
    s = make_edit("val", 2, 64, "colour")
    out = np.clip(s.target.astype(np.int64) + 5, 0, 255).astype(np.uint8)  # a slight global tint
    r = score_edit(out, s)
    assert r["success"] and 0.015 < r["drift"] < 0.025


def test_wrong_colour_fails():
    s = make_edit("train", 4, 64, "colour")
    wrong = next(c for c in PALETTE if c not in (s.target_obj.colour, s.old_obj.colour))
    out = s.target.copy()
    out[object_mask(s.target_obj, 64)] = PALETTE[wrong]
    r = score_edit(out, s)
    assert r["preserved"] and not r["region_ok"] and not r["success"]


def test_move_that_leaves_the_old_copy_fails():
    s = make_edit("train", 5, 64, "move")
    out = s.source.copy()
    new = object_mask(s.target_obj, 64)
    out[new] = PALETTE[s.target_obj.colour]  # drawn at the new place, old place not erased
    r = score_edit(out, s)
    assert not r["region_ok"] and not r["success"]


def test_remove_needs_background_where_the_object_was():
    s = make_edit("train", 6, 64, "remove")
    out = s.target.copy()
    m = object_mask(s.old_obj, 64)
    half = m & (np.arange(64)[None, :] < s.old_obj.cx)  # erase only the right half
    out[half] = s.source[half]
    assert not score_edit(out, s)["success"]
    flat = s.target.copy()
    flat[m] = BACKGROUNDS[s.source_scene.background]  # flat background colour, no texture: fine
    assert score_edit(flat, s)["success"]


def test_smaller_resize_needs_the_ring_cleared():
    for i in range(40):
        s = make_edit("test", i, 64, "resize")
        if s.instruction.endswith("smaller"):
            break
    else:
        pytest.fail("no 'smaller' resize among 40 samples")
    out = s.target.copy()
    ring = object_mask(s.old_obj, 64) & ~object_mask(s.target_obj, 64)
    out[ring] = PALETTE[s.target_obj.colour]  # new colour kept everywhere, ring never cleared
    assert not score_edit(out, s)["success"]


def test_score_edit_rejects_wrong_output_shape_or_dtype():
    s = make_edit("train", 0, 32)
    with pytest.raises(ValueError, match="uint8"):
        score_edit(s.target.astype(np.float32) / 255, s)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        score_edit(np.zeros((64, 64, 3), np.uint8), s)


def _band(a: Obj, b: Obj, half: float, side: int) -> np.ndarray:
    """(side, side) bool: pixels within `half` px of the segment from a's centre to b's."""
    c = np.arange(side) + 0.5
    x, y = c[None, :] - a.cx, c[:, None] - a.cy  # (1, side), (side, 1)
    d = np.array([b.cx - a.cx, b.cy - a.cy])
    length = float(np.hypot(*d))
    ux, uy = d / length
    along, across = x * ux + y * uy, np.abs(y * ux - x * uy)  # (side, side)
    return (along >= 0) & (along <= length) & (across <= half)


def _smeared(s, side: int = 64) -> np.ndarray:
    """The requested colour over the true new object dilated by 4 px; for a move also a thin trail
    towards the old place, which itself is left as the target has it (background)."""
    new = object_mask(s.target_obj, side)
    paint = dilate(new, 4)
    if s.kind == "move":
        paint = (paint | _band(s.target_obj, s.old_obj, 1.5, side)) & ~dilate(object_mask(s.old_obj, side), 1)
    out = s.target.copy()
    out[paint] = PALETTE[s.target_obj.colour]
    return out


@pytest.mark.parametrize("kind", ["colour", "insert", "move", "resize"])
def test_a_smeared_object_passes_v1_but_not_the_strict_rule(kind):
    tried = 0
    for i in range(40):
        s = make_edit("val", i, 64, kind)
        others = [o for o in s.target_scene.objects if o != s.target_obj]
        near = dilate(object_mask(s.target_obj, 64), 5)
        if any((near & object_mask(o, 64)).any() for o in others):
            continue  # the smear would paint over a neighbour
        if kind == "move" and (near & object_mask(s.old_obj, 64)).any():
            continue  # the smear would paint over the old place, which rule 2 already catches
        if kind == "resize" and s.target_obj.r < s.old_obj.r:
            continue  # the smear would fill the ring a smaller object leaves, which rule 2 already catches
        r = score_edit(_smeared(s), s)
        assert r["success"] and r["region_ok"] and r["preserved"], (i, s.instruction, r)
        assert not r["shape_ok"] and r["shape_iou"] < 0.6 and not r["strict"], (i, s.instruction, r)
        tried += 1
    assert tried >= 4, f"only {tried} {kind} samples without a neighbour near the target"


@pytest.mark.parametrize("asked, drawn", [("triangle", "square"), ("diamond", "square"), ("triangle", "circle")])
def test_a_wrong_shape_over_the_same_extent_fails_the_strict_rule(asked, drawn):
    tried = 0
    for kind in ("colour", "insert", "move", "resize"):
        for i in range(60):
            s = make_edit("val", i, 64, kind)
            if s.target_obj.shape != asked:
                continue
            wrong = replace(s.target_obj, shape=drawn)
            if s.old_obj is not None and (dilate(object_mask(wrong, 64), 1) & object_mask(s.old_obj, 64)
                                          & ~object_mask(s.target_obj, 64)).any():
                continue  # it would cover the old place, which rule 2 already catches
            objects = tuple(wrong if o == s.target_obj else o for o in s.target_scene.objects)
            r = score_edit(render(replace(s.target_scene, objects=objects)), s)
            assert r["success"], (kind, i, s.instruction, r)  # rule 1 sees the asked mask covered
            assert r["shape_iou"] < 0.6 and not r["shape_ok"] and not r["strict"], (kind, i, s.instruction, r)
            tried += 1
            break
    assert tried == 4


def test_remove_strict_is_rules_2_and_3():
    s = make_edit("val", 3, 64, "remove")
    r = score_edit(s.target, s)
    assert r["strict"] and r["shape_ok"] is None
    out = s.target.copy()
    out[object_mask(s.old_obj, 64)] = s.source[object_mask(s.old_obj, 64)]
    assert not score_edit(out, s)["strict"]


# --------------------------------------------------------------------------- seam


def _active_tokens_around(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) bool: the tokens touching `mask`, grown by one token (a generous gate)."""
    p = mask.shape[0] // grid
    touched = mask.reshape(grid, p, grid, p).any(axis=(1, 3))
    return dilate(touched, 1)


def _box_blur(image: np.ndarray, k: int = 2) -> np.ndarray:
    x = np.pad(image.astype(np.float64), ((k, k), (k, k), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    out = sum(x[dy:dy + h, dx:dx + w] for dy in range(2 * k + 1) for dx in range(2 * k + 1)) / (2 * k + 1) ** 2
    return np.rint(out).astype(np.uint8)


def test_token_mask_to_pixels_repeats_each_token_over_its_patch():
    tokens = np.zeros((4, 4), bool)
    tokens[1, 2] = True
    px = token_mask_to_pixels(tokens, 32)
    assert px.shape == (32, 32) and px.sum() == 64 and px[8:16, 16:24].all()
    with pytest.raises(ValueError, match="does not tile"):
        token_mask_to_pixels(tokens, 30)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_seam_is_zero_where_the_source_is_kept_and_positive_for_a_smoothed_gate(kind):
    s = make_edit("val", 4, 64, kind)
    active = token_mask_to_pixels(_active_tokens_around(s.mask, 8), 64)
    assert (active & ~dilate(s.mask, 2)).any()  # the gate reaches past the change
    assert seam(s.target, s.source, s.mask, active) == 0.0
    smoothed = np.where(active[..., None], _box_blur(s.target), s.source)  # the gate area repainted, slightly soft
    value = seam(smoothed, s.source, s.mask, active)
    assert value is not None and value > 0.005
    # the same image scored with an empty gate, or one inside the dilated change: nothing to judge
    assert seam(smoothed, s.source, s.mask, np.zeros((64, 64), bool)) is None
    assert seam(smoothed, s.source, s.mask, s.mask) is None


def test_seam_checks_its_inputs():
    s = make_edit("val", 0, 32, "colour")
    with pytest.raises(ValueError, match="uint8"):
        seam(s.target.astype(np.float32), s.source, s.mask, s.mask)
    with pytest.raises(ValueError, match="active_pixels"):
        seam(s.target, s.source, s.mask, np.ones((8, 8), bool))


# --------------------------------------------------------------------------- judge_generation


@pytest.mark.parametrize("side, count", [(64, 120), (32, 120)])
def test_judge_accepts_rendered_scenes(side, count):
    accepted = sum(judge_generation(*make_generation("test", i, side)[::2]) for i in range(count))
    assert accepted == count, f"judge accuracy {accepted / count:.3f} at {side} px"


def test_judge_rejects_blank_recoloured_moved_and_reshaped_objects():
    for i in range(10):
        image, _, scene = make_generation("val", i)
        blank = render(Scene(64, scene.background, (), scene.texture_seed))
        assert not judge_generation(blank, scene)
        obj = scene.objects[0]
        used = {(o.colour, o.shape) for o in scene.objects}
        colour = next(c for c in PALETTE if c != obj.colour and (c, obj.shape) not in used)
        recoloured = replace(scene, objects=(replace(obj, colour=colour),) + scene.objects[1:])
        assert not judge_generation(render(recoloured), scene)
        shape = next(s for s in SHAPES if s != obj.shape and (obj.colour, s) not in used)
        reshaped = replace(scene, objects=(replace(obj, shape=shape),) + scene.objects[1:])
        assert not judge_generation(render(reshaped), scene)
    # moved to another grid cell
    scene = Scene(64, "navy", (Obj("square", "red", "small", 10.5, 10.5, 7.0),), 1)
    moved = Scene(64, "navy", (Obj("square", "red", "small", 53.5, 53.5, 7.0),), 1)
    assert judge_generation(render(scene), scene)
    assert not judge_generation(render(moved), scene)


def test_judge_rejects_a_tiny_blob():
    scene = Scene(64, "slate", (Obj("circle", "green", "large", 32.5, 32.5, 12.0),), 3)
    small = Scene(64, "slate", (Obj("circle", "green", "small", 32.5, 32.5, 6.5),), 3)
    assert judge_generation(render(scene), scene)
    assert not judge_generation(render(small), scene)  # about 30 % of the area


@pytest.mark.parametrize("r", [3.2, 4.4, 6.6, 14.0])
def test_classify_shape_from_pixels(r):
    for shape in SHAPES:
        for cx in (20.5, 21.5):
            m = object_mask(Obj(shape, "red", "small", cx, 30.5, r), 64)
            assert classify_shape(m) == shape


def test_connected_components_are_8_connected_and_sorted():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours: one component
    m[4:6, 3:6] = True
    comps = connected_components(m)
    assert [int(c.sum()) for c in comps] == [6, 2]


# --------------------------------------------------------------------------- judge_generation v1.1


def _two_object_scene() -> Scene:
    return Scene(64, "navy", (Obj("circle", "red", "small", 12.5, 12.5, 8.0),
                              Obj("triangle", "green", "large", 44.5, 44.5, 12.0)), 7)


@pytest.mark.parametrize("index", range(6))
def test_judge_v1_1_accepts_true_renders_and_v1_agrees(index):
    image, _, scene = make_generation("val", index)
    assert judge_generation(image, scene) and judge_generation_v1(image, scene)
    assert generation_findings(image, scene) == {"found": [True] * len(scene.objects), "extra_objects": 0}


def test_judge_v1_1_rejects_an_extra_object():
    scene = _two_object_scene()
    extra = replace(scene, objects=scene.objects + (Obj("square", "blue", "small", 50.5, 12.5, 7.0),))
    image = render(extra)
    assert judge_generation_v1(image, scene)  # v1 does not look for extra objects
    assert not judge_generation(image, scene)
    assert generation_findings(image, scene) == {"found": [True, True], "extra_objects": 1}
    # a second copy of a captioned object in another place is an extra object too
    twin = replace(scene, objects=scene.objects + (Obj("circle", "red", "small", 50.5, 12.5, 8.0),))
    assert judge_generation_v1(render(twin), scene) and not judge_generation(render(twin), scene)


def test_judge_v1_1_extra_object_threshold_is_12_pixels():
    scene = _two_object_scene()
    image = render(scene)
    speck = image.copy()
    speck[2:5, 40:44] = PALETTE["blue"]  # 12 pixels
    assert not judge_generation(speck, scene)
    speck[4, 43] = render(scene)[4, 43]  # 11 pixels
    assert judge_generation(speck, scene)


def test_judge_v1_1_counts_a_pixel_near_two_palette_colours_once():
    between = np.array([240, 175, 35], np.uint8)  # about 35 from both yellow and orange
    for name in ("yellow", "orange"):
        assert np.sqrt(((between - np.array(PALETTE[name])) ** 2).sum()) <= 60
    empty = Scene(64, "charcoal", (), 2)
    image = render(empty)
    image[20:28, 20:28] = between
    assert generation_findings(image, empty)["extra_objects"] == 1  # one object, not one per colour
    asked = Scene(64, "charcoal", (Obj("square", "yellow", "small", 23.5, 23.5, 4.0),), 2)
    assert judge_generation(image, asked)  # a yellow square, slightly orange: found, and nothing left over


def test_judge_v1_1_rejects_a_wrong_shape():
    scene = _two_object_scene()
    wrong = replace(scene, objects=(replace(scene.objects[0], shape="diamond"), scene.objects[1]))
    assert not judge_generation(render(wrong), scene) and not judge_generation_v1(render(wrong), scene)
    assert generation_findings(render(wrong), scene)["found"] == [False, True]


def test_judge_v1_1_needs_a_shape_iou_of_0_6():
    scene = Scene(64, "slate", (Obj("circle", "orange", "large", 32.5, 32.5, 12.0),), 5)
    image = render(scene)
    m = object_mask(scene.objects[0], 64)
    yy, xx = np.mgrid[:64, :64]
    speckled = image.copy()
    holes = m & ((yy + xx) % 2 == 1)  # every other pixel of the circle back to background
    speckled[holes] = render(replace(scene, objects=()))[holes]
    shape, iou = shape_fit(m & ~holes)
    assert shape == "circle" and iou < 0.6  # the best fit, but a poor one
    assert judge_generation_v1(speckled, scene)
    assert not judge_generation(speckled, scene)


def test_judge_v1_1_rejects_merged_and_missing_objects():
    scene = Scene(64, "brown", (Obj("circle", "cyan", "small", 12.5, 32.5, 7.0),
                                Obj("square", "cyan", "small", 51.5, 32.5, 7.0)), 4)
    image = render(scene)
    assert judge_generation(image, scene)
    merged = image.copy()
    merged[31:34, 19:45] = PALETTE["cyan"]  # a bridge: the two objects become one blob
    assert generation_findings(merged, scene)["found"] == [False, False]
    assert not judge_generation(merged, scene) and not judge_generation_v1(merged, scene)
    missing = render(replace(scene, objects=scene.objects[:1]))
    assert generation_findings(missing, scene) == {"found": [True, False], "extra_objects": 0}
    assert not judge_generation(missing, scene)


def test_metric_registry():
    assert METRICS["edit"] is score_edit and METRICS["generation"] is judge_generation
    assert METRICS["generation_v1"] is judge_generation_v1 and METRICS["seam"] is seam


def test_object_verdicts_name_what_is_wrong_with_each_object():
    asked = Obj("circle", "orange", "large", 32.5, 32.5, 12.0)
    scene = Scene(64, "slate", (asked,), 5)
    empty = render(replace(scene, objects=()))

    def verdict(objects, image=None):
        image = render(replace(scene, objects=objects)) if image is None else image
        return object_verdicts(image, scene)[0]

    assert verdict((asked,)) == "found"
    assert verdict(()) == "missing"
    assert verdict((replace(asked, r=3.0),)) == "too_small"  # about 6 % of the asked-for area
    assert verdict((replace(asked, cx=52.5, cy=52.5, r=9.0),)) == "misplaced"  # bottom right, not centre
    assert verdict((replace(asked, shape="triangle"),)) == "wrong_shape"
    m = object_mask(asked, 64)
    yy, xx = np.mgrid[:64, :64]
    speckled = render(scene)
    holes = m & ((yy + xx) % 2 == 1)
    speckled[holes] = empty[holes]
    assert verdict(None, speckled) == "misshapen"  # a circle still fits best, with IoU under 0.6
    # "found" is exactly the judge's finding, object by object, on a model-like mix of cases
    for i in range(12):
        image, _, sc = make_generation("val", i)
        shifted = np.roll(image, 9 * (i % 3), axis=1)
        assert [v == "found" for v in object_verdicts(shifted, sc)] == generation_findings(shifted, sc)["found"]
