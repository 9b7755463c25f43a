"""Fixtures for the C++ runtime's tests: the built programs, and tiny bundles to run.

The C++ build lives in runtime/cpp/build/ (`runtime/cpp/build.sh` makes it; CI runs that script
once before pytest). Here an existing build is reused and brought up to date incrementally
(`cmake --build`, a second or two when nothing changed); without one, build.sh runs first.

The tiny checkpoint and its bundles (FP32, INT8, FP32 with the region decoder, format 2) are
tests/conftest.py's; training and export need torch (the `export` extra), the C++ runtime under
test does not.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cpp_helpers import BUILD, CPP, PROGRAMS


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


# --------------------------------------------------------------------------- inputs


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
def scene_png(tmp_path_factory, source_image) -> Path:
    """`source_image` (tests/conftest.py) as a PNG."""
    from PIL import Image

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(source_image).save(path)
    return path
