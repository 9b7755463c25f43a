"""Parity: the C++ runtime's edits equal the Python runtime's (qk_runtime.EditSession on the ONNX
Runtime CPU backend) within 1/255 per pixel, on 20 ShapeWorld edits, for FP32, INT8 (static and
weight-only) and region bundles. Both sides run ONNX Runtime on one thread, so in practice the
pixels are identical."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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


def test_weight_only_int8_parity(cpp_build, weight_only_bundle, shapeworld_edits, tmp_path):
    """`qk-export --int8 --weight-only`: the C++ runtime reads the same weight-only graphs from the
    manifest (all five INT8 ones: Q/DQ fusion off) and its region edits equal Python's."""
    from qk_runtime.bundle import open_bundle

    weight_only = open_bundle(weight_only_bundle).weight_only
    assert weight_only == {"text_encoder", "gateway", "cmg", "decoder", "decoder_region"}
    assert set(probe(cpp_build, "bundle", weight_only_bundle)["weight_only"]) == weight_only
    _check(_run_both(cpp_build, weight_only_bundle, shapeworld_edits[:8], tmp_path, "region"))


@pytest.mark.parametrize("composite", ["gate", "exported"])
def test_soft_gate_parity(cpp_build, fp32_bundle, shapeworld_edits, tmp_path, composite):
    """gate_threshold null: the soft gate blends decoded and source pixels everywhere; with
    compositing by the gate alone every pixel of the output depends on the decoder (the same
    bundle otherwise), with the exported `changed` the soft gate scales the change weight."""
    import shutil

    soft = Path(shutil.copytree(fp32_bundle, tmp_path / "soft"))
    manifest = json.loads((soft / "manifest.json").read_text())
    manifest["sampler"]["gate_threshold"] = None
    if composite == "gate":
        manifest["composite"] = {"kind": "gate"}
    (soft / "manifest.json").write_text(json.dumps(manifest))
    rows = _run_both(cpp_build, soft, shapeworld_edits[:6], tmp_path, "none")
    _check(rows, min_changed=6 * 32 * 32 // 2 if composite == "gate" else 1)


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


def _composite_thresholds(tiny_checkpoint, edits, widen: int) -> tuple[float, float]:
    """lo / hi at quantiles of the decoded output's difference to the decoded source inside the
    gate (torch reference, these edits) such that some gated pixels get weight 0 and some a
    weight strictly between 0 and 1 once widened."""
    import torch

    from qk_runtime.composite import Composite, change_weight
    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = Pipeline(QKModel.from_checkpoint(tiny_checkpoint))
        outs = [pipe.edit(np.asarray(Image.open(e["image"]).convert("RGB")), e["instruction"], e["box"], seed=e["seed"])
                for e in edits]
    finally:
        torch.set_num_threads(threads)
    ds, insides = [], []
    for o in outs:
        g = o.gate.shape[0]
        inside = np.kron(o.gate > pipe.gate_threshold, np.ones((32 // g, 32 // g), bool))
        ds.append(np.abs(o.decoded - o.source_decoded).mean(0) / 2)
        insides.append(inside)
    d_in = np.concatenate([d[i] for d, i in zip(ds, insides)])
    assert d_in.size, "the tiny model gated no token on these edits: the test would check nothing"
    for q in (0.5, 0.6, 0.7, 0.8, 0.9):
        lo, hi = (round(float(v), 4) for v in np.quantile(d_in, [q, (1 + q) / 2]))
        if not lo < hi:
            continue
        c = Composite("changed", lo, hi, widen)
        w = np.concatenate([change_weight(o.decoded[None], o.source_decoded[None], c)[0, 0][i] for o, i in zip(outs, insides)])
        if (w == 0).mean() >= 0.03 and ((w > 0) & (w < 1)).mean() >= 0.03:
            return lo, hi
    raise AssertionError(f"no thresholds give partial weights (differences {np.quantile(d_in, [0, 0.5, 1])})")


def test_compositing_parity(cpp_build, fp32_bundle, region_bundle, tiny_checkpoint, shapeworld_edits, tmp_path):
    """The manifest's compositing, dense and region: `changed` with thresholds that give partial
    weights and a widening (the second image decoder run, the weight, the 3 x 3 max filter), and no
    entry (the gate alone, as bundles before format 4). C++ equals Python."""
    import shutil

    from qk_runtime import EditSession

    edits = [e for e in shapeworld_edits if e["box"] is not None][:6]
    lo, hi = _composite_thresholds(tiny_checkpoint, edits, widen=2)
    for bundle, sparse in ((fp32_bundle, "none"), (region_bundle, "region")):
        images = {}
        for name, entry in (("changed", {"kind": "changed", "lo": lo, "hi": hi, "widen": 2}), ("gate", None)):
            folder = tmp_path / f"{sparse}-{name}"
            copy = Path(shutil.copytree(bundle, folder / "bundle"))
            manifest = json.loads((copy / "manifest.json").read_text())
            if entry is None:
                del manifest["composite"]
                manifest["format_version"] = 3
            else:
                manifest["composite"] = entry
            (copy / "manifest.json").write_text(json.dumps(manifest))
            (folder / "out").mkdir()
            rows = _run_both(cpp_build, copy, edits, folder / "out", sparse)
            _check(rows)
            assert all(("source_decoder" in r["keys"]) == (entry is not None) for r in rows)
            with EditSession(copy, backend="ort-cpu", threads=THREADS) as s:
                images[name] = [s.edit(e["image"], e["instruction"], box=tuple(e["box"]), seed=e["seed"], sparse=sparse).image
                                for e in edits]
        # not vacuous: inside the gate `changed` kept source pixels that the gate alone replaced
        kept = sum(int(((c == src).all(-1) & (g != src).any(-1)).sum()) for c, g, src in
                   zip(images["changed"], images["gate"], (np.asarray(Image.open(e["image"]).convert("RGB")) for e in edits)))
        assert kept > 0
