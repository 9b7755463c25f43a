"""Compositing an edit with its source (runtime/composite.py, the manifest's `composite`): the rule
on hand-made images, the manifest entry, and the same result in torch and the Python runtime."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qk_runtime import EditSession
from qk_runtime.bundle import open_bundle
from qk_runtime.composite import GATE_ONLY, Composite, change_weight, composite, max_filter3
from qk_runtime.contract import MANIFEST
from qk_runtime.errors import BundleError
from qk_runtime.session import to_uint8

FP32_TOL = 2  # uint8 levels, as tests/qk_runtime/test_session.py
INSTRUCTION = "make the red square blue"
BOX = (4, 6, 20, 18)


def _edit_manifest(folder, change):
    m = json.loads((folder / MANIFEST).read_text())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# --------------------------------------------------------------------------- the rule, by hand


def _scene(side=24):
    """A textured source, its smooth decoding, and a decoded edit that differs from the decoded
    source only on a 4 x 4 object at rows/columns 10..13; the gate covers rows/columns 4..19."""
    rng = np.random.default_rng(0)
    source_px = np.float32(-0.3) + rng.normal(0, 0.05, (1, 3, side, side)).astype(np.float32)  # fine texture
    decoded_source = np.full((1, 3, side, side), -0.3, np.float32)  # the codec smooths it away
    decoded = decoded_source.copy()
    obj = np.zeros((side, side), bool)
    obj[10:14, 10:14] = True
    decoded[0, :, obj] = np.float32([0.9, -0.7, -0.7])  # a red object where the edit changed something
    pix = np.zeros((1, 1, side, side), np.float32)
    pix[..., 4:20, 4:20] = 1.0
    return source_px, decoded_source, decoded, obj, pix


def _dilate(mask, r):
    out = mask.copy()
    for _ in range(r):
        out = max_filter3(out.astype(np.float32)) > 0
    return out


@pytest.mark.parametrize("widen", [0, 1, 2])
def test_unchanged_pixels_inside_the_gate_are_exactly_the_source(widen):
    source_px, decoded_source, decoded, obj, pix = _scene()
    c = Composite("changed", 0.05, 0.1, widen)
    out = composite(decoded, source_px, pix, c, decoded_source)
    kept = ~_dilate(obj, widen)  # beyond the object and its widening: the source's own, inside the gate too
    assert (pix[0, 0] > 0)[kept].any()
    assert np.array_equal(out[0][:, kept], source_px[0][:, kept])
    assert np.array_equal(to_uint8(out[0])[kept], to_uint8(source_px[0])[kept])
    assert np.array_equal(out[0][:, obj], decoded[0][:, obj])  # the edit itself is the decoder's
    # the gate alone keeps the smooth decoding inside the gate: the flat square this rule removes
    gate_only = composite(decoded, source_px, pix, GATE_ONLY)
    inside = (pix[0, 0] > 0) & ~obj
    assert np.array_equal(gate_only[0][:, inside], decoded[0][:, inside])


def test_widening_keeps_an_objects_soft_edge():
    source_px, decoded_source, decoded, obj, pix = _scene()
    decoded[0, :, 9, 10:14] = decoded_source[0, :, 9, 10:14] + np.float32(0.06)  # an edge pixel row, d = 0.03 < lo
    narrow = change_weight(decoded, decoded_source, Composite("changed", 0.05, 0.1, 0))
    wide = change_weight(decoded, decoded_source, Composite("changed", 0.05, 0.1, 1))
    assert (narrow[0, 0, 9, 10:14] == 0).all() and (wide[0, 0, 9, 10:14] == 1).all()
    assert wide.dtype == np.float32 and wide.shape == (1, 1, 24, 24)


def test_weight_ramps_between_lo_and_hi():
    a = np.zeros((1, 3, 1, 5), np.float32)
    b = a.copy()
    b[0, :, 0] = np.float32([0.0, 0.1, 0.15, 0.2, 0.4])[None]  # d = |a - b| / 2 on every channel
    w = change_weight(a, b, Composite("changed", 0.05, 0.1, 0))[0, 0, 0]
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_max_filter3_is_the_3x3_maximum():
    w = np.random.default_rng(1).random((2, 7, 9)).astype(np.float32)
    padded = np.pad(w, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    brute = np.max([padded[:, dy:dy + 7, dx:dx + 9] for dy in range(3) for dx in range(3)], axis=0)
    assert np.array_equal(max_filter3(w), brute)


def test_gate_kind_is_the_gate_blend_bit_for_bit():
    source_px, decoded_source, decoded, _, pix = _scene()
    pix = pix * np.float32(0.7)  # a soft gate (gate_threshold null)
    assert np.array_equal(composite(decoded, source_px, pix, GATE_ONLY), pix * decoded + (1.0 - pix) * source_px)


@pytest.mark.parametrize("raw, match", [
    ({"kind": "blur"}, "kind 'blur'"),
    ({"kind": "gate", "lo": 0.1}, "unknown keys"),
    ({"kind": "changed", "lo": 0.1, "hi": 0.2}, "needs"),
    ({"kind": "changed", "lo": 0.2, "hi": 0.1, "widen": 1}, "lo < hi"),
    ({"kind": "changed", "lo": 0.1, "hi": 0.2, "widen": 1.0}, "widen"),
    ({"kind": "changed", "lo": 0.1, "hi": 0.2, "widen": 1, "sigma": 2}, "unknown keys"),
    ([], "must be an object"),
])
def test_bad_entries_are_refused(raw, match):
    with pytest.raises(ValueError, match=match):
        Composite.from_dict(raw)


def test_entries_round_trip():
    for c in (GATE_ONLY, Composite("changed", 0.05, 0.1, 1)):
        assert Composite.from_dict(json.loads(json.dumps(c.to_dict()))) == c


# --------------------------------------------------------------------------- bundles


def test_the_exported_bundle_carries_the_pipelines_compositing(fp32_bundle, reference_pipeline):
    b = open_bundle(fp32_bundle)
    assert b.manifest["format_version"] == 4
    assert b.composite == reference_pipeline.pipeline.composite and b.composite.kind == "changed"
    assert b.manifest["composite"] == reference_pipeline.pipeline.composite.to_dict()


def test_older_formats_have_no_entry_and_composite_by_the_gate(format_2_region_bundle):
    b = open_bundle(format_2_region_bundle)
    assert "composite" not in b.manifest and b.composite == GATE_ONLY


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(composite={"kind": "feather"}), "'composite' kind 'feather'"),
    (lambda m: m["composite"].update(lo=0.5, hi=0.4), "lo < hi"),
    (lambda m: m.update(format_version=3), "'composite' needs format_version 4"),
])
def test_bad_composite_entries_are_refused(bundle_copy, change, match):
    _edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=match):
        open_bundle(bundle_copy, verify=False)


def _gate_only_copy(bundle: Path, folder: Path) -> Path:
    """The bundle as format 3 wrote it: no `composite` entry."""
    copy = Path(shutil.copytree(bundle, folder))

    def drop(m):
        del m["composite"]
        m["format_version"] = 3

    _edit_manifest(copy, drop)
    return copy


def test_a_bundle_without_the_entry_composites_by_the_gate_alone(fp32_bundle, tmp_path, reference_pipeline, source_image,
                                                                  torch_one_thread):
    from qk_train.pipeline import Pipeline

    old = _gate_only_copy(fp32_bundle, tmp_path / "gate")
    gate_entry = Path(shutil.copytree(fp32_bundle, tmp_path / "gate-entry"))
    _edit_manifest(gate_entry, lambda m: m.update(composite={"kind": "gate"}))
    with torch_one_thread():
        ref = Pipeline(reference_pipeline.pipeline.model, composite="gate").edit(source_image, INSTRUCTION, BOX, seed=3)
    with EditSession(old, "ort-cpu", threads=1) as s, EditSession(gate_entry, "ort-cpu", threads=1) as e:
        calls = []
        infer = s.backend.infer
        s.backend.infer = lambda graph, feeds: (calls.append(graph), infer(graph, feeds))[1]
        r = s.edit(source_image, INSTRUCTION, BOX, seed=3)
        same = e.edit(source_image, INSTRUCTION, BOX, seed=3)
    assert _max_diff(r.image, ref.image) <= FP32_TOL
    assert np.array_equal(r.image, same.image)  # {"kind": "gate"} is what no entry means
    assert calls.count("image_decoder") == 1 and "source_decoder" not in r.timings


def _partial_thresholds(out, gate_threshold: float, widen: int) -> tuple[float, float]:
    """lo / hi at quantiles of the decodings' difference inside the gate such that, after
    widening, some gated pixels get weight 0 and some a weight strictly between 0 and 1 (the tiny
    test model changes most of what it gates, by about 0.3)."""
    g = out.gate.shape[0]
    side = out.decoded.shape[-1]
    inside = np.kron(out.gate > gate_threshold, np.ones((side // g, side // g), bool))
    assert inside.any(), "the tiny model gated no token: this test would check nothing"
    d = (np.abs(out.decoded - out.source_decoded).mean(0) / 2)[inside]
    for q in (0.5, 0.6, 0.7, 0.8, 0.9):
        lo, hi = (round(float(v), 4) for v in np.quantile(d, [q, (1 + q) / 2]))
        if not lo < hi:
            continue
        w = change_weight(out.decoded[None], out.source_decoded[None], Composite("changed", lo, hi, widen))[0, 0][inside]
        if (w == 0).mean() >= 0.03 and ((w > 0) & (w < 1)).mean() >= 0.03:
            return lo, hi
    pytest.fail(f"no thresholds give partial weights on this edit (differences {np.quantile(d, [0, 0.5, 1])})")


@pytest.mark.parametrize("sparse, bundle_name", [("none", "fp32_bundle"), ("region", "region_bundle")])
def test_changed_compositing_matches_torch(request, tmp_path, reference_pipeline, source_image, sparse, bundle_name,
                                            torch_one_thread):
    """Compositing on, with thresholds that give partial weights: the runtime equals the torch
    reference, keeps source pixels inside the gate and differs from the gate alone."""
    from qk_train.pipeline import Pipeline

    bundle = request.getfixturevalue(bundle_name)
    model = reference_pipeline.pipeline.model
    with torch_one_thread():
        probe = Pipeline(model).edit(source_image, INSTRUCTION, BOX, seed=4, sparse=sparse)
        lo, hi = _partial_thresholds(probe, reference_pipeline.pipeline.gate_threshold, widen=1)
        ref = Pipeline(model, change_lo=lo, change_hi=hi, change_widen=1).edit(source_image, INSTRUCTION, BOX, seed=4,
                                                                               sparse=sparse)
        gate_ref = Pipeline(model, composite="gate").edit(source_image, INSTRUCTION, BOX, seed=4, sparse=sparse)
    tuned = Path(shutil.copytree(bundle, tmp_path / "tuned"))
    _edit_manifest(tuned, lambda m: m.update(composite={"kind": "changed", "lo": lo, "hi": hi, "widen": 1}))
    with EditSession(tuned, "ort-cpu", threads=1) as s:
        ours = s.edit(source_image, INSTRUCTION, BOX, seed=4, sparse=sparse)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL
    assert "source_decoder" in ours.timings and ours.timings["source_decoder"] > 0
    thr = s.bundle.sampler.gate_threshold
    g = ours.gate.shape[0]
    inside = np.kron((ours.gate > thr).astype(np.uint8), np.ones((32 // g, 32 // g), np.uint8)).astype(bool)
    assert inside.any(), "the tiny model gated no token: this test would check nothing"
    kept = inside & (ours.image == source_image).all(-1)
    assert kept.any() and (kept & (gate_ref.image != source_image).any(-1)).any()  # the rule kept source pixels
    assert (ours.image != source_image).any()  # ... and not every one
