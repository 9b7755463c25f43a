"""The pieces of qk-bench that need no model: region boxes, summaries, configuration choice, the
peak graphs, the CLI's errors, and the targets of repeated rounds."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qk_bench.configs import BenchConfig, all_configs, select
from qk_bench.timing import StageClock, summarize
from qk_bench.workload import graph_feeds, manifest_tensors, psnr, region_box


@pytest.mark.parametrize("fraction", [0.05, 0.25, 1.0])
def test_region_box_covers_the_fraction(fraction):
    x0, y0, x1, y1 = region_box(64, fraction, (60.0, 3.0))  # centre near a corner: the box is kept inside
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 == y1 - y0
    assert abs((x1 - x0) * (y1 - y0) / 64 ** 2 - fraction) < 0.02
    with pytest.raises(ValueError, match="fraction"):
        region_box(64, 0.0, (32, 32))


def test_summary_and_psnr():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 5.0, 5)
    assert s["p90"] == pytest.approx(4.6) and s["p99"] == pytest.approx(4.96)
    assert summarize([])["median"] is None
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one of 48 values off by 255: MSE 255^2 / 48
    assert psnr(a, a) == 100.0 and psnr(a, b) == pytest.approx(10 * np.log10(48))
    clock = StageClock()
    clock.mark("a")
    clock.mark("b")
    times = clock.read()
    assert set(times) == {"a", "b", "total"} and times["total"] >= times["a"] >= 0


def test_graph_feeds_follow_the_spec():
    spec = manifest_tensors([{"name": "x", "dtype": "float32", "shape": ["batch", 4, 2, 2]},
                             {"name": "text_mask", "dtype": "float32", "shape": ["batch", 12]},
                             {"name": "active", "dtype": "int64", "shape": ["batch", "active"]}])
    feeds = graph_feeds(spec, 3, active=5)
    assert feeds["x"].shape == (3, 4, 2, 2) and feeds["x"].dtype == np.float32
    assert feeds["text_mask"].sum() == 3 * 8
    assert feeds["active"].tolist() == [[0, 1, 2, 3, 4]] * 3


def test_selection_and_skip_reasons():
    run, skipped = select(None, quick=False, flags={"avx2", "fma"})
    reasons = {s.name: s.reason for s in skipped}
    assert "ov-bf16-dense" in reasons and "BF16" in reasons["ov-bf16-dense"]
    assert "trt-fp16" in reasons
    assert run[0].name == "torch-fp32-eager"  # the reference runs first
    if importlib.util.find_spec("openvino") is not None:
        with_bf16, _ = select(["ov-bf16-*"], quick=False, flags={"avx512_bf16"})
        assert {c.name for c in with_bf16} == {"ov-bf16-dense", "ov-bf16-window", "ov-bf16-region"}
    quick, quick_skipped = select(["*-window", "torch-*"], quick=True, flags=set())
    assert [c.name for c in quick] == ["torch-fp32-eager"]
    assert {s.name for s in quick_skipped if "--quick" in s.reason} == {"torch-fp32-compile", "ort-fp32-window",
                                                                       "ort-int8-window", "ov-fp32-window", "ov-int8-window"}
    with pytest.raises(ValueError, match="matches no configuration"):
        select(["ort-fp64-*"], quick=False, flags=set())


def test_bundle_variants():
    by_name = {c.name: c for c in all_configs()}
    assert by_name["ort-int8-dense"].bundle_variant == "int8-region"  # dense runs the region bundle's decoder.onnx
    assert by_name["ov-bf16-window"].bundle_variant == "fp32-window"  # bf16 is a hint on the FP32 bundle
    assert by_name["torch-fp32-eager"].bundle_variant is None
    assert BenchConfig("x", "runtime", "ort-cpu", "fp32", "region").session_sparse == "region"


def test_peak_graphs_compute_a_product():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from qk_bench.peak import matmul_model, ort_runner

    a = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    for kind in ("fp32", "int8-qdq"):
        model = matmul_model(kind, 8, 16, 4)
        w = {t.name: t for t in model.graph.initializer}
        out = ort_runner(model.SerializeToString(), 1)({"A": a})[0]
        assert out.shape == (8, 4) and np.isfinite(out).all()
        if kind == "fp32":
            from onnx import numpy_helper

            np.testing.assert_allclose(out, a @ numpy_helper.to_array(w["W"]), rtol=1e-5, atol=1e-5)


def test_cli_errors(tmp_path, capsys):
    from qk_bench.cli import main

    assert main(["--model", str(tmp_path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert main(["--configs", "nonsense-*", "--prepare-only", "--cache", str(tmp_path / "c")]) == 2
    assert "matches no configuration" in capsys.readouterr().err
    assert main(["--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert main(["--regions", "0,25"]) == 2  # argparse: a region of 0 % is refused
    assert main(["--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["--threads", "100000", "--prepare-only", "--cache", str(tmp_path / "c")]) == 2
    assert "--threads=100000; must be an integer from 1 to" in capsys.readouterr().err
    assert main(["--machine", "../elsewhere", "--prepare-only"]) == 2  # it names a folder under results/
    assert "--machine '../elsewhere' names the results folder" in capsys.readouterr().err


def _target(key: str, value: float | None) -> dict:
    from qk_bench.report import TARGETS

    return {"target": key, "what": key, "measured": value, "goal": TARGETS[key],
            "met": None if value is None else value >= TARGETS[key], "detail": f"figures {value}"}


def test_median_round_targets_odd_count():
    from qk_bench.report import median_round_targets

    rounds = [[_target("best_vs_torch", 5.6), _target("region25_vs_dense", 2.6), _target("best_fraction_of_peak", 0.5)],
              [_target("best_vs_torch", 4.8), _target("best_fraction_of_peak", 0.3)],  # round 2 lacks the region target
              [_target("best_vs_torch", 5.2), _target("region25_vs_dense", 2.4), _target("best_fraction_of_peak", 0.45)]]
    out = {t["target"]: t for t in median_round_targets(rounds)}
    assert list(out) == ["best_vs_torch", "region25_vs_dense", "best_fraction_of_peak"]
    t = out["best_vs_torch"]
    assert (t["measured"], t["round"], t["rounds"], t["met"]) == (5.2, 3, [5.6, 4.8, 5.2], True)
    assert t["detail"] == "median of 3 rounds (5.60x, 4.80x, 5.20x), round 3's figures: figures 5.2"
    r = out["region25_vs_dense"]  # two values: the lower one, which misses the goal that round 1 met
    assert (r["measured"], r["round"], r["rounds"], r["met"]) == (2.4, 3, [2.6, None, 2.4], False)
    assert r["detail"].startswith("median of 2 of 3 rounds (2.60x, –, 2.40x), round 3's")
    f = out["best_fraction_of_peak"]
    assert (f["measured"], f["round"], f["met"]) == (0.45, 3, True) and "(50%, 30%, 45%)" in f["detail"]
    assert rounds[2][0]["detail"] == "figures 5.2" and "rounds" not in rounds[2][0]  # the rounds' own entries stay as they were


@pytest.mark.parametrize("values, chosen", [([5.1, 4.9], (4.9, 2)), ([5.6, 4.8, 5.2, 4.9], (4.9, 4)),
                                            ([5.0, 5.0], (5.0, 1)), ([4.0], (4.0, 1))])
def test_median_round_targets_even_count_takes_the_lower_middle(values, chosen):
    from qk_bench.report import median_round_targets

    (t,) = median_round_targets([[_target("best_vs_torch", v)] for v in values])
    assert (t["measured"], t["round"]) == chosen and t["rounds"] == values
    assert t["met"] is (chosen[0] >= 5.0)


def _fake_result(name: str, sparse: str, ms: float, engine: str = "runtime") -> dict:
    """What a config worker returns, as far as `flatten` and `targets` read it (no bundle: no FLOPs, no peak)."""
    def stat(v: float, n: int) -> dict:
        return {"median": v, "p90": v, "p99": v, "n": n}

    config = {"name": name, "engine": engine, "backend": "torch" if engine == "torch" else "ort-cpu", "precision": "fp32",
              "sparse": sparse, "compile": False, "peer": False}
    row = {"fraction": 0.25, "box_fraction": 0.25, "active_tokens": 8 if sparse == "region" else None,
           "edit_ms": stat(ms, 4), "stages_ms": {"decoder": stat(0.8 * ms, 4)}, "decoder_step_ms": stat(ms / 25, 80)}
    return {"config": config, "edit_batch": 2, "fractions": [row]}


def _fake_round(torch_ms: float, dense_ms: float, region_ms: float) -> list[dict]:
    return [_fake_result("torch-fp32-eager", "dense", torch_ms, engine="torch"),
            _fake_result("ort-fp32-dense", "dense", dense_ms), _fake_result("ort-fp32-region", "region", region_ms)]


def _assemble(results: list[dict], rounds=None) -> dict:
    from qk_bench.report import assemble

    machine = {"id": "test", "cpu_model": "cpu", "cpu_cores": 2, "cpu_flags_key": [], "memory_gb": 1, "gpu": None,
               "versions": {}, "load_average_at_start": [0.0]}
    settings = {"steps": 20, "threads": 2, "repeats": 4, "micro_repeats": 8, "quality_n": 0, "calib_samples": 16}
    doc = assemble(machine=machine, settings=settings, imports={}, info={}, peak={}, results=results, skipped=[],
                   bundle_info={}, scaling=None, rounds=rounds)
    doc["run"]["wall_s"] = 60.0
    return doc


def test_assemble_with_rounds():
    from qk_bench.cli import summary
    from qk_bench.report import markdown

    one = _assemble(_fake_round(1000, 200, 100))
    assert "rounds" not in one and all("rounds" not in t and "round" not in t for t in one["targets"])
    assert {t["target"]: t["measured"] for t in one["targets"]} == {"best_vs_torch": 10.0, "region25_vs_dense": 2.0}
    assert "(ratios from this one run)" in markdown(one) and "## Rounds" not in markdown(one)

    # region vs dense: 2.0, 3.0, 2.75 -> round 3; best vs torch: 10, 11.1, 8.3 -> round 1
    doc = _assemble(_fake_round(1000, 200, 100), rounds=[(_fake_round(1000, 270, 90), None),
                                                         (_fake_round(1000, 330, 120), None)])
    assert doc["configs"] == one["configs"]  # the rows stay round 1's
    assert doc["rounds"]["n"] == 3 and [p["round"] for p in doc["rounds"]["per_round"]] == [1, 2, 3]
    assert doc["rounds"]["per_round"][1]["edit_ms"] == {"torch-fp32-eager": 1000, "ort-fp32-dense": 270, "ort-fp32-region": 90}
    assert doc["rounds"]["per_round"][0]["targets"] == one["targets"]
    targets = {t["target"]: t for t in doc["targets"]}
    assert (targets["best_vs_torch"]["round"], targets["best_vs_torch"]["measured"]) == (1, 10.0)
    assert (targets["region25_vs_dense"]["round"], targets["region25_vs_dense"]["measured"]) == (3, 2.75)
    assert targets["region25_vs_dense"]["met"] is True and targets["region25_vs_dense"]["rounds"] == [2.0, 3.0, 2.75]
    text = markdown(doc)
    assert "## Targets (median of 3 interleaved rounds)" in text and "## Rounds" in text
    assert "| ort-fp32-dense | 200 | 270 | 330 |" in text
    assert "| 2 | 11.11x | 3.00x | ort-fp32-region 90 |" in text and "| 3 | 8.33x | **2.75x** | ort-fp32-region 120 |" in text
    assert "region25_vs_dense 2.75x median of 3 (2.00-3.00x) (met)" in summary(doc)

    failed = _assemble(_fake_round(1000, 200, 100), rounds=[([{"config": {"name": "ort-fp32-dense"}, "error": "boom"}], None)])
    assert failed["failed"] == [{"name": "ort-fp32-dense", "error": "boom", "round": 2}]
    assert failed["targets"][0]["rounds"] == [10.0, None]


def test_spin_switches_every_engine(tmp_path, monkeypatch):
    """--spin: torch workers get OMP_WAIT_POLICY=ACTIVE (PASSIVE otherwise, even if the caller's
    environment left it unset), and the option reaches the run's settings."""
    from qk_bench.cli import build_parser, options_from
    from qk_bench.suite import worker_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert worker_env(tmp_path, "x")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert worker_env(tmp_path, "x", spin=True)["OMP_WAIT_POLICY"] == "ACTIVE"
    assert options_from(build_parser().parse_args(["--spin"])).spin is True
    assert options_from(build_parser().parse_args([])).spin is False
