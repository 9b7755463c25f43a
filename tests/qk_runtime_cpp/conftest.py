"""Fixtures for the C++ runtime's tests: the built programs, and tiny bundles to run.

The C++ build lives in runtime/cpp/build/ (`runtime/cpp/build.sh` makes it; CI runs that script
once before pytest). Here an existing build is reused and brought up to date incrementally
(`cmake --build`, a second or two when nothing changed); without one, build.sh runs first.

Bundles come from the tiny preset trained for a few steps and exported once per kind (FP32,
INT8, FP32 with the region decoder); training and export need torch (the `export` extra), the
C++ runtime under test does not.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cpp_helpers import BUILD, CPP, PROGRAMS, TRAIN_STEPS


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """runtime/cpp/build with every program built and up to date."""
    if (BUILD / "CMakeCache.txt").is_file():
        cmd = ["cmake", "--build", str(BUILD), "-j", "2"]
    else:
        cmd = ["bash", str(CPP / "build.sh")]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QK_CPP_BUILD_DIR": str(BUILD)})
    if run.returncode != 0:
        pytest.fail(f"building the C++ runtime failed ({' '.join(cmd)}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    missing = [p for p in PROGRAMS if not (BUILD / p).is_file()]
    if missing:
        pytest.fail(f"{missing} missing from {BUILD} after the build")
    return BUILD


# --------------------------------------------------------------------------- bundles


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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    _need_export()
    from qk_train.train import Trainer, resolve_config

    out = tmp_path_factory.mktemp("qk_cpp_tiny")
    with one_torch_thread():
        Trainer(resolve_config("tiny", [], TRAIN_STEPS), out, progress=False).run()
    return out / "final"


def _export(tmp_path_factory, checkpoint: Path, name: str, **kwargs) -> Path:
    export_bundle = _need_export()
    out = tmp_path_factory.mktemp("cpp_bundles") / name
    with one_torch_thread():
        export_bundle(checkpoint, out, **kwargs)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tmp_path_factory, tiny_checkpoint, "fp32", int8=False, sparse_attn="none")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """The INT8 bundle of the tiny checkpoint, or QK_CPP_INT8_BUNDLE (an INT8 bundle made elsewhere)."""
    if os.environ.get("QK_CPP_INT8_BUNDLE"):
        return Path(os.environ["QK_CPP_INT8_BUNDLE"])
    try:
        return _export(tmp_path_factory, tiny_checkpoint, "int8", int8=True, sparse_attn="none")
    except Exception as exc:  # the exporter's own INT8 accuracy gate (qk_export.parity.ParityError)
        if type(exc).__name__ != "ParityError":
            raise
        pytest.skip(f"qk_export refuses to write the tiny checkpoint in INT8 ({exc}); set QK_CPP_INT8_BUNDLE=DIR "
                    f"to run this test on an INT8 bundle made elsewhere")


@pytest.fixture(scope="session")
def region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tmp_path_factory, tiny_checkpoint, "region", int8=False, sparse_attn="region")


@pytest.fixture(scope="session")
def format_2_region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """What qk-export wrote before format 3: no decoder_cond, the steps take the text, kontext and flags."""
    return _export(tmp_path_factory, tiny_checkpoint, "format2", int8=False, sparse_attn="region", format_version=2)


@pytest.fixture(scope="session")
def shapeworld_edits(tmp_path_factory):
    """20 ShapeWorld test-split edits at the tiny preset's 32 px, as PNG files plus their jobs."""
    from PIL import Image

    from qk_train.data.shapeworld import make_edit

    folder = tmp_path_factory.mktemp("shapeworld")
    edits = []
    for i in range(20):
        e = make_edit("test", i, side=32)
        path = folder / f"src{i:02d}.png"
        Image.fromarray(e.source).save(path)
        edits.append({"image": str(path), "instruction": e.instruction, "box": list(e.box) if i % 4 else None,
                      "seed": 1000 + i, "steps": 0})
    return edits


@pytest.fixture(scope="session")
def scene_png(tmp_path_factory) -> Path:
    """A 32 x 32 scene-like PNG: slate background, a red square."""
    from PIL import Image

    img = np.empty((32, 32, 3), np.uint8)
    img[:] = (112, 112, 120)
    img[8:20, 6:18] = (220, 40, 40)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(img).save(path)
    return path
