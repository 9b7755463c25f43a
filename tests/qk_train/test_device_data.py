"""--data device: batches rendered by torch (on the CPU here) equal make_batch's, drawn ahead or not."""
import pytest
import torch

from qk_train.config import ConfigError
from qk_train.device_data import DeviceBatches, device_make_batch
from qk_train.train import make_batch, resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _assert_same(a, b):
    for name in ("target", "source", "change", "region", "is_edit"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device, name
        assert torch.equal(x, y), name
    assert a.texts == b.texts


@pytest.mark.parametrize("sets", [[], ["train.edit_fraction=1.0", "train.drop_box=0.5"], ["train.edit_fraction=0.0"],
                                  ["data.buckets=[48, 64, 80]", "data.bucket_weights=[1, 1, 1]", "data.image_size=64"]])
def test_device_batches_equal_make_batch(sets):
    cfg = resolve_config("tiny", sets, None)
    for stage, step, rank, world in [("main", 0, 0, 1), ("main", 7, 1, 2), ("ae", 3, 0, 1), ("main", 12, 0, 1)]:
        _assert_same(device_make_batch(cfg, stage, step, rank, world, "cpu"), make_batch(cfg, stage, step, rank, world))


def test_layouts_drawn_ahead_by_a_worker_process_give_the_same_batches():
    cfg = resolve_config("tiny", [], None)
    with DeviceBatches(cfg, 0, 1, "cpu", workers=1, depth=3) as batches:
        for stage, step in [("main", 0), ("main", 1), ("main", 2), ("main", 9), ("main", 10), ("ae", 0)]:  # jumps too
            _assert_same(batches.get(stage, step, 11), make_batch(cfg, stage, step, 0, 1))


def test_user_data_stays_on_the_cpu_path(tmp_path):
    cfg = resolve_config("tiny", [f"data.edit_manifest={tmp_path / 'edits.jsonl'}"], None)
    with pytest.raises(ConfigError, match="--data cpu"):
        device_make_batch(cfg, "main", 0, 0, 1, "cpu")
