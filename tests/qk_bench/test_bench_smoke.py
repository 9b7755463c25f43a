"""qk-bench end to end on the tiny preset (one quick run, shared): the files, the JSON's keys,
positive stage times, and the figures that tie the configurations together."""
from __future__ import annotations

import json

ROW_KEYS = {"name", "backend", "precision", "sparse", "region_fraction", "edit_ms_median", "decoder_step_ms_median",
            "peak_rss_mb", "edit_success", "drift", "edit_ms_p90", "edit_ms_p99", "edits_per_s", "stages_ms_median",
            "decoder_step_b1_ms_median", "decoder_step_eb_ms_median", "edit_batch", "psnr_vs_torch_db", "fraction_of_peak", "floor_ms"}
RUN_STAGES = ("text_encoder", "gateway", "cmg", "decoder", "total")  # every engine runs these networks
CODEC_STAGES = ("image_encoder", "image_decoder")  # graphs in a bundle; the tiny torch codec is the identity (no network)


def test_writes_every_output(smoke_run):
    names = {p.name for p in smoke_run["out_dir"].iterdir()}
    assert {"bench.json", "bench.md", "bench.png", "scaling.json", "scaling.png"} <= names
    assert smoke_run["json"].is_file()
    assert json.loads((smoke_run["out_dir"] / "bench.json").read_text())["configs"] == smoke_run["doc"]["configs"]
    assert (smoke_run["out_dir"] / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_has_machine_and_configs(smoke_run):
    doc = smoke_run["doc"]
    assert doc["machine"]["id"] == "cpu-2core" and doc["machine"]["cpu_model"]
    assert "onnxruntime" in doc["machine"]["versions"]
    assert not doc["failed"], doc["failed"]
    names = {r["name"] for r in doc["configs"]}
    assert names == {"torch-fp32-eager", "ort-fp32-dense", "ort-fp32-region", "ort-int8-dense", "ov-fp32-dense",
                     "ov-int8-dense", "peer-ov-int8-plain"}  # conftest.SMOKE_CONFIGS
    for row in doc["configs"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["region_fraction"] == 0.25  # --quick runs the 25 % region only
        assert 0.0 <= row["edit_success"] <= 1.0 and row["drift"] >= 0.0
    skipped = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == set()  # --configs named only configurations that run here


def test_every_stage_time_is_positive(smoke_run):
    for row in smoke_run["doc"]["configs"]:
        stages = row["stages_ms_median"]
        for stage in RUN_STAGES + (CODEC_STAGES if row["engine"] != "torch" else ()):
            assert stages[stage] > 0, (row["name"], stage, stages[stage])
        assert row["decoder_step_ms_median"] > 0 and row["decoder_step_b1_ms_median"] > 0
        assert row["decoder_step_eb_ms_median"] > 0
        # the bundles' default image guidance is 1: two guidance branches; the plain peer runs all three
        assert row["edit_batch"] == (3 if row["name"].startswith("peer-") else 2), row["name"]
        assert sum(stages[s] for s in stages if s not in ("total",)) <= stages["total"] * 1.001
        per = smoke_run["doc"]["per_config"][row["name"]]
        assert per["cold_start_ms"] > 0 and per["peak_rss_mb"] > 0


def test_figures_relate_the_configurations(smoke_run):
    doc = smoke_run["doc"]
    rows = {r["name"]: r for r in doc["configs"]}
    torch_row, ort = rows["torch-fp32-eager"], rows["ort-fp32-dense"]
    assert torch_row["speedup_vs_torch"] == 1.0
    assert abs(ort["speedup_vs_torch"] - torch_row["edit_ms_median"] / ort["edit_ms_median"]) < 1e-9
    assert ort["psnr_vs_torch_db"] >= 40  # same model, FP32: within a level or two of the reference
    assert rows["ort-fp32-region"]["active_tokens"] in (2, 4, 6, 8, 10, 12, 14, 16)  # a bucket (eighths) of the 16 tokens
    assert {t["target"] for t in doc["targets"]} == {"best_vs_torch", "int8_vs_torch", "best_vs_peer", "int8_vs_peer",
                                                    "int8_vs_fp32_step", "region25_vs_dense", "best_fraction_of_peak"}
    int8_rows = [r for r in doc["configs"] if r["precision"] == "int8" and not r["peer"] and r["engine"] != "torch"
                 and r["region_fraction"] == 0.25]
    fastest = min(int8_rows, key=lambda r: r["edit_ms_median"])
    int8_target = next(t for t in doc["targets"] if t["target"] == "int8_vs_torch")
    assert abs(int8_target["measured"] - fastest["speedup_vs_torch"]) < 1e-9 and fastest["name"] in int8_target["detail"]
    assert doc["peak"]["peak"]["ort-cpu"]["fp32"] > 0 and doc["peak"]["peak"]["ort-cpu"]["int8"] > 0
    assert all(0 < r["fraction_of_peak"] for r in doc["configs"])
    assert all(c["analytic"] == c["counted"] for c in doc["flops_check"]) and doc["flops_check"]


def test_scaling_points(smoke_run):
    scaling = json.loads((smoke_run["out_dir"] / "scaling.json").read_text())
    points = {(p["side"], p["mode"]): p for p in scaling["points"]}
    assert set(points) == {(64, "dense"), (64, "region"), (128, "dense"), (128, "region")}
    assert points[(128, "dense")]["tokens"] == 4 * points[(64, "dense")]["tokens"]
    assert points[(128, "dense")]["gflop"] > points[(64, "dense")]["gflop"]
    assert all(p["step_ms_median"] > 0 and p["gflop"] == p["gflop_counted"] for p in scaling["points"])
