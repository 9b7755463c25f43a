"""Fixtures: the tiny preset trained once, exported once per bundle kind.

Training and export need torch (the `train` and `export` extras); the runtime under test does
not. Images are the tiny preset's 32 x 32.
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

TRAIN_STEPS = 8  # enough to move the zero-initialised output layers off zero; parity needs no quality


def _need_export():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install 'query-kontext[export]'): cannot make a test bundle")
    try:
        from qk_export.bundle import export_bundle
    except ImportError as exc:
        pytest.skip(f"qk_export.bundle.export_bundle is not available ({exc}): cannot make a test bundle")
    return export_bundle


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run far faster on one torch thread than on two contended cores (8.6 s vs
    0.12 s for a 20-step edit here); the previous setting is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def torch_one_thread():
    """`one_torch_thread` for test modules: `with torch_one_thread(): ...`."""
    return one_torch_thread


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    _need_export()
    from qk_train.train import Trainer, resolve_config

    out = tmp_path_factory.mktemp("qk_rt_tiny")
    with one_torch_thread():
        Trainer(resolve_config("tiny", [], TRAIN_STEPS), out, progress=False).run()
    return out / "final"


def _export(tmp_path_factory, checkpoint: Path, name: str, **kwargs) -> Path:
    export_bundle = _need_export()
    out = tmp_path_factory.mktemp("bundles") / name
    try:
        with one_torch_thread():
            export_bundle(checkpoint, out, **kwargs)
    except NotImplementedError as exc:  # an option the exporter does not offer (yet)
        pytest.skip(f"qk_export cannot write a {name} bundle: {exc}")
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tmp_path_factory, tiny_checkpoint, "fp32", int8=False, sparse_attn="none")


@pytest.fixture(scope="session")
def region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tmp_path_factory, tiny_checkpoint, "region", int8=False, sparse_attn="region")


@pytest.fixture(scope="session")
def format_2_region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """What qk-export wrote before format 3: no decoder_cond, the steps take the text, kontext and flags."""
    return _export(tmp_path_factory, tiny_checkpoint, "format2", int8=False, sparse_attn="region", format_version=2)


@pytest.fixture()
def bundle_copy(tmp_path, fp32_bundle) -> Path:
    """A private copy of the FP32 bundle that a test may damage."""
    return Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def source_image() -> np.ndarray:
    """A 32 x 32 scene-like image: slate background, a red square."""
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = (112, 112, 120)
    img[8:20, 6:18] = (220, 40, 40)
    return img


class Reference:
    """The torch reference pipeline, run on one torch thread."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def edit(self, *args, **kwargs):
        with one_torch_thread():
            return self.pipeline.edit(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with one_torch_thread():
            return self.pipeline.generate(*args, **kwargs)


@pytest.fixture(scope="session")
def reference_pipeline(tiny_checkpoint) -> Reference:
    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    with one_torch_thread():
        return Reference(Pipeline(QKModel.from_checkpoint(tiny_checkpoint)))
