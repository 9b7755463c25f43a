"""qk-study on the tiny preset: every arm trained, evaluated and tabulated with intervals; resuming skips finished work."""
import json
import re
import shutil

import numpy as np
import pytest

from qk_train import study
from qk_train.study.stats import OVER_ITEMS, mean_interval
from qk_train.train import resolve_config

ARGS = ["--preset", "tiny", "--steps", "2", "--seeds", "0", "--n", "5", "--gen-n", "3", "--sample-steps", "1",
        "--stability-seeds", "2", "--probe-n", "5", "--no-progress"]
TRAINED = ["full", "no_cmg", "no_gateway", "dual", "depth2", "depth4", "edit_w0.5", "edit_w2", "probe"]  # tiny: depth1, edit_w1 = full


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("study")
    args = ARGS + ["--out", str(root / "runs"), "--json", str(root / "study.json")]
    assert study.main(args) == 0
    return root, args


def _load(root):
    return json.loads((root / "study.json").read_text()), (root / "study.md").read_text()


def _table_rows(md: str) -> dict[str, list[str]]:
    """The arms table: arm name -> cells, keyed by the header."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| arm |")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in md.splitlines():
        m = re.match(r"\| `([^`]+)` \|", ln)
        if m:
            rows[m.group(1)] = dict(zip(header, [c.strip() for c in ln.strip("|").split("|")]))
    return rows


def test_every_arm_is_trained_evaluated_and_tabulated(smoke):
    root, _ = smoke
    r, md = _load(root)
    names = [a["name"] for a in r["arms"]]
    assert names == ["full", "no_cmg", "no_gateway", "dual", "depth1", "depth2", "depth4", "edit_w0.5", "edit_w1", "edit_w2", "probe"]
    assert sorted(r["this_call"]["trained"]) == sorted(
        [f"{a}/seed0/model" for a in TRAINED if a != "dual"] + ["dual/seed0/gen", "dual/seed0/edit"])
    assert sorted(r["this_call"]["evaluated"]) == sorted(f"{a}/seed0" for a in TRAINED)
    for name in TRAINED:
        roles = ["gen", "edit"] if name == "dual" else ["model"]
        for role in roles:
            assert (root / "runs" / name / "seed0" / role / "final" / "model.safetensors").exists()
        assert (root / "runs" / name / "seed0" / "eval.json").exists()
    by = {a["name"]: a for a in r["arms"]}
    assert by["depth1"]["alias_of"] == "full" and by["depth1"]["edit_success"] == by["full"]["edit_success"]
    for a in r["arms"]:
        assert a["seeds"] == [0]
        for key in ("edit_success", "drift", "fd"):
            assert a[key] is not None and a["per_seed"][key] == [a[key]] and a["spread"][key]["min"] == a[key]
        assert 0.0 <= a["edit_success"] <= 1.0 and 0.0 <= a["drift"] <= 1.0 and a["fd"] >= 0.0
    # the gate's overlap with the true change mask exists exactly where there is a CMG
    assert by["full"]["gate_iou"] is not None and by["no_cmg"]["gate_iou"] is None
    assert by["dual"]["gate_iou"] is not None  # the editing model has a CMG
    # the dual pair matches full's size within a fifth (tiny: the trainable text encoder is duplicated)
    assert 0.8 <= r["dual_sizing"]["ratio"] <= 1.25
    # the probe figures, for the probe arm and for full
    for name in ("probe", "full"):
        assert by[name]["probe_held_out_pairs"] is not None and by[name]["probe_background"] is not None
    # smoke, loudly
    assert r["smoke"] and "tiny" in " ".join(r["smoke_reasons"])
    assert md.count("TINY SMOKE RUN - NOT EVIDENCE") >= 2
    assert all("SMOKE RUN: NOT EVIDENCE" in c["verdict"] for c in r["claims"])
    assert r["command"].startswith("qk-study --preset tiny") and r["wall_s"]["total_compute"] > 0 and r["machine"]["cores"]


def test_the_tables_numbers_are_the_jsons(smoke):
    root, _ = smoke
    r, md = _load(root)
    rows = _table_rows(md)
    assert set(rows) == {a["name"] for a in r["arms"]}
    for a in r["arms"]:
        for header, metric, digits in study.TABLE_COLUMNS:
            cell = rows[a["name"]][header]
            if a[metric] is None:
                assert cell == "-", (a["name"], header)
            else:
                assert float(cell.split()[0]) == pytest.approx(a[metric], abs=0.51 * 10 ** -digits), (a["name"], header)
    claims = [ln for ln in md.splitlines() if ln.startswith("| CMG cuts")]
    full, no_cmg = (next(a for a in r["arms"] if a["name"] == n) for n in ("full", "no_cmg"))
    assert f"{full['drift']:.4f} (full) vs {no_cmg['drift']:.4f} (no_cmg)" in claims[0]
    for claim in ("Unified beats dual", "Users prefer", "LPIPS", "Edit success per task", "Joint training", "Generalizes"):
        assert any(c["claim"].startswith(claim) for c in r["claims"]), claim


def test_the_study_carries_intervals_from_per_item_outcomes(smoke):
    root, _ = smoke
    r, md = _load(root)
    assert r["statistics"]["resamples"] == 2000 and r["statistics"]["level"] == 0.95
    assert "holds" in r["statistics"]["verdict_rule"] and "contradicted" in r["statistics"]["verdict_rule"]
    for a in r["arms"]:
        for key in ("edit_success", "edit_success_strict", "drift", "gen_accuracy", "colour_drift", "stable_share"):
            iv = a["ci95"][key]
            assert iv["lo"] - 1e-6 <= a[key] <= iv["hi"] + 1e-6 and iv["over"] == OVER_ITEMS, (a["name"], key)
        assert a["ci95"]["fd"]["lo"] is None and "one training seed" in a["ci95"]["fd"]["over"]  # one seed: no FD-SW interval
    # each arm-seed's eval.json keeps the per-item outcomes: they give qk-eval's figures and the JSON's intervals back
    full = next(a for a in r["arms"] if a["name"] == "full")
    rec = json.loads((root / "runs" / "full" / "seed0" / "eval.json").read_text())
    box = rec["outcomes"]["edits"]["box"]
    assert len(box["success"]) == len(box["strict"]) == len(box["drift"]) == 5 and set(box["success"] + box["strict"]) <= {0, 1}
    assert len(rec["outcomes"]["generations"]["correct"]) == 3 and len(rec["outcomes"]["edits"]["no_box"]["success"]) == 5
    assert np.mean(box["success"]) == full["edit_success"] and np.mean(box["drift"]) == pytest.approx(full["drift"], abs=1e-5)
    assert mean_interval([box["drift"]]).lo == pytest.approx(full["ci95"]["drift"]["lo"], abs=1e-6)
    dual = json.loads((root / "runs" / "dual" / "seed0" / "eval.json").read_text())["outcomes"]
    assert len(dual["edits"]["box"]["success"]) == 5 and len(dual["generations"]["correct"]) == 3  # edit model, gen model
    # the claims: effects with intervals, the scale, the rule under the table
    cmg = next(c for c in r["claims"] if c["claim"].startswith("CMG cuts"))
    e = cmg["effects"][0]
    assert e["lo"] <= e["estimate"] <= e["hi"] and e["figure"] == pytest.approx(1 / 3) and "95 % CI" in cmg["ours"]
    assert cmg["scale"] == "preset tiny, 2 steps, 1 seed(s), 5 edits"
    assert "| claim | article | ours (95 % interval) | verdict | measured at |" in md
    assert study.VERDICT_RULE in md and "2,000 resamples" in md
    drift_cell = _table_rows(md)["full"]["drift"]
    assert drift_cell == f"{full['drift']:.4f} [{full['ci95']['drift']['lo']:.4f}, {full['ci95']['drift']['hi']:.4f}]"


def test_resuming_skips_finished_arms_and_redoes_only_what_is_missing(smoke):
    root, args = smoke
    evals = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/seed0/eval.json")}
    finals = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/seed0/*/final/model.safetensors")}
    assert study.main(args) == 0
    r, _ = _load(root)
    assert r["this_call"]["trained"] == [] and r["this_call"]["evaluated"] == []
    assert len(r["this_call"]["skipped"]) == len(evals) + len(finals)
    assert {p: p.stat().st_mtime_ns for p in evals} == evals and {p: p.stat().st_mtime_ns for p in finals} == finals

    (root / "runs" / "no_cmg" / "seed0" / "eval.json").unlink()
    assert study.main(args) == 0
    r, _ = _load(root)
    assert r["this_call"]["trained"] == [] and r["this_call"]["evaluated"] == ["no_cmg/seed0"]


def test_a_study_folder_refuses_another_config(smoke, capsys):
    root, args = smoke
    assert study.main(args + ["--set", "train.lr=0.01"]) == 2
    assert "rerun with those, or use a new --out" in capsys.readouterr().err


def _json_files_only(root, dest):
    """The study folder as the next machine sees it: OUT's small files (the ones a study commits), no model folder."""
    runs = root / "runs"
    for src in [*runs.glob("*.json"), *runs.glob("*/seed*/eval.json")]:
        target = dest / "runs" / src.relative_to(runs)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return ARGS + ["--out", str(dest / "runs"), "--json", str(dest / "study.json")]


