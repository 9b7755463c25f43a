"""benchmarks/showcase.py on the shipped INT8 bundle: the picture shows the bundle's own outputs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "showcase.py"
BUNDLE = REPO / "engines" / "default" / "int8"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _tile(picture: np.ndarray, box, scale: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return picture[y0:y1:scale, x0:x1:scale]  # (side, side, 3): one pixel per image pixel


def test_the_picture_holds_the_bundles_edit_and_generation(tmp_path):
    from qk_runtime import EditSession
    from qk_train.data.shapeworld import make_edit, make_generation

    out = tmp_path / "showcase.png"
    r = _run("--bundle", str(BUNDLE), "--out", str(out), "--steps", "2", "--kinds", "colour", "--gen-indices", "1",
             "--threads", "1", "--scale", "2")
    assert r.returncode == 0, r.stderr
    assert "edits passing the strict rule" in r.stdout
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [(row["task"], row["index"]) for row in doc["rows"]] == [("edit", 0), ("generate", 1)]
    picture = np.asarray(Image.open(out).convert("RGB"))

    sample = make_edit("val", 0, 64, kind="colour")
    _, caption, _ = make_generation("val", 1, 64)
    with EditSession(BUNDLE, backend="ort-cpu", threads=1) as s:
        edited = s.edit(sample.source, sample.instruction, box=sample.box, steps=2, seed=0).image
        generated = s.generate(caption, steps=2, seed=1).image
    edit_row, gen_row = doc["rows"]
    assert edit_row["text"] == sample.instruction and gen_row["text"] == caption
    np.testing.assert_array_equal(_tile(picture, edit_row["tiles"]["output"], 2), edited)
    np.testing.assert_array_equal(_tile(picture, edit_row["tiles"]["expected"], 2), sample.target)
    np.testing.assert_array_equal(_tile(picture, gen_row["tiles"]["output"], 2), generated)
    assert "source" not in gen_row["tiles"]


def test_bad_arguments_exit_2_naming_what_is_allowed(tmp_path):
    r = _run("--kinds", "recolour", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "colour" in r.stderr and "remove" in r.stderr
    r = _run("--out", str(tmp_path / "x.jpg"))
    assert r.returncode == 2 and ".png" in r.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()
