"""Fixtures every test folder shares: one torch thread, the tiny preset trained once per test run,
and its bundles exported once per kind.

Training and export need torch (the `export` extra); a folder whose code under test does not
(the runtimes) skips with the install command when torch is missing. The tiny preset's images
are 32 x 32. pytest runs with `--import-mode=importlib`, so no test folder is put on `sys.path`
(a folder named like a package, such as tests/qk_runtime, would hide the package itself).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import pytest

TINY_STEPS = 30  # the tiny preset's own length: enough for the gate to open on some tokens


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run many times faster on one torch thread than on two contended cores (0.12 s
    against 8.6 s for a 20-step edit on a busy 2-core machine); the previous setting comes back after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def torch_one_thread():
    """`one_torch_thread` for tests: `with torch_one_thread(): ...`."""
    return one_torch_thread


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (`@pytest.mark.usefixtures("one_thread")`)."""
    with one_torch_thread():
        yield


def need_export():
    """qk_export.bundle.export_bundle, or a skip that says what to install."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install 'query-kontext[export]'): cannot make a test model or bundle")
    try:
        from qk_export.bundle import export_bundle
    except ImportError as exc:
        pytest.skip(f"qk_export.bundle.export_bundle is not available ({exc}): cannot make a test bundle")
    return export_bundle


@pytest.fixture(scope="session")
def source_image() -> "np.ndarray":
    """A 32 x 32 scene-like image: slate background, a red square."""
    import numpy as np

    img = np.empty((32, 32, 3), np.uint8)
    img[:] = (112, 112, 120)
    img[8:20, 6:18] = (220, 40, 40)
    return img


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny preset trained once for the whole test run; its run folder (read it, never write:
    copy it first)."""
    need_export()
    from qk_train.train import Trainer, resolve_config

    out = tmp_path_factory.mktemp("tiny_run")
    with one_torch_thread():
        Trainer(resolve_config("tiny", [], TINY_STEPS), out, progress=False).run()
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "final"


def _export(tmp_path_factory, checkpoint: Path, name: str, **kwargs) -> Path:
    export_bundle = need_export()
    out = tmp_path_factory.mktemp("bundles") / name
    try:
        with one_torch_thread():
            export_bundle(checkpoint, out, **kwargs)
    except NotImplementedError as exc:  # an option the exporter does not offer
        pytest.skip(f"qk_export cannot write a {name} bundle: {exc}")
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """Dense FP32 (read it, never write: `bundle_copy` gives a private copy)."""
    return _export(tmp_path_factory, tiny_checkpoint, "fp32", int8=False, sparse_attn="none")


@pytest.fixture(scope="session")
def region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tmp_path_factory, tiny_checkpoint, "region", int8=False, sparse_attn="region")


@pytest.fixture(scope="session")
def format_2_region_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """What qk-export wrote before format 3: no decoder_cond, the steps take the text, kontext and flags."""
    return _export(tmp_path_factory, tiny_checkpoint, "format2", int8=False, sparse_attn="region", format_version=2)


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """Dense INT8 of the tiny checkpoint, or QK_INT8_BUNDLE (an INT8 bundle made elsewhere)."""
    if os.environ.get("QK_INT8_BUNDLE"):
        return Path(os.environ["QK_INT8_BUNDLE"])
    try:
        return _export(tmp_path_factory, tiny_checkpoint, "int8", int8=True, sparse_attn="none")
    except Exception as exc:  # the exporter's own INT8 accuracy gate (qk_export.parity.ParityError)
        if type(exc).__name__ != "ParityError":
            raise
        pytest.skip(f"qk_export refuses to write the tiny checkpoint in INT8 ({exc}); set QK_INT8_BUNDLE=DIR "
                    f"to run this test on an INT8 bundle made elsewhere")


@pytest.fixture(scope="session")
def weight_only_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """INT8 with every quantized graph weight-only (`qk-export --int8 --weight-only`) and the
    region decoder: int8 weights, float activations, nothing calibrated (read it, never write)."""
    return _export(tmp_path_factory, tiny_checkpoint, "int8_weight_only", int8=True, weight_only=True, sparse_attn="region")


FEW_STEP_STEPS = 10  # shortcut fine-tuning of the tiny checkpoint: enough to move its step-size embedding off zero


@pytest.fixture(scope="session")
def few_step_checkpoint(tmp_path_factory, tiny_run) -> Path:
    """The tiny checkpoint with the step-size conditioning switched on (`--init-from`), fine-tuned
    with the shortcut objective (train.shortcut_fraction 0.5) for a few steps (read it, never write)."""
    need_export()
    from qk_train.train import Trainer, resolve_config

    out = tmp_path_factory.mktemp("few_step_run")
    cfg = resolve_config("tiny", ["decoder.step_size_cond=true", "train.shortcut_fraction=0.5",
                                  f"train.init_from={tiny_run / 'final'}"], FEW_STEP_STEPS)
    with one_torch_thread():
        Trainer(cfg, out, progress=False).run()
    return out / "final"


@pytest.fixture(scope="session")
def few_step_bundle(tmp_path_factory, few_step_checkpoint) -> Path:
    """FP32 bundle (format 5) of `few_step_checkpoint` with the dense and the region decoder."""
    return _export(tmp_path_factory, few_step_checkpoint, "few_step", int8=False, sparse_attn="region")
