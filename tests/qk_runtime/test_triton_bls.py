"""The BLS models of qk-triton's repository, run in-process: the same images as EditSession.

Inside Triton, qk_edit / qk_generate run `RepoSession` (the runtime's EditSession with every graph
sent through `infer(model_name, inputs)` as a BLS request). Here `infer` runs ONNX Runtime on the
model files of the written repository, found by model name the way Triton finds them
(REPO/<model>/1/model.onnx). The reference is `EditSession(bundle, backend="ort-cpu")` on the
original bundle. Both use one ONNX Runtime thread and the runtime's session options, so the
tolerance is zero: bit-equal uint8 images (and equal CMG gates).

`model.py` itself is driven through a stand-in for `triton_python_backend_utils` that implements
the documented calls it uses (Tensor, InferenceRequest.exec, InferenceResponse, TritonError,
get_input/output_tensor_by_name). That checks model.py's own code; it is not Triton, which was not
run here.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qk_runtime import EditSession
from qk_runtime.errors import InputError
from qk_runtime.triton import pbtxt
from qk_runtime.triton.bls import NetworkCallError, RepoSession, TritonBls, open_model_dir, run_request
from qk_runtime.triton.repo import write_repository

DEFAULT_INT8 = Path(__file__).resolve().parents[2] / "engines" / "default" / "int8"
BOX = (6, 8, 18, 20)


class RepoOrt:
    """infer(model_name, inputs) on the repository's model files with ONNX Runtime (one thread,
    the runtime's ORT backend options); records which models were called."""

    def __init__(self, repo: Path):
        import onnxruntime as ort

        self.repo, self.sessions, self.calls = repo, {}, []
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._ort, self._opts = ort, opts

    def __call__(self, model: str, inputs: dict) -> dict:
        self.calls.append(model)
        sess = self.sessions.get(model)
        if sess is None:
            path = self.repo / model / "1" / "model.onnx"
            path = path / "model.onnx" if path.is_dir() else path
            sess = self.sessions[model] = self._ort.InferenceSession(str(path), self._opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, inputs)))


def _quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def fp32_repo(tmp_path_factory, fp32_bundle) -> Path:
    return write_repository(fp32_bundle, tmp_path_factory.mktemp("triton") / "repo", log=_quiet)


@pytest.fixture(scope="module")
def reference(fp32_bundle):
    with EditSession(fp32_bundle, backend="ort-cpu", threads=1) as s:
        yield s


def _session(repo: Path, mode: str = "edit") -> tuple[RepoSession, RepoOrt]:
    infer = RepoOrt(repo)
    return RepoSession(open_model_dir(repo / f"qk_{mode}" / "1"), infer), infer


def _text(s: str) -> np.ndarray:
    return np.array([s.encode()], dtype=object)  # a TYPE_STRING tensor as Triton hands it over


def _edit_tensors(image, instruction, box=None, steps=None, seed=None) -> dict:
    t = {"image": image, "instruction": _text(instruction)}
    if box is not None:
        t["box"] = np.array(box, np.int32)
    if steps is not None:
        t["steps"] = np.array([steps], np.int32)
    if seed is not None:
        t["seed"] = np.array([seed], np.uint64)
    return t


# --------------------------------------------------------------------------- parity with EditSession


def test_edit_with_box_is_bit_equal(fp32_repo, reference, source_image):
    session, infer = _session(fp32_repo)
    out = run_request(session, "edit", _edit_tensors(source_image, "make the red square blue", BOX, seed=5))
    ref = reference.edit(source_image, "make the red square blue", box=BOX, seed=5)
    assert out["edited"].dtype == np.uint8 and out["edited"].shape == source_image.shape
    assert np.array_equal(out["edited"], ref.image)  # tolerance 0
    assert np.array_equal(out["gate"], ref.gate)
    assert set(infer.calls) == {"text_encoder", "image_encoder", "gateway", "cmg", "decoder_cond", "decoder", "image_decoder"}
    assert infer.calls.count("decoder") == reference.bundle.sampler.steps and infer.calls.count("decoder_cond") == 1
    assert reference.bundle.composite.decodes_source and infer.calls.count("image_decoder") == 2  # the output, the source


