"""benchmarks/few_step.py: the table of one model's quality by step count, from qk-eval JSON files."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "few_step.py"


def _eval(strict: float, gen: float) -> dict:
    kinds = {k: strict for k in ("colour", "remove", "insert", "move", "resize")}
    return {"split": "val", "n_edits": 10, "n_generations": 5, "edit_success_strict": {"box": {**kinds, "overall": strict}},
            "edit_success": {"box": {**kinds, "overall": strict + 0.1}}, "gen_accuracy": gen, "drift": {"box": 0.002},
            "seam": {"box": 0.01}, "elapsed_s": 12.0}


def test_rows_by_model_then_step_count(tmp_path):
    (tmp_path / "ft_s20.json").write_text(json.dumps(_eval(0.7, 0.3)))
    (tmp_path / "ft_s4.json").write_text(json.dumps(_eval(0.6, 0.2)))
    (tmp_path / "notes.json").write_text("{}")  # not <label>_s<steps>.json: ignored
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "few_step.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ft |")]
    assert rows[0].startswith("| ft | 4 | 0.600 (0.700) | 0.600") and "| 0.200 | 0.0020 |" in rows[0]
    assert rows[1].startswith("| ft | 20 | 0.700 (0.800) |")


def test_a_file_that_is_not_a_qk_eval_result_is_named(tmp_path):
    (tmp_path / "x_s4.json").write_text('{"hello": 1}')
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "x_s4.json is not a qk-eval JSON" in r.stderr
