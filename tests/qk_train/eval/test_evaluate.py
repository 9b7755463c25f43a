import json

from qk_train.data.shapeworld import EDIT_KINDS
from qk_train.eval.evaluate import main


def test_qk_eval_writes_every_figure(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_run / "final"), "--n", "5", "--gen-n", "2", "--steps", "2", "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    for setting in ("box", "no_box"):
        table = r["edit_success"][setting]
        assert set(table) == {*EDIT_KINDS, "overall"}
        assert all(0.0 <= table[k] <= 1.0 for k in table)
        assert 0.0 <= r["drift"][setting] <= 1.0 and 0.0 <= r["inside_error"][setting] <= 1.0
    assert 0.0 <= r["gen_accuracy"] <= 1.0 and r["n_edits"] == 5
    assert "overall" in capsys.readouterr().out


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
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--n", "0", "--json", str(tmp_path / "r.json")])
    assert exit_.value.code == 2 and "nothing to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_qk_eval_generations_only(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_run / "final"), "--n", "0", "--gen-n", "1", "--steps", "2", "--json", str(out),
                 "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["n_edits"] == 0 and 0.0 <= r["gen_accuracy"] <= 1.0
    assert capsys.readouterr().out.startswith("gen_accuracy")


def test_qk_eval_unknown_backend_is_a_clear_error(tmp_path, capsys):
    from qk_train.eval.evaluate import REPO_ROOT

    out = tmp_path / "r.json"
    assert main(["--model", str(REPO_ROOT / "engines" / "default" / "int8"), "--n", "1", "--backend", "fast",
                 "--json", str(out), "--no-progress"]) == 2
    assert "unknown backend 'fast'; choose one of auto" in capsys.readouterr().err
    assert not out.exists()


def test_qk_eval_checks_its_arguments_before_evaluating(tiny_run, tmp_path, capsys):
    import pytest

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
