"""The torch renderer gives ShapeWorld's numpy pixels exactly: texture, objects, change masks, boxes."""
import numpy as np
import pytest
import torch

from qk_runtime import noise
from qk_train.data import render_torch as rt
from qk_train.data.shapeworld import (
    EDIT_KINDS,
    Obj,
    Scene,
    edit_layout,
    generation_layout,
    render,
    render_edit,
)
from qk_train.train import box_mask

SIDES = (32, 48, 64, 80)
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def test_splitmix64_and_portable_normal_match_the_numpy_reference():
    seeds = [0, 1, 7, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1, 0x5157_0000_1234]
    t = rt.splitmix64(rt.seed_tensor(seeds), 9)
    for row, seed in zip(t, seeds):
        assert [v & (2**64 - 1) for v in row.tolist()] == [int(v) for v in noise.splitmix64(seed, 9)]
    assert int(t[0, 0]) & (2**64 - 1) == 0xE220A8397B1DCDAF  # the published first output for seed 0
    for shape in [(5,), (3, 7), (4, 4, 3)]:  # odd counts drop the last z1, as the reference
        got = rt.portable_normal(rt.seed_tensor(seeds), shape)
        assert got.dtype == torch.float32 and got.shape == (len(seeds), *shape)
        for row, seed in zip(got, seeds):
            assert np.array_equal(row.numpy(), noise.portable_normal(seed, shape)), (seed, shape)


@pytest.mark.parametrize("side", SIDES)
def test_edits_render_pixel_for_pixel(side):
    layouts = [edit_layout("train", 500 * side + i, side, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(100)]
    layouts += [edit_layout("test", i, side, backgrounds=("olive",)) for i in range(5)]  # the extra background
    source, target, mask = rt.render_edits(layouts, "cpu")
    assert source.dtype == target.dtype == torch.uint8 and mask.dtype == torch.bool
    assert source.shape == target.shape == (len(layouts), side, side, 3) and mask.shape == (len(layouts), side, side)
    for k, layout in enumerate(layouts):
        want = render_edit(layout)
        assert np.array_equal(source[k].numpy(), want.source), (side, k)
        assert np.array_equal(target[k].numpy(), want.target), (side, k)
        assert np.array_equal(mask[k].numpy(), want.mask), (side, k)


@pytest.mark.parametrize("side", SIDES)
def test_generation_scenes_render_pixel_for_pixel(side):
    scenes = [generation_layout("val", 300 * side + i, side).scene for i in range(100)]
    got = rt.render_scenes(scenes, "cpu")
    assert np.array_equal(got.numpy(), np.stack([render(s) for s in scenes]))


def test_later_objects_paint_over_earlier_ones_and_empty_scenes_are_background():
    # not a ShapeWorld layout (they never overlap), but `render`'s order holds anyway
    a = Obj("circle", "red", "large", 20.5, 20.5, 11.0)
    b = Obj("triangle", "blue", "large", 26.5, 24.5, 10.3)
    c = Obj("diamond", "white", "small", 21.5, 19.5, 5.2)
    scenes = [Scene(40, "navy", (a, b, c), 3), Scene(40, "brown", (c, b, a), 4), Scene(40, "slate", (), 5)]
    assert np.array_equal(rt.render_scenes(scenes, "cpu").numpy(), np.stack([render(s) for s in scenes]))


def test_boxes_rasterise_like_make_batch():
    boxes = [(0, 0, 1, 1), (3, 5, 17, 9), (10, 2, 32, 32), (0, 0, 32, 32)]
    got = rt.box_masks(np.array(boxes), 32, "cpu")
    assert got.dtype == torch.bool
    for k, box in enumerate(boxes):
        assert np.array_equal(got[k].numpy(), box_mask(box, 32) > 0), box


def test_scenes_of_different_sides_are_refused():
    with pytest.raises(ValueError, match=r"sides \[32, 48\]"):
        rt.render_scenes([Scene(32, "navy", (), 1), Scene(48, "navy", (), 1)], "cpu")
