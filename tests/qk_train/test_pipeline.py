import numpy as np
import pytest

from qk_train.data.shapeworld import make_edit
from qk_train.models import QKModel
from qk_train.pipeline import Pipeline, active_token_indices, check_box


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline(QKModel.from_checkpoint(tiny_run / "final"), steps=4)


def test_pixels_outside_the_gate_are_the_source(pipe):
    sample = make_edit("test", 1, 32)
    for threshold in (0.0, 0.5, 1.0):  # everything active, the CMG's own region, nothing active
        pipe.gate_threshold = threshold
        out = pipe.edit(sample.source, sample.instruction, sample.box, seed=3)
        active = np.kron(out.gate > threshold, np.ones((8, 8), bool))  # tiny: 8 px per token
        np.testing.assert_array_equal(out.image[~active], sample.source[~active])
        if threshold == 1.0:
            np.testing.assert_array_equal(out.image, sample.source)
    pipe.gate_threshold = 0.5


def test_region_mode_matches_dense_when_every_token_is_active(pipe):
    sample = make_edit("test", 2, 32)
    pipe.gate_threshold = 0.0
    dense = pipe.edit(sample.source, sample.instruction, sample.box, seed=1).image
    region = pipe.edit(sample.source, sample.instruction, sample.box, seed=1, sparse="region")
    pipe.gate_threshold = 0.5
    assert region.active_tokens == 16
    assert np.abs(dense.astype(int) - region.image.astype(int)).max() <= 1


def test_same_seed_same_image_and_generation_shape(pipe):
    a = pipe.generate("a large red circle at the top left", seed=5).image
    b = pipe.generate("a large red circle at the top left", seed=5).image
    c = pipe.generate("a large red circle at the top left", seed=6).image
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_active_tokens_are_bucketed_with_a_halo():
    gate = np.zeros(64, bool)
    gate[27] = True  # one token in the middle of an 8x8 grid
    idx = active_token_indices(gate, 8, 8)
    assert len(idx) == 16 and 27 in idx and {18, 19, 20, 26, 28, 34, 35, 36} <= set(idx.tolist())
    assert len(active_token_indices(np.ones(64, bool), 8, 8)) == 64
    gate = np.zeros((8, 8), bool)
    gate[3:5, 3:6] = True  # 2 x 3 tokens: with the halo 4 x 5 = 20, padded to the next eighth of 64
    idx = active_token_indices(gate.reshape(-1), 8, 8)
    halo = np.zeros((8, 8), bool)
    halo[2:6, 2:7] = True
    assert len(idx) == 24 and set(np.flatnonzero(halo).tolist()) <= set(idx.tolist())


@pytest.mark.parametrize("box", [(5, 5, 5, 9), (9, 5, 4, 9), (-1, 0, 4, 4), (0, 0, 33, 4), ("a", 0, 1, 1)])
def test_bad_boxes_are_refused_with_the_rule(box):
    with pytest.raises(ValueError, match="x0,y0,x1,y1|0 <= x0 < x1"):
        check_box(box, 32, 32)
