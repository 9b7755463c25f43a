"""qk-triton's model repository: layout, config.pbtxt, file hashes, and its refusals.

Triton itself is not run here (no GPU, no container). The configs are read back with the
writer's own pbtxt reader and compared with what ONNX Runtime says the repository's model files
take; where the `tritonclient` package is installed they are also parsed with Triton's own
`model_config.proto` (its `model_config_pb2`), which catches any field or enum Triton would reject.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from qk_runtime.bundle import open_bundle, sha256_file
from qk_runtime.engines import cache_key, write_engines_json
from qk_runtime.triton import pbtxt
from qk_runtime.triton.bls import open_model_dir, request_shapes
from qk_runtime.triton.repo import RepoError, main, write_repository

DEFAULT_INT8 = Path(__file__).resolve().parents[2] / "engines" / "default" / "int8"
ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}


def _quiet(*_args, **_kwargs):
    pass


def write(bundle, out, **kwargs) -> Path:
    return write_repository(bundle, out, log=_quiet, **kwargs)


def configs(repo: Path) -> dict[str, dict]:
    return {p.parent.name: pbtxt.loads(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def model_file(repo: Path, model: str, name: str = "model.onnx") -> Path:
    path = repo / model / "1" / name
    return path / name if path.is_dir() else path


def triton_model_config_pb2():
    """Triton's model_config.proto as tritonclient ships it, loaded from its file so that the
    grpc client (and grpcio) need not be importable; None without tritonclient."""
    try:
        spec = importlib.util.find_spec("tritonclient")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "grpc" / "model_config_pb2.py"
        if path.is_file():
            mspec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
            return module
    return None


@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory) -> Path:
    if not (DEFAULT_INT8 / "manifest.json").is_file():
        pytest.skip(f"the shipped default bundle {DEFAULT_INT8} is missing")
    return write(DEFAULT_INT8, tmp_path_factory.mktemp("triton") / "repo")


# --------------------------------------------------------------------------- layout


def test_every_network_is_a_model_with_its_file(int8_repo):
    bundle = open_bundle(DEFAULT_INT8, verify=False)
    cfgs = configs(int8_repo)
    assert set(cfgs) == set(bundle.graphs) | {"qk_edit", "qk_generate"}
    for graph, info in bundle.graphs.items():
        cfg = cfgs[graph]
        assert cfg["name"] == graph and cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 0
        assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_AUTO"}]
        path = model_file(int8_repo, graph)
        assert path.is_file() and not path.is_symlink()
        assert sha256_file(path) == bundle.files[info.path.name]  # the bundle's bytes, checked
        # the config against the manifest: names, Triton types, -1 for the dynamic axes
        for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
            want = [{"name": t.name, "data_type": {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}[t.dtype],
                     "dims": [-1 if isinstance(d, str) else d for d in t.shape]} for t in tensors]
            assert cfg[kind] == want, (graph, kind)


def test_configs_match_what_the_model_files_take(int8_repo):
    """Independent of the manifest: ONNX Runtime's view of each model file in the repository."""
    import onnxruntime as ort

    for model, cfg in configs(int8_repo).items():
        if cfg.get("backend") == "python":
            continue
        sess = ort.InferenceSession(str(model_file(int8_repo, model)), providers=["CPUExecutionProvider"])
        for kind, args in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
            have = [(a.name, ORT_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape]) for a in args]
            assert have == [(t["name"], t["data_type"], t["dims"]) for t in cfg[kind]], (model, kind)


