"""FP16 bundles (qk-export --fp16) in the runtimes: the Python runtime edits with them like with the
FP32 bundle, the C++ runtime opens and runs them with the same result as Python, and qk-build
builds them strongly typed and saves and checks their golden outputs (tiny preset)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qk_runtime import EditSession
from qk_runtime.bundle import open_bundle


@pytest.fixture(scope="module")
def fp16_bundle(tiny_checkpoint, tmp_path_factory, torch_one_thread):
    pytest.importorskip("torch", reason="torch is not installed (pip install 'query-kontext[export]'): cannot export a test bundle")
    from qk_export.bundle import export_bundle

    with torch_one_thread():
        return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("fp16") / "fp16", fp16=True, sparse_attn="region")


def test_python_runtime_edits_with_an_fp16_bundle_as_with_fp32(fp16_bundle, region_bundle, source_image):
    b = open_bundle(fp16_bundle)
    assert b.precision == "fp16"
    outs = {}
    for name, path in (("fp16", fp16_bundle), ("fp32", region_bundle)):
        with EditSession(path, backend="ort-cpu", threads=1) as s:
            outs[name] = s.edit(source_image, "make the red square blue", box=(4, 6, 20, 22), seed=3, sparse="region")
    diff = np.abs(outs["fp16"].image.astype(int) - outs["fp32"].image.astype(int))
    assert diff.max() <= 2, f"FP16 and FP32 edits differ by up to {diff.max()} levels"
    assert np.abs(outs["fp16"].gate - outs["fp32"].gate).max() < 1e-2


def test_openvino_runs_an_fp16_bundle(fp16_bundle, source_image):
    pytest.importorskip("openvino", reason="openvino not installed")
    with EditSession(fp16_bundle, backend="ov-cpu", threads=1) as s:
        r = s.edit(source_image, "make the red square blue", box=(4, 6, 20, 22), seed=3)
    assert r.image.shape == source_image.shape


def test_cpp_runtime_opens_and_runs_an_fp16_bundle_like_python(fp16_bundle, source_image, tmp_path):
    from PIL import Image

    from cpp_helpers import BUILD, THREADS, probe

    if not (BUILD / "qk_cpp_probe").is_file():
        pytest.skip(f"the C++ runtime is not built in {BUILD} (runtime/cpp/build.sh)")
    info = probe(BUILD, "bundle", fp16_bundle)
    py = open_bundle(fp16_bundle)
    assert info["precision"] == "fp16" and info["sha"] == py.sha
    Image.fromarray(source_image).save(tmp_path / "in.png")
    jobs = [{"image": str(tmp_path / "in.png"), "instruction": "make the red square blue", "box": [4, 6, 20, 22],
             "seed": 3, "steps": 0, "out": str(tmp_path / "cpp.png"), "sparse": "region"}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    probe(BUILD, "edits", fp16_bundle, tmp_path / "jobs.json", THREADS)
    with EditSession(fp16_bundle, backend="ort-cpu", threads=THREADS) as s:
        want = s.edit(str(tmp_path / "in.png"), "make the red square blue", box=(4, 6, 20, 22), seed=3, sparse="region")
    got = np.asarray(Image.open(tmp_path / "cpp.png"))
    assert np.abs(got.astype(int) - want.image.astype(int)).max() <= 1


def test_qk_build_builds_fp16_bundles_strongly_typed_and_checks_them(fp16_bundle, tmp_path, capsys):
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    import shutil

    from qk_runtime import engines
    from qk_runtime.build import graph_loaders, main

    bundle = open_bundle(fp16_bundle)
    precision = engines.engine_precision(bundle.precision, True)
    for info in bundle.graphs.values():
        network, config = graph_loaders(info, precision)
        assert network.strongly_typed and not config.fp16  # the graph's own float16 / float32 types decide
    copy = shutil.copytree(fp16_bundle, tmp_path / "fp16")
    assert main(["--golden", str(copy)]) == 0
    assert main(["--check", str(copy), "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "decoder         fp16" in out and "MISMATCH" not in out