def test_edit_without_box_any_size_is_bit_equal(fp32_repo, reference, source_image):
    from PIL import Image

    image = np.asarray(Image.fromarray(source_image).resize((48, 40)))  # resized to the model's side and back
    session, _ = _session(fp32_repo)
    out = run_request(session, "edit", _edit_tensors(image, "make the red square green", steps=7, seed=2**64 - 1))
    ref = reference.edit(image, "make the red square green", steps=7, seed=2**64 - 1)
    assert out["edited"].shape == (40, 48, 3)
    assert np.array_equal(out["edited"], ref.image)


def test_generate_is_bit_equal(fp32_repo, reference):
    session, infer = _session(fp32_repo, "generate")
    tensors = {"prompt": _text("a large red circle at the top left"), "seed": np.array([11], np.uint64),
               "guidance": np.array([2.5], np.float32)}
    out = run_request(session, "generate", tensors)
    ref = reference.generate("a large red circle at the top left", seed=11, guidance=2.5)
    assert np.array_equal(out["image"], ref.image)
    assert "cmg" not in infer.calls and "image_encoder" not in infer.calls


def test_region_decoder_edit_is_bit_equal(tmp_path, region_bundle, source_image):
    repo = write_repository(region_bundle, tmp_path / "repo", log=_quiet)
    session, infer = _session(repo)
    out = run_request(session, "edit", _edit_tensors(source_image, "make the red square blue", BOX, seed=1))
    with EditSession(region_bundle, backend="ort-cpu", threads=1) as ref_session:
        ref = ref_session.edit(source_image, "make the red square blue", box=BOX, seed=1)
    assert "decoder_region" in infer.calls and "decoder" not in infer.calls
    assert np.array_equal(out["edited"], ref.image)


class StepSizes:
    """RepoOrt, keeping the sigma and step_size of every decoder step sent through infer()."""

    def __init__(self, inner: RepoOrt):
        self.inner, self.steps = inner, []

    def __call__(self, model: str, inputs: dict) -> dict:
        if model in ("decoder", "decoder_region"):
            self.steps.append((float(inputs["sigma"][0]), inputs["step_size"].tolist()))
        return self.inner(model, inputs)


def test_few_step_bundle_at_four_steps_is_bit_equal(tmp_path, few_step_bundle, source_image):
    """A format-5 bundle: the decoders' models take step_size (in config.pbtxt, a per-row scalar
    with Triton batching), the BLS loop feeds sigma - sigma_next at 4 steps, and the edit (region
    decoder) and the generation equal EditSession's bit for bit."""
    repo = write_repository(few_step_bundle, tmp_path / "repo", max_batch=3, log=_quiet)
    for graph in ("decoder", "decoder_region"):
        inputs = {t["name"]: t for t in pbtxt.loads((repo / graph / "config.pbtxt").read_text())["input"]}
        assert inputs["step_size"]["dims"] == [1] and inputs["step_size"]["reshape"] == {"shape": []}
    infer = StepSizes(RepoOrt(repo))
    session = RepoSession(open_model_dir(repo / "qk_edit" / "1"), infer)
    assert session.bundle.few_step is not None and session.bundle.few_step.steps == (1, 2, 4)
    out = run_request(session, "edit", _edit_tensors(source_image, "make the red square blue", BOX, steps=4, seed=3))
    assert [(s, d[0]) for s, d in infer.steps] == [(1.0, 0.25), (0.75, 0.25), (0.5, 0.25), (0.25, 0.25)]
    gen_session = RepoSession(open_model_dir(repo / "qk_generate" / "1"), infer)
    gen = run_request(gen_session, "generate", {"prompt": _text("a red circle at the top left"),
                                                "steps": np.array([4], np.int32), "seed": np.array([2], np.uint64)})
    with EditSession(few_step_bundle, backend="ort-cpu", threads=1) as ref:
        want = ref.edit(source_image, "make the red square blue", box=BOX, steps=4, seed=3)
        assert np.array_equal(out["edited"], want.image) and np.array_equal(out["gate"], want.gate)
        assert np.array_equal(gen["image"], ref.generate("a red circle at the top left", steps=4, seed=2).image)