def test_bls_models(int8_repo):
    cfgs = configs(int8_repo)
    edit, gen = cfgs["qk_edit"], cfgs["qk_generate"]
    for cfg, mode in ((edit, "edit"), (gen, "generate")):
        assert cfg["backend"] == "python" and cfg["max_batch_size"] == 0 and "platform" not in cfg
        assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
        params = {p["key"]: p["value"]["string_value"] for p in cfg["parameters"]}
        assert params["mode"] == mode and params["verify_sha256"] == "true"
        vdir = int8_repo / cfg["name"] / "1"
        model_py = (vdir / "model.py").read_text()
        assert "class TritonPythonModel" in model_py and "pb_utils.InferenceResponse" in model_py
        assert sha256_file(vdir / "tokenizer.json") == open_bundle(DEFAULT_INT8, verify=False).files["tokenizer.json"]
    assert [(t["name"], t["data_type"], t.get("optional", False)) for t in edit["input"]] == [
        ("image", "TYPE_UINT8", False), ("instruction", "TYPE_STRING", False), ("box", "TYPE_INT32", True),
        ("steps", "TYPE_INT32", True), ("seed", "TYPE_UINT64", True), ("text_guidance", "TYPE_FP32", True),
        ("image_guidance", "TYPE_FP32", True)]
    assert [(t["name"], t["dims"]) for t in edit["output"]] == [("edited", [-1, -1, 3]), ("gate", [8, 8])]
    assert [t["name"] for t in gen["input"]] == ["prompt", "steps", "seed", "guidance"]
    assert gen["output"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": [64, 64, 3]}]


def test_bls_manifest_points_at_the_repository_files(int8_repo):
    repo = open_model_dir(int8_repo / "qk_edit" / "1", verify=True)  # re-hashes every model file
    source = open_bundle(DEFAULT_INT8, verify=False)
    assert repo.models == {g: g for g in source.graphs}
    for graph, info in repo.bundle.graphs.items():
        assert info.path.resolve() == model_file(int8_repo, graph).resolve()
        assert info.inputs == source.graphs[graph].inputs and info.outputs == source.graphs[graph].outputs
    triton = repo.bundle.manifest["triton"]
    assert triton["source_bundle_sha"] == source.sha and triton["backend"] == "onnx" and not repo.batched


def test_configs_parse_with_tritons_own_proto(int8_repo):
    pb2 = triton_model_config_pb2()
    if pb2 is None:
        pytest.skip("tritonclient is not installed (pip install tritonclient): Triton's model_config.proto unavailable")
    from google.protobuf import text_format

    for path in sorted(int8_repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), pb2.ModelConfig())
        assert cfg.name == path.parent.name
        mine = pbtxt.loads(path.read_text())
        assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims), t.optional) for t in cfg.input] == [
            (t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in mine["input"]]


def test_region_bundle_keeps_external_data_beside_the_graph(tmp_path, region_bundle):
    """decoder.onnx and decoder_region.onnx keep their weights in decoder.weights: each becomes a
    model.onnx folder (Triton's layout for multi-file ONNX models) holding model.onnx + the weights."""
    import onnxruntime as ort

    repo = write(region_bundle, tmp_path / "repo", copy=True)
    bundle = open_bundle(region_bundle, verify=False)
    for graph in ("decoder", "decoder_region"):
        folder = repo / graph / "1" / "model.onnx"
        assert sorted(p.name for p in folder.iterdir()) == ["decoder.weights", "model.onnx"]
        assert sha256_file(folder / "decoder.weights") == bundle.files["decoder.weights"]
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == list(bundle.graphs[graph].input_names)
    assert open_model_dir(repo / "qk_generate" / "1").bundle.has_region


def test_files_are_hard_links_or_copies(tmp_path, fp32_bundle):
    linked = write(fp32_bundle, tmp_path / "linked")
    copied = write(fp32_bundle, tmp_path / "copied", copy=True)
    src = fp32_bundle / "decoder.onnx"
    assert os.path.samefile(model_file(linked, "decoder"), src)  # same filesystem here
    assert not os.path.samefile(model_file(copied, "decoder"), src)
    assert model_file(copied, "decoder").read_bytes() == src.read_bytes()
    assert not any(p.is_symlink() for p in copied.rglob("*"))


def test_max_batch_gives_triton_the_batch_axis(tmp_path, fp32_bundle):
    repo = write(fp32_bundle, tmp_path / "repo", max_batch=6, instances=2, device="cpu")
    cfg = configs(repo)["decoder"]
    assert cfg["max_batch_size"] == 6 and cfg["dynamic_batching"] == {}
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    dims = {t["name"]: t for t in cfg["input"]}
    d = open_bundle(fp32_bundle).dims
    assert dims["x"]["dims"] == [d.latent_channels, d.latent_size, d.latent_size]
    assert dims["sigma"]["dims"] == [1] and dims["sigma"]["reshape"] == {"shape": []}
    assert open_model_dir(repo / "qk_edit" / "1").batched
    sent = request_shapes({"sigma": np.ones(3, np.float32), "x": np.ones((3, 4, 8, 8), np.float32)}, batched=True)
    assert sent["sigma"].shape == (3, 1) and sent["x"].shape == (3, 4, 8, 8)
    assert configs(repo)["qk_edit"]["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]


def test_pbtxt_round_trip():
    cfg = {"name": "m", "max_batch_size": 0, "dynamic_batching": {},
           "input": [{"name": "x", "data_type": pbtxt.Enum("TYPE_FP32"), "dims": [-1, 3], "optional": True}],
           "parameters": [{"key": "p", "value": {"string_value": 'say "hi"\n\tüñï\\'}}],
           "reshape": {"shape": []}, "scale": 0.5}
    assert pbtxt.loads(pbtxt.dumps(cfg)) == cfg
    # Triton's own spellings: `field: value` messages and repetition instead of a list
    assert pbtxt.loads('input: { name: "a" dims: [ 1 ] }\ninput { name: "b" } # comment\nkind: KIND_GPU') == {
        "input": [{"name": "a", "dims": [1]}, {"name": "b"}], "kind": "KIND_GPU"}
    with pytest.raises(ValueError, match="line 2"):
        pbtxt.loads('name: "a"\ninput { name: "b" ')


# --------------------------------------------------------------------------- TensorRT engines


def _fake_engines(bundle_dir: Path, folder: Path, *, sha: str | None = None) -> Path:
    """An engine folder as qk-build leaves it (engines.json + one .plan per graph). The .plan
    bytes are placeholders: this checks the layout qk-triton makes of them, not TensorRT."""
    bundle = open_bundle(bundle_dir)
    key = cache_key(bundle, precision="fp32-strongly-typed", trt_version="10.9.0", gpu_name="Test GPU", compute_capability="9.0")
    if sha:
        key["bundle_sha"] = sha
    folder.mkdir(parents=True)
    for g in bundle.graphs:
        (folder / f"{g}.plan").write_bytes(f"plan of {g}".encode())
    write_engines_json(folder, key, {g: f"{g}.plan" for g in bundle.graphs}, "qk-build (test)")
    return folder


def test_tensorrt_layout_uses_qk_build_engine_files(tmp_path, bundle_copy):
    engines = _fake_engines(bundle_copy, tmp_path / "engines" / "bundle" / "test-gpu-trt10.9.0")  # the default place
    repo = write(bundle_copy, tmp_path / "repo", backend="tensorrt")
    cfgs = configs(repo)
    for graph in open_bundle(bundle_copy).graphs:
        assert cfgs[graph]["platform"] == "tensorrt_plan"
        assert cfgs[graph]["instance_group"] == [{"count": 1, "kind": "KIND_AUTO"}]
        plan = repo / graph / "1" / "model.plan"
        assert plan.read_bytes() == (engines / f"{graph}.plan").read_bytes()
        assert not (repo / graph / "1" / "model.onnx").exists()
    models = open_model_dir(repo / "qk_edit" / "1", verify=True)
    assert models.bundle.graphs["decoder"].path.name == "model.plan"
    assert models.bundle.manifest["triton"]["engines"]["key"]["tensorrt"] == "10.9.0"


def test_tensorrt_without_engines_says_run_qk_build(tmp_path, bundle_copy):
    with pytest.raises(RepoError, match="qk-build --bundle"):
        write(bundle_copy, tmp_path / "repo", backend="tensorrt")
    other = _fake_engines(bundle_copy, tmp_path / "other", sha="0" * 64)
    with pytest.raises(RepoError, match="built for another bundle.*rebuild them with qk-build"):
        write(bundle_copy, tmp_path / "repo", backend="tensorrt", engines=other)
    assert not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------- refusals


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_damaged_bundle_is_refused_and_nothing_is_left(tmp_path, bundle_copy):
    with open(bundle_copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    out = tmp_path / "out" / "repo"
    with pytest.raises(RepoError, match=r"decoder\.onnx has sha256 .*re-export the bundle"):
        write(bundle_copy, out)
    assert not out.exists() and _leftovers(out.parent, "repo") == []


def test_missing_bundle(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qk-triton: error: ") and "does not exist" in err and "qk-export" in err
    assert not (tmp_path / "repo").exists()


def test_unwritable_out_names_out_not_the_build_folder(tmp_path, fp32_bundle, capsys):
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "repo"  # a file where the folder should be: the build folder cannot be made
    assert main(["--bundle", str(fp32_bundle), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qk-triton: error: cannot write the repository {out}: ") and ".tmp" not in err
    assert (tmp_path / "afile").read_text() == "mine"


def test_existing_out_needs_force_and_must_be_ours(tmp_path, fp32_bundle, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--bundle", str(fp32_bundle), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    with pytest.raises(RepoError, match="not written by qk-triton"):
        write(fp32_bundle, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    ours = tmp_path / "ours"
    assert main(["--bundle", str(fp32_bundle), "--out", str(ours)]) == 0
    (ours / "stale.txt").write_text("old")
    assert main(["--bundle", str(fp32_bundle), "--out", str(ours), "--force", "--instances", "3"]) == 0
    assert not (ours / "stale.txt").exists()
    assert configs(ours)["decoder"]["instance_group"][0]["count"] == 3
    assert _leftovers(tmp_path, "ours") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    write(fp32_bundle, empty)  # an empty folder is fine without --force
    assert (empty / "qk_edit" / "1" / "model.py").is_file()


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch": 2}, "max_batch_size >= 3"),
    ({"backend": "tensorrt", "max_batch": 4}, "must be 0 with --backend tensorrt"),
    ({"instances": 0}, "--instances"),
    ({"device": "tpu"}, "--device"),
    ({"engines": "x"}, "only used with --backend tensorrt"),
])
def test_bad_arguments(tmp_path, fp32_bundle, kwargs, match):
    with pytest.raises(RepoError, match=match):
        write(fp32_bundle, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_out_inside_the_bundle_is_refused(fp32_bundle):
    with pytest.raises(RepoError, match="overlap"):
        write(fp32_bundle, fp32_bundle / "triton")
    assert not (fp32_bundle / "triton").exists()


def test_written_manifest_is_json_with_relative_paths(int8_repo):
    manifest = json.loads((int8_repo / "qk_generate" / "1" / "manifest.json").read_text())
    assert all(not Path(rel).is_absolute() for rel in manifest["files"])
    assert manifest["triton"]["mode"] == "generate"
