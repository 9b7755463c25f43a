"""EditSession: parity with the torch reference, between backends, across reuse; no torch.

Parity bound (FP32 bundles): max |runtime - torch| <= 2 per uint8 pixel value (2/255 of the
range), same checkpoint, same seed; the CMG's gate within 1e-4.
"""
import importlib.util
import subprocess
import sys
import threading

import numpy as np
import pytest

from qk_runtime import EditSession
from qk_runtime.errors import InputError

FP32_TOL = 2  # uint8 levels
INSTRUCTION = "make the red square blue"
BOX = (4, 6, 20, 18)
HAS_OV = importlib.util.find_spec("openvino") is not None


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def ort_session(fp32_bundle):
    with EditSession(fp32_bundle, backend="ort-cpu", threads=1) as s:
        yield s


# --------------------------------------------------------------------------- parity with torch


@pytest.mark.parametrize("box", [None, BOX])
@pytest.mark.parametrize("s_img", [None, 1.5])  # the default (1: two branches) and three branches
def test_edit_matches_torch_reference(ort_session, reference_pipeline, source_image, box, s_img):
    ours = ort_session.edit(source_image, INSTRUCTION, box, seed=3, sparse="none", image_guidance=s_img)
    ref = reference_pipeline.edit(source_image, INSTRUCTION, box, seed=3, sparse="none", image_guidance=s_img)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL
    np.testing.assert_allclose(ours.gate, ref.gate, atol=1e-4)
    assert ours.timings["total"] > 0 and len(ours.timings["decoder_steps"]) == 20


def test_image_guidance_one_runs_two_branches_with_the_three_branch_result(ort_session, source_image, monkeypatch):
    assert ort_session.bundle.sampler.image_guidance == 1.0  # the exported default
    batches = []
    infer = ort_session.backend.infer

    def spy(graph, feeds):
        if graph in ("decoder", "decoder_region"):
            batches.append(feeds["x"].shape[0])
        return infer(graph, feeds)

    monkeypatch.setattr(ort_session.backend, "infer", spy)
    two = ort_session.edit(source_image, INSTRUCTION, BOX, seed=3, steps=8, sparse="none")
    assert batches == [2] * 8
    batches.clear()
    three = ort_session.edit(source_image, INSTRUCTION, BOX, seed=3, steps=8, sparse="none", image_guidance=1.0 + 1e-7)
    assert batches == [3] * 8
    assert _max_diff(two.image, three.image) <= 1  # the third branch's weight is 0 (1e-7 here)


def test_generation_uses_the_bundles_generation_guidance(ort_session):
    cfg = ort_session.bundle.sampler
    assert cfg.gen_guidance is not None and cfg.gen_guidance != cfg.text_guidance
    default = ort_session.generate("a red circle at the top left", seed=11, steps=6).image
    same = ort_session.generate("a red circle at the top left", seed=11, steps=6, guidance=cfg.gen_guidance).image
    other = ort_session.generate("a red circle at the top left", seed=11, steps=6, guidance=cfg.text_guidance).image
    np.testing.assert_array_equal(default, same)
    assert _max_diff(default, other) > 0


def test_non_square_edit_matches_torch_and_keeps_the_size(ort_session, reference_pipeline):
    img = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    ours = ort_session.edit(img, INSTRUCTION, (2, 3, 30, 40), seed=1, steps=6, sparse="none")
    ref = reference_pipeline.edit(img, INSTRUCTION, (2, 3, 30, 40), seed=1, steps=6, sparse="none")
    assert ours.image.shape == (48, 40, 3)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL


def test_generate_matches_torch_reference(ort_session, reference_pipeline):
    ours = ort_session.generate("a red circle at the top left", seed=11, steps=8)
    ref = reference_pipeline.generate("a red circle at the top left", seed=11, steps=8)
    assert ours.image.shape == (32, 32, 3)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL


