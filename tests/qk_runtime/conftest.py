"""Fixtures of the Python runtime's tests (the tiny checkpoint, its bundles and `source_image` are in
tests/conftest.py). Images are the tiny preset's 32 x 32."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def bundle_copy(tmp_path, fp32_bundle) -> Path:
    """A private copy of the FP32 bundle that a test may damage."""
    return Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))


class Reference:
    """The torch reference pipeline, run on one torch thread."""

    def __init__(self, pipeline, one_torch_thread):
        self.pipeline = pipeline
        self.one_torch_thread = one_torch_thread

    def edit(self, *args, **kwargs):
        with self.one_torch_thread():
            return self.pipeline.edit(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.one_torch_thread():
            return self.pipeline.generate(*args, **kwargs)


@pytest.fixture(scope="session")
def reference_pipeline(tiny_checkpoint, torch_one_thread) -> Reference:
    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    with torch_one_thread():
        return Reference(Pipeline(QKModel.from_checkpoint(tiny_checkpoint)), torch_one_thread)