def test_a_study_resumes_from_its_json_files_without_its_models(smoke, tmp_path):
    root, _ = smoke
    before, md_before = _load(root)
    args = _json_files_only(root, tmp_path)
    evals = {p.relative_to(root / "runs"): p.read_bytes() for p in (root / "runs").glob("*/seed0/eval.json")}
    assert study.main(args) == 0
    r, md = _load(tmp_path)
    done = r["this_call"]
    assert done["trained"] == [] and done["evaluated"] == []
    members = [f"{a}/seed0/{role}" for a in TRAINED for role in (["gen", "edit"] if a == "dual" else ["model"])]
    assert sorted(done["skipped"]) == sorted([f"train {m}" for m in members] + [f"eval {a}/seed0" for a in TRAINED])
    assert sorted(done["reused_without_models"]) == sorted(f"{a}/seed0" for a in TRAINED)
    for a in TRAINED:  # no model folder was made again, and the stored evaluation is untouched
        assert [p.name for p in (tmp_path / "runs" / a / "seed0").iterdir()] == ["eval.json"]
    assert {p: (tmp_path / "runs" / p).read_bytes() for p in evals} == evals
    # the same figures, intervals, claims, train info and compute total as the study that trained the models
    assert r["arms"] == before["arms"] and r["claims"] == before["claims"]
    assert r["wall_s"]["total_compute"] == before["wall_s"]["total_compute"]
    assert _table_rows(md) == _table_rows(md_before)
    full = next(a for a in r["arms"] if a["name"] == "full")
    assert full["train"][0]["steps"] == 2 and any(k.startswith("s_per_step_") for k in full["train"][0])