def test_region_mode_matches_torch_and_keeps_the_source_outside(region_bundle, reference_pipeline, source_image):
    with EditSession(region_bundle, backend="ort-cpu", threads=1) as s:
        ours = s.edit(source_image, INSTRUCTION, BOX, seed=2, sparse="region")
        dense = s.edit(source_image, INSTRUCTION, BOX, seed=2, sparse="none")
        thr = s.bundle.sampler.gate_threshold
    ref = reference_pipeline.edit(source_image, INSTRUCTION, BOX, seed=2, sparse="region")
    assert ours.active_tokens == ref.active_tokens
    assert _max_diff(ours.image, ref.image) <= FP32_TOL
    # outside the gate (thresholded, over each token's patch) the pixels are the source's own
    g = ours.gate.shape[0]
    patch = source_image.shape[0] // g
    off = np.kron((ours.gate <= thr).astype(np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)
    assert off.any(), "the tiny model gated every token on: this test would check nothing"
    assert np.array_equal(ours.image[off], source_image[off])
    assert np.array_equal(dense.image[off], source_image[off])


def test_weight_only_int8_bundle_matches_torch_within_the_fp32_bound(weight_only_bundle, reference_pipeline, source_image):
    """`qk-export --int8 --weight-only` (int8 weights dequantized at load, float activations): an
    edit, dense and region, and a generation stay within the FP32 bundles' bound of the torch model."""
    with EditSession(weight_only_bundle, backend="ort-cpu", threads=1) as s:
        assert s.bundle.weight_only >= {"gateway", "cmg", "decoder", "decoder_region"}
        for sparse in ("none", "region"):
            ours = s.edit(source_image, INSTRUCTION, BOX, seed=3, steps=8, sparse=sparse)
            ref = reference_pipeline.edit(source_image, INSTRUCTION, BOX, seed=3, steps=8, sparse=sparse)
            assert _max_diff(ours.image, ref.image) <= FP32_TOL, sparse
            assert (ours.image != source_image).any(), "the edit changed nothing: the comparison proves little"
        gen = s.generate("a red circle at the top left", seed=11, steps=8).image
    assert _max_diff(gen, reference_pipeline.generate("a red circle at the top left", seed=11, steps=8).image) <= FP32_TOL


# --------------------------------------------------------------------------- backends and reuse


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_matches_onnx_runtime(fp32_bundle, ort_session, source_image):
    with EditSession(fp32_bundle, backend="ov-cpu", threads=1) as ov:
        assert ov.backend_name == "ov-cpu"
        for box in (None, BOX):
            a = ov.edit(source_image, INSTRUCTION, box, seed=4, steps=8, sparse="none")
            b = ort_session.edit(source_image, INSTRUCTION, box, seed=4, steps=8, sparse="none")
            assert _max_diff(a.image, b.image) <= FP32_TOL
        assert _max_diff(ov.generate("a blue square", seed=1, steps=8).image,
                         ort_session.generate("a blue square", seed=1, steps=8).image) <= FP32_TOL


def test_reused_session_equals_fresh_session(fp32_bundle, source_image):
    with EditSession(fp32_bundle, backend="ort-cpu", threads=1) as used:
        used.edit(source_image, "remove the red square", BOX, seed=9, steps=5)
        used.generate("a green circle", seed=2, steps=5)
        used.edit(np.zeros((20, 50, 3), np.uint8), "make it yellow", None, seed=1, steps=3)
        again = used.edit(source_image, INSTRUCTION, BOX, seed=7, steps=5)
    with EditSession(fp32_bundle, backend="ort-cpu", threads=1) as fresh:
        first = fresh.edit(source_image, INSTRUCTION, BOX, seed=7, steps=5)
    assert np.array_equal(again.image, first.image)
    assert np.array_equal(again.gate, first.gate)


def test_a_session_runs_on_a_backend_it_is_given(fp32_bundle, ort_session, source_image):
    from qk_runtime.backend import make_backend
    from qk_runtime.bundle import open_bundle

    backend = make_backend("ort-cpu", open_bundle(fp32_bundle), threads=1)
    with EditSession(backend=backend, reason="made by the caller") as given:
        assert given.backend is backend and backend.is_active
        assert (given.backend_name, given.backend_reason) == ("ort-cpu", "made by the caller")
        out = given.edit(source_image, INSTRUCTION, BOX, seed=7, steps=5)
    assert not backend.is_active  # closing the session deactivates it
    assert np.array_equal(out.image, ort_session.edit(source_image, INSTRUCTION, BOX, seed=7, steps=5).image)
    with pytest.raises(TypeError, match="bundle and options of that backend"):
        EditSession(fp32_bundle, backend=make_backend("ort-cpu", open_bundle(fp32_bundle), threads=1))


def test_concurrent_calls_are_serialised(ort_session, source_image):
    expected = [ort_session.edit(source_image, INSTRUCTION, BOX, seed=s, steps=4).image for s in range(3)]
    got = [None] * 3

    def work(i):
        got[i] = ort_session.edit(source_image, INSTRUCTION, BOX, seed=i, steps=4).image

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_edit_never_imports_torch(fp32_bundle, tmp_path, source_image):
    img = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(source_image).save(img)
    code = (
        "import sys\n"
        "from qk_runtime import EditSession\n"
        f"s = EditSession({str(fp32_bundle)!r}, backend='ort-cpu', threads=1)\n"
        f"r = s.edit({str(img)!r}, 'make the red square blue', (4, 6, 20, 18), steps=3)\n"
        "assert r.image.shape == (32, 32, 3)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'qk_train', 'qk_export', 'diffusers', 'transformers'))\n"
        "print('IMPORTED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout, out.stdout


# --------------------------------------------------------------------------- bad input at the session


def test_bad_requests_are_refused(ort_session, fp32_bundle, source_image):
    with pytest.raises(InputError, match=r"0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32"):
        ort_session.edit(source_image, INSTRUCTION, (0, 0, 33, 10))
    with pytest.raises(InputError, match="inverted or empty"):
        ort_session.edit(source_image, INSTRUCTION, (10, 10, 10, 20))
    with pytest.raises(InputError, match="instruction is empty"):
        ort_session.edit(source_image, "   ")
    with pytest.raises(InputError, match="prompt is empty"):
        ort_session.generate("")
    with pytest.raises(InputError, match="steps"):
        ort_session.edit(source_image, INSTRUCTION, steps=0)
    with pytest.raises(InputError, match="seed"):
        ort_session.edit(source_image, INSTRUCTION, seed=-1)
    with pytest.raises(InputError, match="finite"):
        ort_session.edit(source_image, INSTRUCTION, text_guidance=float("nan"))
    with pytest.raises(InputError, match="chosen at export"):
        ort_session.edit(source_image, INSTRUCTION, sparse="window")
    with pytest.raises(InputError, match="region decoder"):
        ort_session.edit(source_image, INSTRUCTION, sparse="region")  # the fp32 bundle has none


def test_overlong_instruction_is_truncated_with_a_warning(ort_session, source_image):
    long = " ".join(["make the red square blue"] * 20)
    with pytest.warns(UserWarning, match="longer than the model's 24 tokens"):
        r = ort_session.edit(source_image, long, BOX, steps=2)
    assert r.image.shape == (32, 32, 3)


# --------------------------------------------------------------------------- numpy helpers vs torch


def test_region_token_choice_equals_the_reference():
    pipeline = pytest.importorskip("qk_train.pipeline", reason="the torch reference needs the train extra")
    from qk_runtime.session import active_token_indices

    rng = np.random.default_rng(0)
    for grid in (2, 3, 4, 8, 10):
        for p_on in (0.0, 0.05, 0.2, 0.6, 1.0):
            for halo in (0, 1, 2):
                gate = rng.random(grid * grid) < p_on
                ours = active_token_indices(gate, grid, grid, halo)
                ref = pipeline.active_token_indices(gate, grid, grid, halo)
                assert ours.dtype == np.int64 and np.array_equal(ours, ref), (grid, p_on, halo)


def test_gate_map_and_region_mask_equal_the_reference():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from qk_runtime.session import box_mask, max_pool, tokens_to_map
    from qk_train.models.layers import tokens_to_map as torch_tokens_to_map

    values = np.random.default_rng(1).random((2, 12)).astype(np.float32)
    ref = torch_tokens_to_map(torch.from_numpy(values), 3, 4, 2).numpy()
    assert np.array_equal(tokens_to_map(values, 3, 4, 2), ref)
    mask = box_mask((3, 5, 13, 11), 16)
    ref = F.max_pool2d(torch.from_numpy(mask)[None, None], 4)[0, 0].numpy()
    assert np.array_equal(max_pool(mask, 4), ref)
