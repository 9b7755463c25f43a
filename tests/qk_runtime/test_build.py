"""qk-build's engine recipe as Polygraphy's TensorRT loaders, checked without building: Polygraphy
imports TensorRT only when a loader is called, so the loaders are assembled and inspected here.
Building itself needs TensorRT and a GPU (tests/qk_runtime/test_engines.py,
test_golden.py: skipped without TensorRT)."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from qk_runtime import engines
from qk_runtime.build import graph_loaders, main
from qk_runtime.bundle import open_bundle

pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy): qk-build assembles its loaders")
from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _loaders(bundle, has_fp16_flag, tmp_path=None):
    precision = engines.engine_precision(bundle.precision, has_fp16_flag)
    cache = tmp_path / "timing.cache" if tmp_path is not None else None
    return precision, {name: graph_loaders(info, precision, timing_cache=cache) for name, info in bundle.graphs.items()}


def _assert_profiles(bundle, loaders):
    for name, (network, config) in loaders.items():
        info = bundle.graphs[name]
        assert isinstance(network, NetworkFromOnnxPath) and isinstance(config, CreateConfig)
        assert network.path == str(info.path)
        (profile,) = config.profiles  # one optimization profile per graph
        assert set(profile) == set(info.input_names) == set(info.profile)
        for tensor, shapes in info.profile.items():  # the manifest's min / opt / max, axis for axis
            assert (list(profile[tensor].min), list(profile[tensor].opt), list(profile[tensor].max)) == \
                   (shapes["min"], shapes["opt"], shapes["max"]), (name, tensor)
        assert config.tf32  # TensorRT's default for FP32 layers (Polygraphy's is off)


def test_fp32_bundle_on_tensorrt_10_builds_weakly_typed_with_the_fp16_flag(fp32_bundle):
    bundle = open_bundle(fp32_bundle)
    precision, loaders = _loaders(bundle, has_fp16_flag=True)
    assert precision == "fp16"
    _assert_profiles(bundle, loaders)
    assert all(not n.strongly_typed and c.fp16 for n, c in loaders.values())
    # the decoder's batch axis: 1..3 with 3 as the optimum (an edit's guidance branches)
    profile = loaders["decoder"][1].profiles[0]["x"]
    assert (profile.min[0], profile.opt[0], profile.max[0]) == (1, 3, 3)


def test_fp32_bundle_on_tensorrt_11_builds_strongly_typed_in_fp32(fp32_bundle):
    bundle = open_bundle(fp32_bundle)
    precision, loaders = _loaders(bundle, has_fp16_flag=False)
    assert precision == "fp32-strongly-typed"
    assert all(n.strongly_typed and not c.fp16 for n, c in loaders.values())


def test_int8_bundle_builds_strongly_typed_whatever_the_version(int8_bundle):
    bundle = open_bundle(int8_bundle)
    for has_fp16 in (True, False):
        precision, loaders = _loaders(bundle, has_fp16)
        assert precision == "int8-qdq-strongly-typed"
        _assert_profiles(bundle, loaders)
        assert all(n.strongly_typed and not c.fp16 and not c.int8 for n, c in loaders.values())


def test_region_profile_covers_the_smallest_bucket_to_all_tokens(region_bundle):
    bundle = open_bundle(region_bundle)
    _, loaders = _loaders(bundle, True)
    active = loaders["decoder_region"][1].profiles[0]["active"]
    n = bundle.dims.tokens
    assert (active.min[1], active.opt[1], active.max[1]) == (max(1, n // 8), max(1, n // 4), n)


def test_timing_cache_is_loaded_only_when_it_exists(fp32_bundle, tmp_path):
    bundle = open_bundle(fp32_bundle)
    _, loaders = _loaders(bundle, True, tmp_path)
    assert all(c.timing_cache_path is None for _, c in loaders.values())
    (tmp_path / "timing.cache").write_bytes(b"cache")
    _, loaders = _loaders(bundle, True, tmp_path)
    assert all(c.timing_cache_path == str(tmp_path / "timing.cache") for _, c in loaders.values())


def test_engine_precision_of_an_fp16_bundle_is_its_own_types():
    assert engines.engine_precision("fp16", True) == engines.engine_precision("fp16", False) == "fp16-strongly-typed"


def test_loaders_do_not_import_tensorrt(fp32_bundle):
    if HAS_TRT:
        pytest.skip("tensorrt is installed: whether assembling imports it cannot be seen")
    _loaders(open_bundle(fp32_bundle), True)
    assert "tensorrt" not in sys.modules


@pytest.mark.parametrize("argv, message", [
    (["--provider", "cpu"], "--provider and --engine-dir go with --check BUNDLE"),
    (["--golden", "b", "--check", "b"], "--golden and --check are two commands"),
    (["--golden", "b", "--provider", "cpu"], "--golden runs ONNX Runtime's CPU provider"),
    (["--check", "b", "--bundle", "b"], "take the bundle as their argument"),
])
def test_flag_mixups_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
