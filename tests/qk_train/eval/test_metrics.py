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
    judge_generation,
    score_edit,
)

KEYS = {"success", "region_ok", "preserved", "drift", "inside_error"}


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
@pytest.mark.parametrize("side", [32, 64])
def test_perfect_edit_succeeds_and_unchanged_image_fails(kind, side):
    for i in range(8):
        s = make_edit("test", i, side, kind)
        perfect = score_edit(s.target, s)
        assert set(perfect) == KEYS
        assert perfect["success"] and perfect["region_ok"] and perfect["preserved"], (kind, i, s.instruction)
        assert perfect["drift"] == 0.0 and perfect["inside_error"] == 0.0
        unchanged = score_edit(s.source, s)
        assert unchanged["preserved"] and unchanged["drift"] == 0.0
        assert not unchanged["region_ok"] and not unchanged["success"], (kind, i, s.instruction)
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


def test_metric_registry():
    assert METRICS["edit"] is score_edit and METRICS["generation"] is judge_generation
