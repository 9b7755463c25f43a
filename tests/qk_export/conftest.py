"""The tiny checkpoint's bundles the export tests read, beside tests/conftest.py's."""
from __future__ import annotations

import shutil

import pytest

from qk_export.bundle import export_bundle


@pytest.fixture(scope="session")
def bundles(tiny_checkpoint, fp32_bundle, tmp_path_factory, torch_one_thread):
    """fp32: dense; int8_region: INT8 with decoder_region; window: FP32 windowed, written over a
    copy of the fp32 bundle (so it also shows an existing bundle being replaced)."""
    root = tmp_path_factory.mktemp("export_bundles")
    with torch_one_thread():
        int8 = export_bundle(tiny_checkpoint, root / "int8_region", int8=True, sparse_attn="region", calib_samples=16)
        shutil.copytree(fp32_bundle, root / "window")
        window = export_bundle(tiny_checkpoint, root / "window", sparse_attn="window")
    return {"fp32": fp32_bundle, "int8_region": int8, "window": window}
