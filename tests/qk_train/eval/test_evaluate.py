import json

import numpy as np
import pytest

from qk_train.data.shapeworld import EDIT_KINDS, make_edit
from qk_train.eval.evaluate import Edited, edit_metrics, main
from qk_train.eval.metrics import dilate
from qk_train.eval.paraphrases import paraphrase


def test_qk_eval_writes_every_figure(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_run / "final"), "--n", "5", "--gen-n", "2", "--steps", "2", "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    for setting in ("box", "no_box"):
        table, strict = r["edit_success"][setting], r["edit_success_strict"][setting]
        assert set(table) == set(strict) == {*EDIT_KINDS, "overall"}
        assert all(0.0 <= table[k] <= 1.0 for k in table)
        assert all(0.0 <= strict[k] <= table[k] for k in table)  # a strict success is a success
        assert 0.0 <= r["drift"][setting] <= 1.0 and 0.0 <= r["inside_error"][setting] <= 1.0
        assert r["seam"][setting] is None or 0.0 <= r["seam"][setting] <= 1.0
    assert 0.0 <= r["gen_accuracy"] <= r["gen_accuracy_v1"] <= 1.0 and r["n_edits"] == 5
    assert r["instructions"] == "template"
    line = capsys.readouterr().out
    assert "overall" in line and "strict" in line and "gen_accuracy" in line


def test_qk_eval_with_paraphrased_instructions(tiny_run, tmp_path):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_run / "final"), "--n", "5", "--gen-n", "0", "--steps", "2", "--box-only",
                 "--instructions", "paraphrase", "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["instructions"] == "paraphrase" and set(r["edit_success_strict"]) == {"box"}


class Oracle:
    """An editor that answers every edit with its true target (found from the seed, sample i having
    seed i), gated on the tokens around the true change; `plain` returns images without gates."""

    side = 64

    def __init__(self, plain: bool = False):
        self.plain = plain
        self.instructions: list[str] = []

    def edit_many(self, images, instructions, boxes, seeds):
        self.instructions += instructions
        outs = []
        for image, i in zip(images, seeds):
            s = make_edit("val", i, 64, kind=EDIT_KINDS[i % 5])
            assert np.array_equal(image, s.source)
            touched = s.mask.reshape(8, 8, 8, 8).any(axis=(1, 3))  # (grid 8, grid 8), 8 px tokens
            outs.append(s.target if self.plain else Edited(s.target, dilate(touched, 1)))
        return outs


def test_edit_metrics_of_the_true_targets():
    oracle = Oracle()
    r = edit_metrics(oracle, "val", 10, ["box"], 0, lambda it, desc=None: it)
    assert r["edit_success"]["box"] == r["edit_success_strict"]["box"] == {**{k: 1.0 for k in EDIT_KINDS}, "overall": 1.0}
    assert r["drift"]["box"] == 0.0 and r["seam"]["box"] == 0.0
    assert oracle.instructions == [make_edit("val", i, 64, kind=EDIT_KINDS[i % 5]).instruction for i in range(10)]


def test_edit_metrics_with_paraphrases_and_an_editor_without_gates():
    oracle = Oracle(plain=True)
    r = edit_metrics(oracle, "val", 10, ["no_box"], 0, lambda it, desc=None: it, instructions="paraphrase")
    samples = [make_edit("val", i, 64, kind=EDIT_KINDS[i % 5]) for i in range(10)]
    assert oracle.instructions == [paraphrase(s, i) for i, s in enumerate(samples)]
    assert not set(oracle.instructions) & {s.instruction for s in samples}
    assert r["edit_success_strict"]["no_box"]["overall"] == 1.0 and r["seam"]["no_box"] is None
    with pytest.raises(ValueError, match="instructions='reworded'"):
        edit_metrics(oracle, "val", 1, ["box"], 0, lambda it, desc=None: it, instructions="reworded")


def test_qk_eval_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--json", str(tmp_path / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_qk_eval_runs_a_bundle_through_the_runtime(tiny_run, tmp_path):
    from qk_export.bundle import export_bundle

    bundle = export_bundle(tiny_run / "final", tmp_path / "bundle")
    out = tmp_path / "r.json"
    assert main(["--model", str(bundle), "--n", "2", "--gen-n", "1", "--steps", "2", "--box-only", "--backend", "ort",
                 "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert set(r["edit_success"]) == {"box"} and 0.0 <= r["edit_success"]["box"]["overall"] <= 1.0


def test_qk_eval_with_nothing_to_evaluate_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--n", "0", "--json", str(tmp_path / "r.json")])
    assert exit_.value.code == 2 and "nothing to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_qk_eval_generations_only(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_run / "final"), "--n", "0", "--gen-n", "1", "--steps", "2", "--json", str(out),
                 "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["n_edits"] == 0 and 0.0 <= r["gen_accuracy"] <= 1.0 and 0.0 <= r["gen_accuracy_v1"] <= 1.0
    assert capsys.readouterr().out.startswith("gen_accuracy")


def test_qk_eval_unknown_backend_is_a_clear_error(tmp_path, capsys):
    from qk_train.eval.evaluate import REPO_ROOT

    out = tmp_path / "r.json"
    assert main(["--model", str(REPO_ROOT / "engines" / "default" / "int8"), "--n", "1", "--backend", "fast",
                 "--json", str(out), "--no-progress"]) == 2
    assert "unknown backend 'fast'; choose one of auto" in capsys.readouterr().err
    assert not out.exists()


def test_qk_eval_checks_its_arguments_before_evaluating(tiny_run, tmp_path, capsys):
    (tmp_path / "folder.json").mkdir()
    for extra, message in [(["--json", str(tmp_path / "folder.json")], "is a folder; give a file name"),
                           (["--json", str(tmp_path / "r.json"), "--steps", "0"], "--steps 0: must be an integer from 1"),
                           (["--json", str(tmp_path / "r.json"), "--seed", "-1"], "--seed -1: must be >= 0")]:
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(tiny_run / "final"), "--n", "2", "--no-progress", *extra])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_qk_eval_names_a_damaged_checkpoint(tiny_run, tmp_path, capsys):
    import shutil

    for name, content, message in [("hyperparameters.yaml", "decoder: [", "is not valid YAML"),
                                    ("tokenizer.json", "{bad", "is not a tokenizer file")]:
        ckpt = shutil.copytree(tiny_run / "final", tmp_path / name)
        (ckpt / name).write_text(content)
        assert main(["--model", str(ckpt), "--n", "1", "--json", str(tmp_path / "r.json"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "the checkpoint is damaged" in err and "Traceback" not in err
