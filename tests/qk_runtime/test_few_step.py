"""Few-step sampling in the Python runtime (bundle format 5): parity with the torch reference at
1, 2 and 4 steps and at the ordinary 20, the manifest's `few_step` checks, `qk-edit --steps 4`.

Parity bound as in test_session.py: max |runtime - torch| <= 2 per uint8 pixel value, the gate
within 1e-4."""
import json
import re
import shutil

import numpy as np
import pytest

from qk_runtime import EditSession
from qk_runtime.backend import Backend, make_backend
from qk_runtime.bundle import open_bundle
from qk_runtime.cli import edit_main, generate_main
from qk_runtime.errors import BundleError
from qk_runtime.sampler import FlowMatchEulerScheduler, few_step_sigmas

FP32_TOL = 2  # uint8 levels
INSTRUCTION = "make the red square blue"
BOX = (4, 6, 20, 18)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def few_session(few_step_bundle):
    with EditSession(few_step_bundle, backend="ort-cpu", threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def few_reference(few_step_checkpoint, torch_one_thread):
    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    from .conftest import Reference

    with torch_one_thread():
        model = QKModel.from_checkpoint(few_step_checkpoint)
        return Reference(Pipeline(model), torch_one_thread), Reference(Pipeline(model, few_step_steps=()), torch_one_thread)


class Spy(Backend):
    """ONNX Runtime on the CPU, keeping the sigma and step_size of every decoder step it runs."""

    def __init__(self, bundle_dir):
        inner = make_backend("ort-cpu", open_bundle(bundle_dir), threads=1)
        super().__init__(inner.bundle)
        self.inner, self.name, self.step_sizes = inner, inner.name, []

    def activate(self, graphs=None) -> None:
        self.inner.activate(graphs)
        self.is_active = True

    def infer(self, graph, feeds):
        if graph in ("decoder", "decoder_region"):
            self.step_sizes.append((feeds["sigma"][0], feeds.get("step_size")))
        return self.inner.infer(graph, feeds)

    def deactivate(self) -> None:
        self.inner.deactivate()
        self.is_active = False


@pytest.mark.parametrize("steps", [1, 2, 4, 20])
@pytest.mark.parametrize("sparse", ["none", "region"])
def test_few_step_edit_matches_torch(few_session, few_reference, source_image, steps, sparse):
    reference, _ = few_reference
    ours = few_session.edit(source_image, INSTRUCTION, BOX, steps=steps, seed=3, sparse=sparse)
    ref = reference.edit(source_image, INSTRUCTION, BOX, steps=steps, seed=3, sparse=sparse)
    assert ours.steps == steps
    assert _max_diff(ours.image, ref.image) <= FP32_TOL
    np.testing.assert_allclose(ours.gate, ref.gate, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_few_step_three_branch_edit_and_generation_match_torch(few_session, few_reference, source_image, steps):
    reference, _ = few_reference
    ours = few_session.edit(source_image, INSTRUCTION, None, steps=steps, seed=5, image_guidance=1.5, sparse="none")
    ref = reference.edit(source_image, INSTRUCTION, None, steps=steps, seed=5, image_guidance=1.5)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL
    ours = few_session.generate("a red circle at the top left", steps=steps, seed=2)
    ref = reference.generate("a red circle at the top left", steps=steps, seed=2)
    assert _max_diff(ours.image, ref.image) <= FP32_TOL


def test_few_step_counts_feed_sigma_minus_sigma_next_and_others_zero(few_step_bundle, few_session, few_reference,
                                                                     source_image):
    spy = Spy(few_step_bundle)
    with EditSession(backend=spy) as s:
        s.edit(source_image, INSTRUCTION, BOX, steps=4, seed=3, sparse="none")
        assert [(float(a), float(b[0])) for a, b in spy.step_sizes] == [(1.0, 0.25), (0.75, 0.25), (0.5, 0.25),
                                                                        (0.25, 0.25)]
        spy.step_sizes.clear()
        s.generate("a blue square", steps=3, seed=0)  # not a few-step count: the ordinary schedule, step size 0
        assert len(spy.step_sizes) == 3 and all(float(b.max()) == 0 for _, b in spy.step_sizes)
        assert float(spy.step_sizes[1][0]) == pytest.approx(1 - 0.999 / 2, abs=1e-6)
    # the torch reference takes the same path: its 4-step generation differs from the instantaneous
    # sampler's at 4 steps (by little in the tiny model, whose velocity hardly bends), and the
    # runtime's equals the few-step one
    few_ref, instantaneous = few_reference
    ours = few_session.generate("a red circle at the top left", steps=4, seed=2).image
    a = few_ref.generate("a red circle at the top left", steps=4, seed=2).image
    b = instantaneous.generate("a red circle at the top left", steps=4, seed=2).image
    assert _max_diff(ours, a) <= FP32_TOL and np.count_nonzero(a != b) > 0.05 * a.size
    assert np.count_nonzero(ours != b) > np.count_nonzero(ours != a)


def test_a_bundle_without_few_step_feeds_no_step_size(fp32_bundle, source_image):
    spy = Spy(fp32_bundle)
    with EditSession(backend=spy) as s:
        assert s.bundle.few_step is None and s.bundle.manifest["format_version"] == 4
        s.edit(source_image, INSTRUCTION, BOX, steps=4, seed=3, sparse="none")
    assert len(spy.step_sizes) == 4 and all(d is None for _, d in spy.step_sizes)
    # the ordinary schedule at 4 steps, as before the feature: 1, 0.667, 0.334, 0.001
    assert [round(float(a), 3) for a, _ in spy.step_sizes] == [1.0, 0.667, 0.334, 0.001]


def test_qk_edit_and_qk_generate_run_four_steps(few_step_bundle, few_session, source_image, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(source_image).save(tmp_path / "in.png")
    assert edit_main(["--bundle", str(few_step_bundle), "--image", str(tmp_path / "in.png"), "--instruction", INSTRUCTION,
                      "--box", "4,6,20,18", "--steps", "4", "--seed", "3", "--sparse", "none", "--backend", "ort-cpu",
                      "--threads", "1", "--out", str(tmp_path / "out.png")]) == 0
    assert "4 steps" in capsys.readouterr().out
    direct = few_session.edit(source_image, INSTRUCTION, BOX, steps=4, seed=3, sparse="none")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), direct.image)
    assert generate_main(["--bundle", str(few_step_bundle), "--prompt", "a red circle", "--steps", "1", "--backend",
                          "ort-cpu", "--threads", "1", "--out", str(tmp_path / "gen.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "gen.png")), few_session.generate("a red circle", steps=1).image)


def test_few_step_sigmas_and_the_scheduler():
    assert few_step_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert few_step_sigmas(1).tolist() == [1.0, 0.0] and few_step_sigmas(3).dtype == np.float32
    assert few_step_sigmas(3)[1] == np.float32(2 / 3)
    sched = FlowMatchEulerScheduler(shift=3.0)  # the shift does not touch a given schedule
    sched.set_sigmas(few_step_sigmas(2))
    assert sched.sigma == 1.0 and sched.step_size == 0.5
    x = sched.step(np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))
    assert x.tolist() == [[-0.5, -0.5]] and sched.sigma == 0.5
    for bad in ([1.0, 0.5], [0.5, 1.0, 0.0], [1.0]):
        with pytest.raises(ValueError, match="decreasing"):
            sched.set_sigmas(np.array(bad, np.float32))
    with pytest.raises(ValueError, match=">= 1"):
        few_step_sigmas(0)


def _edited(few_step_bundle, tmp_path, change) -> BundleError:
    folder = shutil.copytree(few_step_bundle, tmp_path / "b")
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as info:
        open_bundle(folder, verify=False)
    return info.value


@pytest.mark.parametrize("change, message", [
    (lambda m: m["few_step"].update(steps=[]), r"few_step.steps=\[\]; must be a non-empty list of increasing"),
    (lambda m: m["few_step"].update(steps=[4, 2]), "increasing integer step counts"),
    (lambda m: m["few_step"].update(steps=[0, 1]), "from 1 to 1000"),
    (lambda m: m["few_step"].update(steps=[1, 2.5]), "increasing integer"),
    (lambda m: m["few_step"].update(steps=[True]), "increasing integer"),
    (lambda m: m["few_step"].update(steps="1,2,4"), "must be a non-empty list"),
    (lambda m: m["few_step"].update(sigmas="karras"), "few_step.sigmas='karras'; this runtime runs only 'uniform'"),
    (lambda m: m["few_step"].update(step_size="sigma"), "few_step.step_size='sigma'"),
    (lambda m: m["few_step"].update(other_step_size=0.1), "few_step.other_step_size=0.1"),
    (lambda m: m["few_step"].update(other_step_size=False), "few_step.other_step_size=False"),
    (lambda m: m["few_step"].pop("sigmas"), "exactly the keys"),
    (lambda m: m["few_step"].update(extra=1), "exactly the keys"),
    (lambda m: m.update(few_step=[1, 2, 4]), "exactly the keys"),
    (lambda m: m.update(format_version=4), "'few_step' needs format_version 5 or newer"),
    (lambda m: m.pop("few_step"), r"graph 'decoder' inputs .*step_size.* differ from the contract"),
])
def test_a_malformed_few_step_entry_is_refused(few_step_bundle, tmp_path, change, message):
    err = _edited(few_step_bundle, tmp_path, change)
    assert re.search(message, str(err)), str(err)
    assert "qk-export" in str(err) or "upgrade" in str(err)


def test_a_plain_bundle_with_few_step_added_is_refused(fp32_bundle, tmp_path):
    def add(m):
        m.update(format_version=5, few_step={"steps": [4], "sigmas": "uniform", "step_size": "sigma - sigma_next",
                                             "other_step_size": 0.0})

    err = _edited(fp32_bundle, tmp_path, add)
    assert "differ from the contract" in str(err) and "step_size" in str(err)
