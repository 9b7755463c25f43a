"""The tiny preset trained once, and exported once per bundle variant the tests read."""
from __future__ import annotations

import contextlib
import shutil

import pytest

from qk_export.bundle import export_bundle
from qk_train.train import Trainer, resolve_config


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run faster on one torch thread than on two contended cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_tiny")
    with one_torch_thread():
        return Trainer(resolve_config("tiny", [], None), out, progress=False).run()


@pytest.fixture(scope="session")
def bundles(tiny_checkpoint, tmp_path_factory):
    """fp32: dense; int8_region: INT8 with decoder_region; window: FP32 windowed, written over a
    copy of the fp32 bundle (so it also shows an existing bundle being replaced)."""
    root = tmp_path_factory.mktemp("bundles")
    with one_torch_thread():
        fp32 = export_bundle(tiny_checkpoint, root / "fp32")
        int8 = export_bundle(tiny_checkpoint, root / "int8_region", int8=True, sparse_attn="region", calib_samples=16)
        shutil.copytree(fp32, root / "window")
        window = export_bundle(tiny_checkpoint, root / "window", sparse_attn="window")
    return {"fp32": fp32, "int8_region": int8, "window": window}


@pytest.fixture
def torch_one_thread():
    with one_torch_thread():
        yield
