"""Few-step sampling (bundle format 5) in the C++ runtime: the few-step bundle's edits equal the
Python runtime's within 1/255 per pixel at 1, 2 and 4 steps (the uniform schedule feeding
step_size = sigma - sigma_next) and at 20 (the ordinary schedule, step_size 0), dense and region;
qk_edit_cpp --steps 4; the schedule bit for bit; a malformed `few_step` refused as in Python.
(The C++ runtime has no text-to-image generation: edits only.)"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpp_helpers import THREADS, probe

TOLERANCE = 1  # uint8 levels


def _edits(cpp_build, bundle, edits, tmp_path, steps, sparse):
    """C++ and Python on the same jobs at `steps`: [(cpp image, python image, cpp row, python result)]."""
    from qk_runtime import EditSession

    jobs = [dict(e, out=str(tmp_path / f"cpp{steps}-{sparse}-{i:02d}.png"), sparse=sparse, steps=steps)
            for i, e in enumerate(edits)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    cpp = probe(cpp_build, "edits", bundle, tmp_path / "jobs.json", THREADS)["results"]
    out = []
    with EditSession(bundle, backend="ort-cpu", threads=THREADS) as s:
        for job, c in zip(jobs, cpp):
            box = tuple(job["box"]) if job["box"] is not None else None
            py = s.edit(job["image"], job["instruction"], box=box, seed=job["seed"], steps=steps, sparse=sparse)
            out.append((np.asarray(Image.open(job["out"])), py.image, c, py))
    return out


def _diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("steps", [1, 2, 4, 20])
@pytest.mark.parametrize("sparse", ["none", "region"])
def test_few_step_parity(cpp_build, few_step_bundle, shapeworld_edits, tmp_path, steps, sparse):
    rows = _edits(cpp_build, few_step_bundle, shapeworld_edits[:6], tmp_path, steps, sparse)
    worst = max(_diff(c, p) for c, p, _, _ in rows)
    assert worst <= TOLERANCE, f"C++ and Python differ by up to {worst} levels at {steps} steps ({sparse})"
    for _, _, c, py in rows:
        assert len(c["decoder_steps"]) == steps == py.steps
        assert np.abs(np.asarray(c["gate"], np.float32) - py.gate.reshape(-1)).max() < 1e-5
        if sparse == "region":
            assert c["active_tokens"] == py.active_tokens > 0
    changed = sum(int((p != np.asarray(Image.open(e["image"]))).any(-1).sum())
                  for (_, p, _, _), e in zip(rows, shapeworld_edits))
    assert changed > 0, "no edit changed any pixel: the comparison proves nothing"


def test_unlisted_counts_run_the_ordinary_schedule(cpp_build, few_step_bundle, shapeworld_edits, tmp_path):
    """The same bundle with few_step.steps [1, 2]: at 4 steps both runtimes run the ordinary
    schedule with step_size 0, equal to each other and unlike the few-step sampler's 4 steps."""
    ordinary = Path(shutil.copytree(few_step_bundle, tmp_path / "ordinary"))
    m = json.loads((ordinary / "manifest.json").read_text())
    m["few_step"]["steps"] = [1, 2]
    (ordinary / "manifest.json").write_text(json.dumps(m))
    edits = [e for e in shapeworld_edits if e["box"] is not None][:4]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _edits(cpp_build, ordinary, edits, tmp_path / "a", 4, "none")
    few = _edits(cpp_build, few_step_bundle, edits, tmp_path / "b", 4, "none")
    assert max(_diff(c, p) for c, p, _, _ in plain) <= TOLERANCE
    assert sum(int((a[0] != b[0]).any(-1).sum()) for a, b in zip(plain, few)) > 0


def test_few_step_sigmas_are_bit_exact(cpp_build):
    from qk_runtime.sampler import few_step_sigmas

    for n in (1, 2, 3, 4, 7, 64):
        want = few_step_sigmas(n).view(np.uint32).tolist()
        assert probe(cpp_build, "few_step_sigmas", n) == want


