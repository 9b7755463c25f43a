"""benchmarks/gen_failures.py: every asked-for object gets one verdict, and the verdicts agree with qk-eval."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gen_failures.py"


def test_the_breakdown_accounts_for_every_object_and_matches_qk_eval(tiny_checkpoint, tmp_path):
    from qk_train.data.shapeworld import make_generation
    from qk_train.eval.evaluate import evaluate

    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_checkpoint), "--n", "3", "--steps", "2",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "generations, gen_accuracy" in r.stdout
    doc = json.loads(out.read_text())
    assert [rec["caption"] for rec in doc["records"]] == [make_generation("val", i, 32)[1] for i in range(3)]
    assert doc["objects"] == sum(len(rec["objects"]) for rec in doc["records"])
    assert abs(sum(doc["object_verdicts"].values()) - 1) < 0.01
    ref = evaluate(tiny_checkpoint, split="val", n=0, gen_n=3, steps=2, progress=False)
    assert doc["gen_accuracy"] == ref["gen_accuracy"]


def test_a_missing_model_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not a folder" in r.stderr
