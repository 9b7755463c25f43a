import pytest

from qk_export.bundle import export_bundle
from qk_train.train import Trainer, resolve_config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_tiny")
    return Trainer(resolve_config("tiny", [], None), out, progress=False).run()


@pytest.fixture(scope="session")
def bundles(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {
        "fp32": export_bundle(tiny_checkpoint, root / "fp32"),
        "int8_region": export_bundle(tiny_checkpoint, root / "int8_region", int8=True, sparse_attn="region", calib_samples=16),
    }