def test_shipped_int8_bundle_edit_is_bit_equal(tmp_path):
    if not (DEFAULT_INT8 / "manifest.json").is_file():
        pytest.skip(f"the shipped default bundle {DEFAULT_INT8} is missing")
    repo = write_repository(DEFAULT_INT8, tmp_path / "repo", log=_quiet)
    image = np.full((64, 64, 3), 235, np.uint8)
    image[8:28, 8:28] = (220, 30, 30)
    session, _ = _session(repo)
    out = run_request(session, "edit", _edit_tensors(image, "make the red square blue", (5, 5, 30, 30), steps=3, seed=7))
    # Triton's ONNX Runtime backend cannot switch off Q/DQ fusion for the weight-only INT8 text
    # encoder (EditSession does: qk_runtime.contract.WEIGHT_ONLY_INT8_GRAPHS), so the reference
    # session runs it fused too; the loop itself must then agree bit for bit.
    with EditSession(DEFAULT_INT8, backend="ort-cpu", threads=1, weight_only_fusion=True) as ref_session:
        ref = ref_session.edit(image, "make the red square blue", box=(5, 5, 30, 30), steps=3, seed=7)
    assert np.array_equal(out["edited"], ref.image)


def test_repo_session_is_an_edit_session_on_the_repository(fp32_repo, reference):
    """RepoSession is EditSession given a ready backend: the same state, the repository's backend."""
    session, _ = _session(fp32_repo)
    assert set(vars(session)) == set(vars(reference))
    assert session.backend_name == "triton-bls" and session.backend.is_active


# --------------------------------------------------------------------------- requests the runtime refuses


@pytest.mark.parametrize("change, match", [
    (lambda t: t.pop("image"), "'image' is missing"),
    (lambda t: t.update(image=t["image"].astype(np.float32)), "UINT8"),
    (lambda t: t.update(instruction=np.array([b"\xff\xfe"], object)), "not UTF-8"),
    (lambda t: t.update(instruction=_text("   ")), "blank|empty"),
    (lambda t: t.update(box=np.array([1.0, 2, 3, 4])), "4 integers"),
    (lambda t: t.update(box=np.array([20, 2, 3, 4], np.int32)), "x0"),
    (lambda t: t.update(steps=np.array([2, 3], np.int32)), "exactly one value"),
    (lambda t: t.update(steps=np.array([0], np.int32)), "steps"),
])
def test_bad_request_tensors(fp32_repo, source_image, change, match):
    session, _ = _session(fp32_repo)
    tensors = _edit_tensors(source_image, "make the red square blue", BOX)
    change(tensors)
    with pytest.raises(InputError, match=match):
        run_request(session, "edit", tensors)


def test_a_network_answering_without_an_output_is_named(fp32_repo, source_image):
    session = RepoSession(open_model_dir(fp32_repo / "qk_edit" / "1"), lambda model, inputs: {})
    with pytest.raises(NetworkCallError, match="'image_encoder' answered without"):
        run_request(session, "edit", _edit_tensors(source_image, "make it blue"))


# --------------------------------------------------------------------------- model.py through the python-backend API


