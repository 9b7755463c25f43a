"""benchmarks/train_speed.py end to end on the tiny preset with a budget of seconds."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_speed.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_recipe_trains_for_its_budget_and_writes_its_curve(tmp_path):
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("tiny:\n  what: the test preset\n  preset: tiny\n  codec_from: null\n  set: []\n")
    common = ["--recipes", str(recipes), "--results", str(tmp_path / "results")]
    r = _run("--time", "tiny", "--timing-steps", "3", "--timing-warmup", "2", *common)
    assert r.returncode == 0, r.stderr
    times = json.loads((tmp_path / "results" / "step_times.json").read_text())
    assert times["tiny"]["step_seconds"] > 0 and times["tiny"]["steps_timed"] == 3
    # a budget of 40 steps at the measured step time, two points
    budget = 40 * times["tiny"]["step_seconds"] / 60
    r = _run("--recipe", "tiny", "--budget", f"{budget}", "--points", "2", "--n", "5", "--gen-n", "2",
             "--work", str(tmp_path / "work"), *common)
    assert r.returncode == 0, r.stderr
    doc = json.loads(next((tmp_path / "results").glob("tiny-*m.json")).read_text())
    assert [p["step"] for p in doc["points"]] == [20, 40] and doc["total_steps"] == 40
    for p in doc["points"]:
        assert 0 <= p["edit_success"]["overall"] <= 1 and 0 <= p["edit_success_strict"]["overall"] <= 1
        assert p["gen_accuracy"] is not None and p["val_loss"] > 0
    assert doc["points"][1]["val_loss"] < doc["points"][0]["val_loss"] * 1.5
    assert doc["minutes_to_reference"] is None  # no reference.json in this folder
    assert (tmp_path / "work" / "points" / "step-0000040" / "model.safetensors").exists()
    assert "| tiny |" in (tmp_path / "results" / "train_speed.md").read_text()
    # a second call finds the points done and evaluates nothing again
    again = _run("--recipe", "tiny", "--budget", f"{budget}", "--points", "2", "--n", "5", "--gen-n", "2",
                 "--work", str(tmp_path / "work"), *common)
    assert again.returncode == 0 and " step 20 " not in again.stdout


def test_unknown_recipe_is_named(tmp_path):
    r = _run("--recipe", "nope", "--results", str(tmp_path))
    assert r.returncode == 2 and "unknown recipe 'nope'" in r.stderr


def test_the_table_gives_each_levers_verdict_and_the_untried_ones(tmp_path):
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text('fast:\n  what: a lever\n  preset: tiny\n  set: []\n  verdict: "dropped: no gain at 8 minutes"\n'
                       'plain:\n  what: no verdict yet\n  preset: tiny\n  set: []\n'
                       '_not_tried:\n  - registers\n  - patch 1\n')
    (tmp_path / "results").mkdir()
    r = _run("--table", "--recipes", str(recipes), "--results", str(tmp_path / "results"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "results" / "train_speed.md").read_text()
    assert "| fast | dropped: no gain at 8 minutes |" in md and "| plain |" not in md
    assert "Not yet screened at an equal budget: registers; patch 1." in md
    # a notes key is not a recipe
    r = _run("--recipe", "_not_tried", "--recipes", str(recipes), "--results", str(tmp_path / "results"))
    assert r.returncode == 2 and "unknown recipe '_not_tried'" in r.stderr