def test_a_stored_evaluation_of_another_config_does_not_stand_in_for_its_models(smoke, tmp_path, capsys):
    root, _ = smoke
    args = _json_files_only(root, tmp_path)
    assert study.main(args + ["--set", "train.lr=0.01"]) == 2  # the kept study_config.json refuses first
    assert "rerun with those, or use a new --out" in capsys.readouterr().err
    (tmp_path / "runs" / "study_config.json").unlink()  # without it, the arm-seed's own configs refuse
    assert study.main(args + ["--set", "train.lr=0.01", "--arms", "full"]) == 0
    r, _ = _load(tmp_path)
    assert r["this_call"]["trained"] == ["full/seed0/model"] and r["this_call"]["evaluated"] == ["full/seed0"]
    assert r["this_call"]["reused_without_models"] == []
    err = capsys.readouterr().err
    assert "full/seed0: its models are absent" in err and "train.lr 0.001, now 0.01" in err


def test_other_eval_settings_or_a_record_without_configs_retrain_the_arm(smoke, tmp_path, capsys):
    root, _ = smoke
    args = _json_files_only(root, tmp_path / "a")
    assert study.main(args + ["--arms", "full", "--stability-seeds", "1"]) == 0
    r, _ = _load(tmp_path / "a")
    assert r["this_call"]["trained"] == ["full/seed0/model"] and r["this_call"]["evaluated"] == ["full/seed0"]
    assert "other evaluation settings (stability_seeds 2, now 1)" in capsys.readouterr().err

    args = _json_files_only(root, tmp_path / "b")
    path = tmp_path / "b" / "runs" / "full" / "seed0" / "eval.json"
    rec = json.loads(path.read_text())
    del rec["configs"], rec["train"]  # as eval.json was written before it kept them
    path.write_text(json.dumps(rec))
    assert study.main(args + ["--arms", "full"]) == 0
    r, _ = _load(tmp_path / "b")
    assert r["this_call"]["trained"] == ["full/seed0/model"]
    assert "does not hold its models' training configs" in capsys.readouterr().err


