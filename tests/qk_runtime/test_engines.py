"""The TensorRT engine cache key and qk-build, as far as they run without TensorRT."""
import importlib.util
import json
from pathlib import Path

import pytest

from qk_runtime import engines
from qk_runtime.bundle import Bundle, GraphInfo, SamplerConfig, files_digest
from qk_runtime.contract import Dims
from qk_runtime.errors import EngineMismatchError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _bundle(path: Path, files=None, precision="int8") -> Bundle:
    """A Bundle object with the fields the key reads (no files needed)."""
    dims = Dims(32, 3, 1, 8, 24, 32, 4, 32)
    profile = {"x": {"min": [1, 3, 32, 32], "opt": [3, 3, 32, 32], "max": [3, 3, 32, 32]}}
    return Bundle(path=path, manifest={}, dims=dims, precision=precision, sparse_attn="none",
                  graphs={"decoder": GraphInfo("decoder", path / "decoder.onnx", (), (), profile)},
                  sampler=SamplerConfig(20, 3.0, 1.5, 0.5), tokenizer_path=path / "tokenizer.json",
                  files=files or {"decoder.onnx": "ab" * 32, "tokenizer.json": "cd" * 32})


def _key(bundle, **over):
    args = dict(precision="int8-qdq-strongly-typed", trt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    args.update(over)
    return engines.cache_key(bundle, **args)


def test_key_covers_bundle_precision_profiles_trt_and_gpu(tmp_path):
    b = _bundle(tmp_path / "b")
    key = _key(b)
    assert set(key) == set(engines.KEY_FIELDS)
    assert key["bundle_sha"] == files_digest(b.files)
    assert key["profiles"]["decoder"]["x"]["max"] == [3, 3, 32, 32]
    changed = _bundle(tmp_path / "b", files={"decoder.onnx": "ef" * 32, "tokenizer.json": "cd" * 32})
    assert _key(changed)["bundle_sha"] != key["bundle_sha"]
    engines.check_key(json.loads(json.dumps(key)), key, bundle_path=b.path, engine_dir=tmp_path / "e")  # equal: no error


@pytest.mark.parametrize("field, value", [
    ("tensorrt", "11.0.0"), ("gpu", "NVIDIA H200"), ("compute_capability", "8.9"), ("precision", "fp16"),
])
def test_mismatch_names_the_field_and_the_rebuild_command(tmp_path, field, value):
    b = _bundle(tmp_path / "my bundle")
    recorded = _key(b, **{{"tensorrt": "trt_version", "gpu": "gpu_name"}.get(field, field): value})
    with pytest.raises(EngineMismatchError) as err:
        engines.check_key(recorded, _key(b), bundle_path=b.path, engine_dir=tmp_path / "eng")
    msg = str(err.value)
    assert f"{field}: built for {value}" in msg
    assert f"qk-build --bundle '{b.path}' --out {tmp_path / 'eng'}" in msg


def test_changed_bundle_or_profile_is_a_mismatch(tmp_path):
    b = _bundle(tmp_path / "b")
    recorded = _key(b)
    recorded["profiles"]["decoder"]["x"]["max"] = [2, 3, 32, 32]
    with pytest.raises(EngineMismatchError, match="profiles"):
        engines.check_key(recorded, _key(b), bundle_path=b.path, engine_dir=tmp_path)
    with pytest.raises(EngineMismatchError, match="bundle_sha"):
        engines.check_key({**_key(b), "bundle_sha": "0" * 64}, _key(b), bundle_path=b.path, engine_dir=tmp_path)


def test_engine_folder_layout(tmp_path):
    shipped = tmp_path / "repo" / "engines" / "default" / "int8"
    assert engines.default_engine_dir(shipped, "NVIDIA H100 80GB HBM3", "10.9.0") == \
        tmp_path / "repo" / "engines" / "default-int8" / "nvidia-h100-80gb-hbm3-trt10.9.0"
    other = tmp_path / "elsewhere" / "mybundle"
    assert engines.default_engine_dir(other, "RTX 4090", "10.9.0") == tmp_path / "elsewhere" / "engines" / "mybundle" / "rtx-4090-trt10.9.0"


def test_engine_precision_rules():
    assert engines.engine_precision("int8", True) == "int8-qdq-strongly-typed"
    assert engines.engine_precision("fp32", True) == "fp16"
    assert engines.engine_precision("fp32", False) == "fp32-strongly-typed"  # TensorRT 11: no FP16 flag


def test_engines_json_round_trip_and_refusal(tmp_path):
    b = _bundle(tmp_path / "b")
    engines.write_engines_json(tmp_path, _key(b), {"decoder": "decoder.plan"}, "qk-build ...")
    data = engines.read_engines_json(tmp_path)
    assert data["engines"] == {"decoder": "decoder.plan"} and data["key"] == _key(b)
    (tmp_path / engines.ENGINES_FILE).write_text("{not json")
    with pytest.raises(EngineMismatchError, match="rebuild"):
        engines.read_engines_json(tmp_path)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-TensorRT message cannot be checked")
def test_qk_build_without_tensorrt_exits_2_with_the_fix(capsys, tmp_path):
    from qk_runtime.build import main

    assert main(["--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "TensorRT is not installed: pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU" in err


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt not installed")
def test_qk_build_builds_engines_that_the_backend_loads(tmp_path, fp32_bundle):  # pragma: no cover - GPU only
    from qk_runtime.backend_tensorrt import TensorRTBackend
    from qk_runtime.build import build_engines
    from qk_runtime.bundle import open_bundle

    out = build_engines(fp32_bundle, tmp_path / "engines")
    assert (out / engines.ENGINES_FILE).is_file()
    with TensorRTBackend(open_bundle(fp32_bundle), engine_dir=out) as be:
        assert be.is_active
