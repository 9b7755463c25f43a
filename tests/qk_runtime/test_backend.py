"""The backend interface, choosing a backend, and refusing unavailable ones (never a fallback)."""
import importlib.util
import re

import numpy as np
import pytest

from qk_runtime.backend import BACKENDS, choose, cpu_has_int8_dot, make_backend
from qk_runtime.bundle import open_bundle
from qk_runtime.errors import BackendUnavailable

HAS_OV = importlib.util.find_spec("openvino") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _random_feeds(graph, rng):
    feeds = {}
    for t in graph.inputs:
        shape = [d if isinstance(d, int) else graph.profile[t.name]["opt"][i] for i, d in enumerate(t.shape)]
        if t.dtype == "int64":
            high = 4 if t.name in ("input_ids", "active") else 2
            feeds[t.name] = rng.integers(0, high, shape).astype(np.int64)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    if "attention_mask" in feeds:
        feeds["attention_mask"][:, 0] = 1
    if "active" in feeds:
        feeds["active"] = np.repeat(np.arange(feeds["active"].shape[1], dtype=np.int64)[None], shape[0], 0)
    if "sigma" in feeds:
        feeds["sigma"] = np.abs(feeds["sigma"]) + 0.1
    return feeds


def test_backend_is_a_context_manager_that_runs_every_graph(fp32_bundle):
    b = open_bundle(fp32_bundle)
    rng = np.random.default_rng(0)
    with make_backend("ort-cpu", b, threads=1) as be:
        assert be.is_active
        for name, g in b.graphs.items():
            out = be.infer(name, _random_feeds(g, rng))
            assert set(out) == set(g.output_names)
            assert all(np.isfinite(v).all() for v in out.values())
    assert not be.is_active


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_and_onnx_runtime_agree_graph_by_graph(region_bundle):
    b = open_bundle(region_bundle)
    rng = np.random.default_rng(1)
    with make_backend("ort-cpu", b, threads=1) as ort_be, make_backend("ov-cpu", b, threads=1) as ov_be:
        for name, g in b.graphs.items():
            feeds = _random_feeds(g, rng)
            a, c = ort_be.infer(name, feeds), ov_be.infer(name, feeds)
            for k in a:
                np.testing.assert_allclose(c[k], a[k], rtol=1e-4, atol=1e-4, err_msg=f"{name}.{k}")


def test_auto_says_what_it_picked_and_why(fp32_bundle):
    choice = choose("auto", open_bundle(fp32_bundle))
    assert choice.name in BACKENDS and choice.reason
    if not HAS_TRT and "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert choice.name == ("ov-cpu" if HAS_OV else "ort-cpu")


