"""Parity: the C++ runtime's edits equal the Python runtime's (qk_runtime.EditSession on the ONNX
Runtime CPU backend) within 1/255 per pixel, on 20 ShapeWorld edits, for FP32, INT8 and region
bundles. Both sides run ONNX Runtime on one thread, so in practice the pixels are identical."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cpp_helpers import THREADS, probe

TOLERANCE = 1  # uint8 levels


def _run_both(cpp_build, bundle, edits, tmp_path, sparse):
    from qk_runtime import EditSession

    jobs = [dict(e, out=str(tmp_path / f"cpp{i:02d}.png"), sparse=sparse) for i, e in enumerate(edits)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    cpp = probe(cpp_build, "edits", bundle, tmp_path / "jobs.json", THREADS)["results"]
    rows = []
    with EditSession(bundle, backend="ort-cpu", threads=THREADS) as s:
        for job, c in zip(jobs, cpp):
            box = tuple(job["box"]) if job["box"] is not None else None
            py = s.edit(job["image"], job["instruction"], box=box, seed=job["seed"], sparse=sparse)
            got = np.asarray(Image.open(job["out"]))
            src = np.asarray(Image.open(job["image"]))
            rows.append({
                "diff": int(np.abs(got.astype(int) - py.image.astype(int)).max()),
                "changed": int((py.image != src).any(-1).sum()),
                "gate_diff": float(np.abs(np.asarray(c["gate"], np.float32) - py.gate.reshape(-1)).max()),
                "active": (c["active_tokens"], py.active_tokens),
                "keys": set(c["timings"]) - {"decoder_steps"},
                "py_keys": set(py.timings) - {"decoder_steps"},
            })
    return rows


def _check(rows, *, min_changed=1):
    worst = max(r["diff"] for r in rows)
    assert worst <= TOLERANCE, f"C++ and Python differ by up to {worst} levels: {[r['diff'] for r in rows]}"
    # the parity is not vacuous: the edits changed pixels (the gate opened somewhere)
    assert sum(r["changed"] for r in rows) >= min_changed, "no edit changed any pixel: the comparison proves nothing"
    for r in rows:
        assert r["gate_diff"] < 1e-5
        assert r["keys"] == r["py_keys"], f"timing keys differ: {r['keys'] ^ r['py_keys']}"
    return worst


def test_fp32_parity_on_20_shapeworld_edits(cpp_build, fp32_bundle, shapeworld_edits, tmp_path):
    rows = _run_both(cpp_build, fp32_bundle, shapeworld_edits, tmp_path, "none")
    assert len(rows) == 20
    _check(rows)


def test_region_parity(cpp_build, region_bundle, shapeworld_edits, tmp_path):
    rows = _run_both(cpp_build, region_bundle, shapeworld_edits[:8], tmp_path, "region")
    _check(rows)
    for r in rows:
        assert r["active"][0] == r["active"][1] and r["active"][0] > 0


def test_format_2_bundle_parity(cpp_build, format_2_region_bundle, shapeworld_edits, tmp_path):
    """Bundles written before decoder_cond (format 2: the steps take the text) still run, as in Python."""
    manifest = json.loads((format_2_region_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and "decoder_cond" not in manifest["graphs"]
    rows = _run_both(cpp_build, format_2_region_bundle, shapeworld_edits[:6], tmp_path, "region")
    _check(rows)
    assert all("decoder_cond" not in r["keys"] for r in rows)


def test_int8_parity_on_20_shapeworld_edits(cpp_build, int8_bundle, shapeworld_edits, tmp_path):
    rows = _run_both(cpp_build, int8_bundle, shapeworld_edits, tmp_path, "none")
    assert len(rows) == 20
    _check(rows)


def test_soft_gate_parity(cpp_build, fp32_bundle, shapeworld_edits, tmp_path):
    """gate_threshold null: the soft gate blends decoded and source pixels everywhere, so every
    pixel of the output depends on the decoder (the same bundle otherwise)."""
    import shutil

    soft = Path(shutil.copytree(fp32_bundle, tmp_path / "soft"))
    manifest = json.loads((soft / "manifest.json").read_text())
    manifest["sampler"]["gate_threshold"] = None
    (soft / "manifest.json").write_text(json.dumps(manifest))
    rows = _run_both(cpp_build, soft, shapeworld_edits[:6], tmp_path, "none")
    _check(rows, min_changed=6 * 32 * 32 // 2)


def test_three_branch_parity(cpp_build, fp32_bundle, region_bundle, shapeworld_edits, tmp_path):
    """Image guidance other than 1: all three guidance branches run (the bundles' default, 1,
    runs two), dense and region."""
    import shutil

    for name, bundle, sparse in (("dense", fp32_bundle, "none"), ("region", region_bundle, "region")):
        three = Path(shutil.copytree(bundle, tmp_path / name))
        manifest = json.loads((three / "manifest.json").read_text())
        assert manifest["sampler"]["image_guidance"] == 1.0
        manifest["sampler"]["image_guidance"] = 1.5
        (three / "manifest.json").write_text(json.dumps(manifest))
        (tmp_path / name / "out").mkdir()
        _check(_run_both(cpp_build, three, shapeworld_edits[:6], tmp_path / name / "out", sparse))


def test_resized_input_and_steps(cpp_build, fp32_bundle, tmp_path):
    """A non-square input (resized in, box scaled, resized out) and a non-default step count."""
    from qk_runtime import EditSession

    rng = np.random.default_rng(3)
    img = np.full((45, 70, 3), (28, 36, 72), np.uint8)
    img[10:30, 20:50] = (40, 180, 60)
    img = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "wide.png")
    job = {"image": str(tmp_path / "wide.png"), "instruction": "make the green square red", "box": [19, 9, 51, 31],
           "seed": 5, "steps": 7, "sparse": "none", "out": str(tmp_path / "cpp.png")}
    (tmp_path / "jobs.json").write_text(json.dumps([job]))
    probe(cpp_build, "edits", fp32_bundle, tmp_path / "jobs.json", THREADS)
    with EditSession(fp32_bundle, backend="ort-cpu", threads=THREADS) as s:
        py = s.edit(job["image"], job["instruction"], box=tuple(job["box"]), seed=5, steps=7, sparse="none")
    got = np.asarray(Image.open(job["out"]))
    assert got.shape == (45, 70, 3)
    assert int(np.abs(got.astype(int) - py.image.astype(int)).max()) <= TOLERANCE
