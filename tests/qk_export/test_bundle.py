import json
import shutil

import pytest
import yaml

from qk_export.bundle import SPARSE_MODES, ExportError, export_bundle, is_bundle
from qk_export.cli import main
from qk_export.parity import FP32_BOUND
from qk_runtime.contract import graph_specs, Dims
from qk_train.checkpoint import sha256_file
from qk_train.pipeline import Pipeline

GRAPHS = {"text_encoder", "image_encoder", "image_decoder", "gateway", "cmg", "decoder_cond", "decoder"}


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_manifest_lists_every_graph_with_its_contract_and_profiles(bundles, tiny_checkpoint):
    m = _manifest(bundles["fp32"])
    assert m["format"] == "qk-bundle" and m["format_version"] == 4
    assert m["graphs"]["text_encoder"]["inputs"][0]["shape"] == ["batch", "text_tokens"]  # format 2: any token count
    # format 3: the steps read decoder_cond's outputs, made once per edit, and no longer the text
    step_inputs = [t["name"] for t in m["graphs"]["decoder"]["inputs"]]
    assert step_inputs == ["x", "sigma", "cond_kv", "cond_bias", "cond_emb", "source", "region", "gate_map"]
    assert [t["name"] for t in m["graphs"]["decoder_cond"]["outputs"]] == ["cond_kv", "cond_bias", "cond_emb"]
    d = m["dims"]
    assert m["graphs"]["decoder_cond"]["outputs"][0]["shape"] == [
        "batch", d["max_length"] + d["kontext_tokens"], 2 * d["width"] * m["model_config"]["decoder"]["depth"]]
    assert set(m["graphs"]) == GRAPHS and m["precision"] == "fp32" and m["sparse_attn"] == "none"
    expected = graph_specs(Dims(**m["dims"]), gateway=True, gate=True, region=False)
    for name, g in m["graphs"].items():
        assert {k: v for k, v in g.items() if k != "precision"} == expected[name].to_dict()
        assert g["precision"] == "fp32"
        dynamic_inputs = [t["name"] for t in g["inputs"] if any(isinstance(d, str) for d in t["shape"])]
        assert dynamic_inputs and set(g["profile"]) >= set(dynamic_inputs)
        for p in g["profile"].values():
            assert all(lo <= opt <= hi for lo, opt, hi in zip(p["min"], p["opt"], p["max"]))
        assert m["parity"][name]["max_abs"] <= FP32_BOUND, name
    # every file but the manifest is listed with its hash, and nothing else
    files = {p.name for p in bundles["fp32"].iterdir()} - {"manifest.json"}
    assert set(m["files"]) == files == {g["file"] for g in m["graphs"].values()} | {"tokenizer.json"}
    assert all(sha256_file(bundles["fp32"] / f) == h for f, h in m["files"].items())
    assert m["source"]["sha256"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert m["trt_readiness"]["ok"] and m["command"] and m["created_by"].startswith("qk_export")


def test_sampler_settings_are_the_reference_pipelines(bundles):
    s = _manifest(bundles["fp32"])["sampler"]
    pipe = Pipeline.__init__.__kwdefaults__
    keys = ("steps", "text_guidance", "image_guidance", "gate_threshold", "gen_guidance")
    assert tuple(s[k] for k in keys) == tuple(pipe[k] for k in keys)
    assert s["scheduler"] == "FlowMatchEulerDiscreteScheduler" and s["shift"] == 1.0 and s["codec"] == "pixel"
    assert s["region_buckets"] == [k / 8 for k in range(1, 9)] and s["halo"] == 1


def test_composite_is_the_reference_pipelines(bundles):
    """Format 4: every runtime composites an edit with its source as the pipeline's defaults say."""
    pipe = Pipeline.__init__.__kwdefaults__
    for name in ("fp32", "int8_region"):
        assert _manifest(bundles[name])["composite"] == {
            "kind": pipe["composite"], "lo": pipe["change_lo"], "hi": pipe["change_hi"], "widen": pipe["change_widen"]}


def test_region_profile_holds_every_bucket(bundles):
    """TensorRT refuses a shape outside the profile: the smallest and the largest bucket must fit."""
    m = _manifest(bundles["int8_region"])
    n = m["dims"]["image_size"] // m["dims"]["factor"] // m["dims"]["patch"]
    n *= n
    sizes = [int(round(n * f)) for f in m["sampler"]["region_buckets"]]
    profile = m["graphs"]["decoder_region"]["profile"]["active"]
    assert profile["min"][1] <= min(sizes) and profile["max"][1] == max(sizes) == n


def test_runtime_opens_every_variant(bundles):
    from qk_runtime.bundle import open_bundle

    for name, path in bundles.items():
        b = open_bundle(path)
        assert b.sparse_attn == {"fp32": "none", "int8_region": "region", "window": "window"}[name]
    assert open_bundle(bundles["int8_region"]).has_region


def test_existing_bundle_is_replaced_whole(bundles):
    m = _manifest(bundles["window"])  # written over a copy of the fp32 bundle
    assert m["sparse_attn"] == "window" and m["window"] == 2 and m["model_config"]["decoder"]["attn_window"] == 2
    siblings = [p.name for p in bundles["window"].parent.iterdir()]
    assert not [s for s in siblings if s.startswith(".")], siblings  # no build or old folder left behind


def _broken_checkpoint(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "hyperparameters.yaml").read_text())
    for section, values in changes.items():
        cfg[section].update(values)
    (dst / "hyperparameters.yaml").write_text(yaml.safe_dump(cfg))
    return dst


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "preset_name", "bad_config", "int8_opset10",
                                  "bad_window", "out_is_not_a_bundle", "int8_float_unknown", "int8_float_without_int8",
                                  "int8_float_empty", "int8_float_none_and_groups", "calib_samples_negative",
                                  "weight_only_without_int8", "weight_only_with_weight_bits"])