def test_an_older_evaluation_gains_its_configs_while_its_models_are_there(smoke, tmp_path):
    root, _ = smoke
    out = tmp_path / "runs"
    shutil.copytree(root / "runs" / "full", out / "full")
    shutil.copyfile(root / "runs" / "study_config.json", out / "study_config.json")
    path = out / "full" / "seed0" / "eval.json"
    full = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in full.items() if k not in ("configs", "train")}))
    args = ARGS + ["--out", str(out), "--json", str(tmp_path / "study.json"), "--arms", "full"]
    assert study.main(args) == 0
    r, _ = _load(tmp_path)
    assert r["this_call"]["trained"] == [] and r["this_call"]["evaluated"] == []  # the model hash still decides
    rec = json.loads(path.read_text())
    assert rec["configs"] == full["configs"] and rec["train"] == full["train"] and rec["key"] == full["key"]


@pytest.mark.parametrize("text, says", [
    ("{not json", "cannot read a stored evaluation"),
    ("[1, 2]", "should be a JSON object, found list"),
    ('{"key": {"version": 2}}', "is not a qk-study evaluation (missing or malformed: ['qk_eval', 'outcomes', 'details'])"),
    (None, "the evaluation's figures cannot be read (KeyError: 'box')"),
])
def test_a_malformed_stored_evaluation_is_a_clear_error(smoke, tmp_path, capsys, text, says):
    root, _ = smoke
    args = _json_files_only(root, tmp_path)
    path = tmp_path / "runs" / "no_cmg" / "seed0" / "eval.json"
    if text is None:
        rec = json.loads(path.read_text())
        del rec["outcomes"]["edits"]["box"]
        text = json.dumps(rec)
    path.write_text(text)
    assert study.main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and says in err and "restore it (e.g. git checkout -- " in err


def test_unknown_arm_and_bad_seeds_are_clear_errors(tmp_path, capsys):
    assert study.main(ARGS + ["--out", str(tmp_path / "r"), "--json", str(tmp_path / "s.json"), "--arms", "full,nope"]) == 2
    assert "unknown arm(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--seeds", "0,0"])
    assert "distinct integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # before: ignored, and the whole study ran
        study.main(ARGS + ["--out", str(tmp_path / "r"), "--json", str(tmp_path / "s.json"), "--measure", "2"])
    assert "--measure only times steps for --plan" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_seed_stats_reports_the_spread():
    st = study.seed_stats([0.4, 0.5, 0.6])
    assert st["mean"] == pytest.approx(0.5) and st["min"] == 0.4 and st["max"] == 0.6 and st["std"] == pytest.approx(0.1)
    assert study.seed_stats([0.3, None]) is None


def test_dual_sizing_matches_the_small_preset_within_two_percent():
    sizing = study.dual_sizing(resolve_config("small", [], None))
    assert abs(sizing["ratio"] - 1.0) < 0.02 and sizing["width"] < sizing["full_width"]