def test_int8_dot_product_flags_are_read_from_cpuinfo(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd asimddp\n")
    assert not cpu_has_int8_dot(str(avx2))
    assert cpu_has_int8_dot(str(vnni)) and cpu_has_int8_dot(str(arm))
    assert cpu_has_int8_dot(str(tmp_path / "missing"))  # unknown: no reason to avoid OpenVINO


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_auto_runs_int8_on_onnx_runtime_where_the_cpu_lacks_int8_dot_products():
    import onnxruntime
    from pathlib import Path

    int8_bundle = Path(__file__).resolve().parents[2] / "engines" / "default" / "int8"

    if HAS_TRT or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU backend is available")
    choice = choose("auto", open_bundle(int8_bundle))
    assert choice.name == ("ov-cpu" if cpu_has_int8_dot() else "ort-cpu")
    if choice.name == "ort-cpu":
        assert "VNNI" in choice.reason


def test_auto_without_openvino_suggests_it_only_where_auto_would_use_it(fp32_bundle, monkeypatch):
    import onnxruntime
    from pathlib import Path

    import qk_runtime.backend as backend

    if HAS_TRT or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU backend is available")
    real = backend._installed
    monkeypatch.setattr(backend, "_installed", lambda name: False if name == "openvino" else real(name))
    int8 = open_bundle(Path(__file__).resolve().parents[2] / "engines" / "default" / "int8")
    for has_dot, bundle in ((False, int8), (True, int8), (False, open_bundle(fp32_bundle))):
        monkeypatch.setattr(backend, "cpu_has_int8_dot", lambda *a, _v=has_dot: _v)
        choice = backend.choose("auto", bundle)
        assert choice.name == "ort-cpu"
        suggests = "pip install openvino" in choice.reason
        assert suggests == (has_dot or bundle.precision == "fp32"), choice.reason  # never where it would not help


def test_unknown_backend_lists_the_choices(fp32_bundle):
    with pytest.raises(BackendUnavailable, match="unknown backend 'cuda'.*ort-cpu"):
        choose("cuda", open_bundle(fp32_bundle))


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_tensorrt_requested_without_tensorrt_is_an_error_with_the_fix(fp32_bundle):
    for name in ("tensorrt", "trt"):
        with pytest.raises(BackendUnavailable, match=r"pip install 'query-kontext\[trt\]'"):
            choose(name, open_bundle(fp32_bundle))


def test_ort_gpu_providers_requested_without_them_are_errors(fp32_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    for name in ("ort-cuda", "ort-trt"):
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            make_backend(name, open_bundle(fp32_bundle))


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt not installed")
def test_tensorrt_backend_refuses_missing_engines(fp32_bundle, tmp_path):  # pragma: no cover - GPU only
    from qk_runtime.backend_tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailable, match="qk-build --bundle"):
        TensorRTBackend(open_bundle(fp32_bundle), engine_dir=tmp_path / "none").activate()


def test_every_registered_backend_names_a_backend_class_and_its_fix(fp32_bundle, monkeypatch):
    """The registry is what make_backend and availability read: each entry's class exists (its
    module imports without the library it drives) and a missing library is named with the fix."""
    import importlib

    from qk_runtime import backend as backend_module
    from qk_runtime.backend import REGISTRY, Backend, availability

    monkeypatch.setattr(backend_module, "_installed", lambda module: False)
    for name, spec in REGISTRY.items():
        cls = getattr(importlib.import_module(f"qk_runtime.{spec.module}"), spec.cls)
        assert issubclass(cls, Backend)
        with pytest.raises(BackendUnavailable, match=f"backend {name} needs {spec.label}.*{re.escape(spec.install)}"):
            availability(name, open_bundle(fp32_bundle))


def _config_entry(session, key: str) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(key)
    except Exception:  # noqa: BLE001 - onnxruntime raises when the entry was never set
        return None


def test_weight_only_graphs_are_opened_with_qdq_fusion_off(weight_only_bundle):
    """Every graph the manifest lists as weight-only (here all five INT8 graphs) runs without ONNX
    Runtime's Q/DQ fusion, the float graphs with it; the denoising loop's graphs still spin when asked."""
    b = open_bundle(weight_only_bundle)
    assert b.weight_only == {"text_encoder", "gateway", "cmg", "decoder", "decoder_region"}
    with make_backend("ort-cpu", b, threads=1, spinning=True) as be:
        for name in b.graphs:
            session = be._session(name)
            assert (_config_entry(session, "session.disable_quant_qdq") == "1") == (name in b.weight_only), name
            assert (_config_entry(session, "session.intra_op.allow_spinning") == "1") == (name in ("decoder", "decoder_region")), name


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_runs_weight_only_graphs_with_float_activations_as_onnx_runtime(weight_only_bundle):
    """OpenVINO quantizes the activations of a MatMul with int8 weights on the fly unless told not
    to (here 2.1e-3 of the tiny text encoder's largest output apart from ONNX Runtime, 2.4e-5 of the
    decoder's): with it off, weight-only graphs agree with ONNX Runtime's fusion-off sessions to FP32
    accuracy (2e-7)."""
    b = open_bundle(weight_only_bundle)
    assert {"text_encoder", "decoder"} <= b.weight_only
    rng = np.random.default_rng(2)
    with make_backend("ort-cpu", b, threads=1) as ort_be, make_backend("ov-cpu", b, threads=1, cache_dir=False) as ov_be:
        for name in ("text_encoder", "decoder"):  # once per edit, and every step
            feeds = _random_feeds(b.graphs[name], rng)
            a, c = ort_be.infer(name, feeds), ov_be.infer(name, feeds)
            for k in a:
                np.testing.assert_allclose(c[k], a[k], rtol=1e-5, atol=1e-5 * float(np.abs(a[k]).max()), err_msg=f"{name}.{k}")