def test_bad_arguments_exit_2_and_write_nothing(case, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    model = str(tiny_checkpoint)
    extra, expect = [], None
    if case == "missing":
        model, expect = str(tmp_path / "nope"), "does not exist"
    elif case == "not_a_checkpoint":
        (tmp_path / "empty").mkdir()
        model, expect = str(tmp_path / "empty"), "incomplete"
    elif case == "preset_name":
        model, expect = "tiny", "is a preset name"
    elif case == "bad_config":
        model = str(_broken_checkpoint(tiny_checkpoint, tmp_path / "ckpt", text={"kind": "huge"}))
        expect = "text.kind='huge'"
    elif case == "int8_opset10":
        extra, expect = ["--int8", "--opset", "10"], "--opset 13"
    elif case == "bad_window":
        extra, expect = ["--sparse-attn", "window", "--window", "3"], "must divide the token grid"
    elif case == "int8_float_unknown":
        extra, expect = ["--int8", "--int8-float", "adaln,norms"], "unknown INT8 float group(s) 'norms'; choose from adaln, io, attention"
    elif case == "int8_float_without_int8":
        extra, expect = ["--int8-float", "none"], "--int8-float only applies with --int8"
    elif case == "int8_float_empty":  # was taken as "none": every layer quantized, exit 0
        extra, expect = ["--int8", "--int8-float", ","], "no group given"
    elif case == "int8_float_none_and_groups":
        extra, expect = ["--int8", "--int8-float", "none,io"], "mixes none with groups"
    elif case == "calib_samples_negative":  # refused without --int8 too
        extra, expect = ["--calib-samples", "-5"], "--calib-samples -5: need at least 1"
    elif case == "weight_only_without_int8":  # an argparse error, with the usage line
        extra, expect = ["--weight-only"], "--weight-only only applies with --int8"
    elif case == "weight_only_with_weight_bits":  # weight-only weights keep the full int8 range
        extra, expect = ["--int8", "--weight-only", "--weight-bits", "7"], "--weight-bits 7 does not apply with --weight-only"
    elif case == "out_is_not_a_bundle":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        expect = "is not a bundle"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["--model", model, "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no bundle, no hidden build folder
    if case == "out_is_not_a_bundle":
        assert (out / "notes.txt").read_text() == "keep me" and not is_bundle(out)
    else:
        assert not out.exists()


def test_api_refuses_weight_only_without_int8(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="--weight-only only applies with --int8"):
        export_bundle(tiny_checkpoint, tmp_path / "b", weight_only=True)
    assert not list(tmp_path.iterdir())


def test_api_rejects_unknown_sparse_mode(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=str(list(SPARSE_MODES)).replace("[", r"\[").replace("]", r"\]")):
        export_bundle(tiny_checkpoint, tmp_path / "b", sparse_attn="dense")
    assert not list(tmp_path.iterdir())


def test_the_runtimes_rebuild_hint_is_a_command_qk_export_takes():
    # the runtime's errors tell users to re-export with this command: its flags must exist
    import re

    from qk_export.cli import build_parser
    from qk_runtime.bundle import EXPORT_HINT

    command = re.search(r"qk-export (--[^)]*)", EXPORT_HINT).group(1).split()
    args = build_parser().parse_args(command)
    assert args.model == "CKPT" and args.out == "DIR"