def test_qk_edit_cpp_runs_four_steps(cpp_build, few_step_bundle, scene_png, tmp_path):
    from qk_runtime import EditSession

    out = tmp_path / "edited.png"
    run = subprocess.run([str(cpp_build / "qk_edit_cpp"), "--bundle", str(few_step_bundle), "--image", str(scene_png),
                          "--instruction", "make the red square blue", "--box", "6,8,18,20", "--out", str(out),
                          "--seed", "3", "--steps", "4", "--sparse", "none", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "4 steps" in run.stdout
    with EditSession(few_step_bundle, backend="ort-cpu", threads=1) as s:
        want = s.edit(str(scene_png), "make the red square blue", box=(6, 8, 18, 20), seed=3, steps=4, sparse="none").image
    assert _diff(np.asarray(Image.open(out)), want) <= TOLERANCE


def test_bundle_reports_few_step(cpp_build, few_step_bundle, fp32_bundle):
    assert probe(cpp_build, "bundle", few_step_bundle)["few_step"] == [1, 2, 4]
    assert probe(cpp_build, "bundle", fp32_bundle)["few_step"] is None


FEW = {"steps": [4], "sigmas": "uniform", "step_size": "sigma - sigma_next", "other_step_size": 0.0}


@pytest.mark.parametrize("change, message", [
    (lambda m: m["few_step"].update(steps=[]), r"few_step.steps=\[\]; must be a non-empty list of increasing"),
    (lambda m: m["few_step"].update(steps=[4, 2]), "increasing integer step counts"),
    (lambda m: m["few_step"].update(steps=[0, 1]), "from 1 to 1000"),
    (lambda m: m["few_step"].update(steps=[1, 2.5]), "increasing integer"),
    (lambda m: m["few_step"].update(steps=[True]), "increasing integer"),
    (lambda m: m["few_step"].update(sigmas="karras"), "few_step.sigmas=\"karras\"; this runtime runs only \"uniform\""),
    (lambda m: m["few_step"].update(step_size="sigma"), "few_step.step_size=\"sigma\""),
    (lambda m: m["few_step"].update(other_step_size=0.1), "few_step.other_step_size=0.1"),
    (lambda m: m["few_step"].update(other_step_size=False), "few_step.other_step_size=false"),
    (lambda m: m["few_step"].pop("sigmas"), "exactly the keys"),
    (lambda m: m["few_step"].update(extra=1), "exactly the keys"),
    (lambda m: m.update(few_step=[1, 2, 4]), "exactly the keys"),
    (lambda m: m.update(format_version=4), "'few_step' needs format_version 5 or newer"),
    (lambda m: m.pop("few_step"), r"graph 'decoder(_region)?' inputs .*step_size.* differ from the contract"),
])
def test_a_malformed_few_step_entry_is_refused(cpp_build, few_step_bundle, tmp_path, change, message):
    """Each case refused by both runtimes; the C++ message says what is wrong and how to fix it."""
    import re

    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    copy = Path(shutil.copytree(few_step_bundle, tmp_path / "b"))
    m = json.loads((copy / "manifest.json").read_text())
    change(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError):
        open_bundle(copy, verify=False)
    out = probe(cpp_build, "bundle", copy, ok=False)
    assert re.search(message, out["message"]), out["message"]
    assert "qk-export" in out["message"] or "upgrade" in out["message"]


def test_a_plain_bundle_with_few_step_added_is_refused(cpp_build, fp32_bundle, tmp_path):
    copy = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    m = json.loads((copy / "manifest.json").read_text())
    m.update(format_version=5, few_step=FEW)
    (copy / "manifest.json").write_text(json.dumps(m))
    message = probe(cpp_build, "bundle", copy, ok=False)["message"]
    assert "differ from the contract" in message and "step_size" in message