def stand_in_pb_utils(infer) -> types.ModuleType:
    """The calls of triton_python_backend_utils that model.py and TritonBls use, as the python
    backend documents them; BLS requests go to `infer`."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            self._message, self.code = message, code

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

        def output_tensors(self):
            return self._tensors

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None):
            self.model_name, self.requested, self.inputs = model_name, list(requested_output_names), list(inputs)
            self.preferred_memory = preferred_memory

        def exec(self):
            assert self.preferred_memory.kind == pb.TRITONSERVER_MEMORY_CPU
            try:
                out = infer(self.model_name, {t.name(): t.as_numpy() for t in self.inputs})
            except Exception as exc:
                return InferenceResponse([], TritonError(str(exc)))
            return InferenceResponse([Tensor(n, out[n]) for n in self.requested])

    class PreferredMemory:
        def __init__(self, kind, device_id):
            self.kind, self.device_id = kind, device_id

    class TritonModelException(Exception):
        pass

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = Tensor, TritonError, InferenceResponse, InferenceRequest
    pb.PreferredMemory, pb.TritonModelException, pb.TRITONSERVER_MEMORY_CPU = PreferredMemory, TritonModelException, 0
    pb.get_input_tensor_by_name = lambda request, name: next((t for t in request.inputs if t.name() == name), None)
    pb.get_output_tensor_by_name = lambda response, name: next((t for t in response.output_tensors() if t.name() == name), None)
    return pb


def _model_config_json(config_path: Path) -> str:
    """config.pbtxt as the JSON Triton hands `initialize` (map fields as objects)."""
    cfg = pbtxt.loads(config_path.read_text())
    cfg["parameters"] = {p["key"]: p["value"] for p in cfg.get("parameters", [])}
    return json.dumps(cfg)


def _load_model_py(repo: Path, model: str, infer, monkeypatch):
    pb = stand_in_pb_utils(infer)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"_qk_triton_{model}", repo / model / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": _model_config_json(repo / model / "config.pbtxt"), "model_instance_kind": "CPU",
                         "model_instance_device_id": "0", "model_repository": str(repo / model),
                         "model_version": "1", "model_name": model})
    return pb, instance


def test_model_py_edit_requests(fp32_repo, reference, source_image, monkeypatch):
    infer = RepoOrt(fp32_repo)
    pb, model = _load_model_py(fp32_repo, "qk_edit", infer, monkeypatch)
    good = pb.InferenceRequest("qk_edit", ["edited", "gate"], [
        pb.Tensor("image", source_image), pb.Tensor("instruction", _text("make the red square blue")),
        pb.Tensor("box", np.array(BOX, np.int32)), pb.Tensor("seed", np.array([9], np.uint64))])
    bad = pb.InferenceRequest("qk_edit", ["edited"], [pb.Tensor("image", source_image), pb.Tensor("instruction", _text(""))])
    responses = model.execute([good, bad])
    assert len(responses) == 2
    assert not responses[0].has_error()
    ref = reference.edit(source_image, "make the red square blue", box=BOX, seed=9)
    assert np.array_equal(pb.get_output_tensor_by_name(responses[0], "edited").as_numpy(), ref.image)
    assert np.array_equal(pb.get_output_tensor_by_name(responses[0], "gate").as_numpy(), ref.gate)
    assert responses[1].has_error() and responses[1].error().code == "INVALID_ARG"
    assert "instruction" in responses[1].error().message()
    model.finalize()


def test_model_py_generate_and_a_failing_network(fp32_repo, reference, monkeypatch):
    infer = RepoOrt(fp32_repo)
    pb, model = _load_model_py(fp32_repo, "qk_generate", infer, monkeypatch)
    [response] = model.execute([pb.InferenceRequest("qk_generate", ["image"], [pb.Tensor("prompt", _text("a blue square"))])])
    assert np.array_equal(pb.get_output_tensor_by_name(response, "image").as_numpy(), reference.generate("a blue square").image)

    def broken(name, inputs):
        raise RuntimeError("decoder: CUDA out of memory")

    _, failing = _load_model_py(fp32_repo, "qk_generate", lambda m, i: broken(m, i) if m == "decoder" else infer(m, i), monkeypatch)
    [response] = failing.execute([pb.InferenceRequest("qk_generate", ["image"], [pb.Tensor("prompt", _text("a blue square"))])])
    assert response.has_error() and response.error().code == "INTERNAL"
    assert "Triton model 'decoder' failed: decoder: CUDA out of memory" in response.error().message()


def test_triton_bls_sends_batched_scalars_as_columns(fp32_repo):
    seen = {}

    def infer(model, inputs):
        seen.update({k: v.shape for k, v in inputs.items()})
        return {"velocity": np.zeros((3, 1), np.float32)}

    bls = TritonBls(stand_in_pb_utils(infer), {"decoder": ("velocity",)}, batched=True)
    bls("decoder", {"sigma": np.ones(3, np.float32), "x": np.ones((3, 2), np.float32)})
    assert seen == {"sigma": (3, 1), "x": (3, 2)}


def test_bls_side_imports_no_torch_nor_onnxruntime():
    """What model.py imports inside Triton's python backend: the runtime's light dependencies only."""
    import subprocess

    code = ("import sys, qk_runtime.triton.bls, qk_runtime.triton.repo\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'qk_train', 'qk_export', 'onnx', 'onnxruntime', 'openvino', 'tensorrt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
