"""Opening and validating bundles: a damaged or foreign bundle is refused with the fix."""
import json
import re
import shutil
from pathlib import Path

import numpy as np

import pytest

from qk_runtime.bundle import open_bundle
from qk_runtime.contract import MANIFEST, TOKENIZER, graph_specs
from qk_runtime.errors import BundleError


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(folder, change):
    m = json.loads((folder / MANIFEST).read_text())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def test_opens_and_matches_the_contract(fp32_bundle):
    b = open_bundle(fp32_bundle)
    assert b.precision == "fp32" and b.dims.image_size == 32
    specs = graph_specs(b.dims, gateway=b.has_gateway, gate=b.has_cmg, region=b.has_region)
    assert set(b.graphs) == set(specs)
    for name, g in b.graphs.items():
        assert g.input_names == tuple(t.name for t in specs[name].inputs)
        assert g.path.is_file()
    assert b.sampler.steps >= 1 and len(b.sha) == 64


@pytest.mark.parametrize("victim", ["decoder.onnx", TOKENIZER])
def test_flipped_byte_is_refused_naming_the_file(bundle_copy, victim):
    rel = next(r for r in json.loads((bundle_copy / MANIFEST).read_text())["files"] if r.endswith(victim))
    _flip_byte(bundle_copy / rel)
    with pytest.raises(BundleError) as err:
        open_bundle(bundle_copy)
    msg = str(err.value)
    assert rel in msg and "re-export" in msg and "sha256" in msg


def test_verify_false_skips_only_the_hashes(bundle_copy):
    _flip_byte(bundle_copy / TOKENIZER, offset=0)
    assert open_bundle(bundle_copy, verify=False).precision == "fp32"


def test_missing_listed_file_is_refused(bundle_copy):
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing decoder.onnx"):
        open_bundle(bundle_copy)


def test_missing_and_corrupt_manifest(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nowhere")
    (bundle_copy / MANIFEST).write_text('{"format": "qk-bundle", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        open_bundle(bundle_copy)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(format="something-else"), "format 'something-else'"),
    (lambda m: m.update(format_version=99), "newer than this runtime"),
    (lambda m: m.pop("sampler"), "lacks"),
    (lambda m: m["graphs"].pop("decoder"), "missing"),
    (lambda m: m["graphs"]["decoder"]["inputs"].pop(), "differ from the contract"),
    (lambda m: m["sampler"].update(noise="torch.randn"), "noise"),
    (lambda m: m.update(precision="fp8"), "precision"),
])
def test_foreign_manifests_are_refused(bundle_copy, change, match):
    _edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=match):
        open_bundle(bundle_copy, verify=False)


def _as_format_1(m):
    """What qk-export wrote before format 2: the text encoder takes exactly max_length tokens."""
    L = m["dims"]["max_length"]
    m["format_version"] = 1
    g = m["graphs"]["text_encoder"]
    for t in g["inputs"] + g["outputs"]:
        t["shape"] = [L if d == "text_tokens" else d for d in t["shape"]]


def test_format_2_bundles_run_their_steps_on_the_text_with_the_same_results(format_2_region_bundle, region_bundle,
                                                                            source_image):
    from qk_runtime import EditSession

    old, new = open_bundle(format_2_region_bundle), open_bundle(region_bundle)
    assert not old.has_decoder_cond and new.has_decoder_cond
    assert "text" in old.graphs["decoder_region"].input_names and "cond_kv" in new.graphs["decoder_region"].input_names
    calls = {}
    with EditSession(format_2_region_bundle, "ort-cpu", threads=1) as s2, EditSession(region_bundle, "ort-cpu", threads=1) as s3:
        for name, s in (("2", s2), ("3", s3)):
            infer = s.backend.infer

            def spy(graph, feeds, _infer=infer, _name=name):
                calls.setdefault(_name, []).append(graph)
                return _infer(graph, feeds)

            s.backend.infer = spy
        for box in (None, (2, 2, 20, 20)):
            a = s2.edit(source_image, "make the red circle blue", box=box, seed=3, steps=6)
            b = s3.edit(source_image, "make the red circle blue", box=box, seed=3, steps=6)
            assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1  # same math, another summation order
            assert "decoder_cond" in b.timings and "decoder_cond" not in a.timings
    assert "decoder_cond" not in calls["2"] and calls["3"].count("decoder_cond") == 2  # once per edit, not per step
    assert calls["2"].count("decoder_region") == calls["3"].count("decoder_region") == 12


def test_format_1_bundles_still_open_and_run_on_every_token(tmp_path, format_2_region_bundle, source_image):
    from qk_runtime import EditSession

    fp32_bundle = format_2_region_bundle  # format 1 differs from 2 only in the text encoder's token axis
    bundle_copy = Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
    assert open_bundle(fp32_bundle).graphs["text_encoder"].inputs[0].shape == ("batch", "text_tokens")
    _edit_manifest(bundle_copy, _as_format_1)
    old = open_bundle(bundle_copy)
    assert old.graphs["text_encoder"].inputs[0].shape[1] == old.dims.max_length
    seen = {}
    with EditSession(fp32_bundle, "ort-cpu", threads=1) as new, EditSession(bundle_copy, "ort-cpu", threads=1) as legacy:
        for name, s in (("new", new), ("legacy", legacy)):
            infer = s.backend.infer

            def spy(graph, feeds, _infer=infer, _name=name):
                if graph == "text_encoder":
                    seen.setdefault(_name, set()).add(feeds["input_ids"].shape[1])
                return _infer(graph, feeds)

            s.backend.infer = spy
        a = new.edit(source_image, "make the red circle blue", box=(2, 2, 20, 20), seed=3).image
        b = legacy.edit(source_image, "make the red circle blue", box=(2, 2, 20, 20), seed=3).image
    L = old.dims.max_length
    assert seen["legacy"] == {L}
    assert max(seen["new"]) < L  # the short instruction and the empty prompt: only their tokens run
    assert (a == b).all()  # padding is masked everywhere, so trimming changes nothing


def test_format_0_is_refused_with_the_fix(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=0))
    with pytest.raises(BundleError, match="reads 1..5.*re-export"):
        open_bundle(bundle_copy, verify=False)


def test_bundles_without_generation_guidance_generate_with_the_text_guidance(bundle_copy, fp32_bundle):
    """Bundles written before `gen_guidance` existed keep generating as they did."""
    from qk_runtime import EditSession

    _edit_manifest(bundle_copy, lambda m: m["sampler"].pop("gen_guidance"))
    old = open_bundle(bundle_copy, verify=False)
    assert old.sampler.gen_guidance is None
    with EditSession(bundle_copy, "ort-cpu", threads=1, verify=False) as legacy, EditSession(fp32_bundle, "ort-cpu", threads=1) as new:
        a = legacy.generate("a blue square", seed=2, steps=4).image
        b = new.generate("a blue square", seed=2, steps=4, guidance=old.sampler.text_guidance).image
    np.testing.assert_array_equal(a, b)


def test_external_weights_missing_from_files_are_refused(region_bundle, tmp_path):
    # decoder.weights holds both decoders' weights; a manifest that leaves it out of 'files' would
    # have let a damaged copy run unchecked
    copy = Path(shutil.copytree(region_bundle, tmp_path / "b"))
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["graphs"]["decoder_region"]["external_data"] == "decoder.weights"
    del manifest["files"]["decoder.weights"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"graph '?\w+'? external data 'decoder.weights' has no sha256 in 'files'"):
        open_bundle(copy)


# --------------------------------------------------------------------------- files outside the bundle


def _point_outside(bundle: Path, secret: Path, graph: str = "text_encoder") -> str:
    """The manifest names `secret` (outside the bundle) as a graph's file, with its true sha256."""
    import hashlib
    import os

    rel = os.path.relpath(secret, bundle)
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"].pop(m["graphs"][graph]["file"])
    m["graphs"][graph]["file"] = rel
    m["files"][rel] = hashlib.sha256(secret.read_bytes()).hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(m))
    return rel


def test_a_manifest_naming_a_file_outside_is_refused_and_the_file_never_opened(bundle_copy, tmp_path, capsys):
    """Before: open_bundle accepted ../../outside/secret with its real sha256 (it hashed the file),
    and qk-triton hard-linked it into the repository it wrote, exit 0."""
    from qk_bench.bad_inputs import OpenWatch
    from qk_runtime import EditSession
    from qk_runtime.triton.repo import main as triton_main

    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not the bundle's\n")
    original = (bundle_copy / MANIFEST).read_text()
    _point_outside(bundle_copy, secret, "text_encoder")  # the text encoder may come only from a sibling bundle
    text_encoder_outside = (bundle_copy / MANIFEST).read_text()
    (bundle_copy / MANIFEST).write_text(original)
    rel = _point_outside(bundle_copy, secret, "image_encoder")
    (bundle_copy / "escape").symlink_to(secret.parent, target_is_directory=True)  # a folder link out of it, too
    with OpenWatch(secret) as watch:
        with pytest.raises(BundleError, match="leaves the bundle folder") as err:
            open_bundle(bundle_copy)
        assert rel in str(err.value)
        with pytest.raises(BundleError):
            EditSession(bundle_copy, backend="ort-cpu")
        assert triton_main(["--bundle", str(bundle_copy), "--out", str(tmp_path / "repo")]) == 2
        assert "leaves the bundle folder" in capsys.readouterr().err
        m = json.loads((bundle_copy / MANIFEST).read_text())
        m["graphs"]["image_encoder"]["file"] = "escape/secret.txt"
        m["files"] = {("escape/secret.txt" if k == rel else k): v for k, v in m["files"].items()}
        (bundle_copy / MANIFEST).write_text(json.dumps(m))
        with pytest.raises(BundleError, match=r"outside .*a manifest may name only files inside its bundle"):
            open_bundle(bundle_copy)
        (bundle_copy / MANIFEST).write_text(text_encoder_outside)
        with pytest.raises(BundleError, match="only the text encoder may come from outside the bundle"):
            open_bundle(bundle_copy)
        assert not watch.opened(), "a file outside the bundle was opened because of its manifest"
    assert not (tmp_path / "repo").exists()


def test_the_shipped_fp32_bundle_reads_only_its_sibling_text_encoder(tmp_path):
    """engines/default/fp32 names ../int8/text_encoder.onnx: allowed because int8 is a bundle beside
    it that lists that file as its own text encoder with the same sha256; nothing else leaves it."""
    from qk_runtime.session import default_bundle_dir

    int8 = default_bundle_dir()
    fp32 = open_bundle(int8.parent / "fp32")
    assert fp32.graphs["text_encoder"].path == (int8 / "text_encoder.onnx").resolve()
    assert fp32.folders == ((int8.parent / "fp32").resolve(), int8.resolve())
    alone = Path(shutil.copytree(int8.parent / "fp32", tmp_path / "fp32"))  # no int8 beside it
    with pytest.raises(BundleError, match="sibling bundle .* cannot be read"):
        open_bundle(alone)
    shutil.copytree(int8, tmp_path / "int8")
    m = json.loads((tmp_path / "int8" / MANIFEST).read_text())
    m["files"]["text_encoder.onnx"] = "0" * 64  # the sibling no longer vouches for that file
    (tmp_path / "int8" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not list 'text_encoder.onnx' as its own text encoder"):
        open_bundle(alone)


def test_deep_or_huge_manifests_are_refused_by_size_and_depth(bundle_copy):
    (bundle_copy / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)  # before: RecursionError
    with pytest.raises(BundleError, match="nested too deeply"):
        open_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text("{" + " " * (5 << 20) + "}")
    with pytest.raises(BundleError, match="over the limit of 4194304"):
        open_bundle(bundle_copy)


@pytest.mark.parametrize("key, value", [
    ("text_guidance", float("nan")), ("text_guidance", 1e308), ("image_guidance", -1.0), ("gen_guidance", float("inf")),
    ("gate_threshold", 2.0), ("steps", 1e308), ("steps", 20.5), ("shift", 0.0), ("halo", -1),
    ("region_buckets", [1.0, 0.5, 1.0]), ("region_buckets", [float("nan"), 1.0]),
])
def test_sampler_numbers_must_be_finite_and_in_range(bundle_copy, key, value):
    """Before: NaN and 1e308 guidance from a manifest ran (NaN pixels, exit 0); steps 1e308 was an
    OverflowError traceback; 20.5 steps became 20 silently."""
    _edit_manifest(bundle_copy, lambda m: m["sampler"].update({key: value}))
    with pytest.raises(BundleError, match=f"sampler.{key}"):
        open_bundle(bundle_copy)


def test_a_truncated_graph_with_its_hash_updated_is_a_bundle_error_naming_the_file(bundle_copy, source_image):
    """Before: ONNX Runtime's own exception (InvalidProtobuf) reached the caller, and qk-edit
    printed only its class."""
    import hashlib

    from qk_runtime import EditSession

    data = (bundle_copy / "gateway.onnx").read_bytes()[:5000]
    (bundle_copy / "gateway.onnx").write_bytes(data)
    _edit_manifest(bundle_copy, lambda m: m["files"].update({"gateway.onnx": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(BundleError, match=r"ONNX Runtime cannot load graph 'gateway' from .*gateway.onnx .*re-export"):
        with EditSession(bundle_copy, backend="ort-cpu") as s:
            s.edit(source_image, "make it blue", steps=2)


# --------------------------------------------------------------------------- weight-only INT8 graphs

STORED = {"text_encoder", "gateway", "cmg", "decoder", "decoder_region"}


def test_weight_only_graphs_are_the_manifests_and_older_bundles_keep_the_text_encoder(weight_only_bundle, tmp_path):
    """`quantization.weight_only` names the graphs opened with Q/DQ fusion off; a manifest without
    it (written before it; the FP32 bundle sharing the INT8 text encoder) has its INT8 text encoder."""
    assert open_bundle(weight_only_bundle).weight_only == STORED
    shipped = Path(__file__).resolve().parents[2] / "engines" / "default"
    for name in ("int8", "fp32"):
        assert open_bundle(shipped / name, verify=False).weight_only == {"text_encoder"}, name
    older = Path(shutil.copytree(weight_only_bundle, tmp_path / "older"))
    _edit_manifest(older, lambda m: m["quantization"].pop("weight_only"))
    assert open_bundle(older).weight_only == {"text_encoder"}
    _edit_manifest(older, lambda m: m.update(quantization=None))
    assert open_bundle(older).weight_only == {"text_encoder"}


# malformed `quantization` entries and what the refusal says
BAD_QUANTIZATION = {
    "a list": (lambda m: m.update(quantization=["decoder"]), "'quantization' must be an object (or null)"),
    "weight_only a string": (lambda m: m["quantization"].update(weight_only="decoder"), "must be a list of distinct graph names"),
    "weight_only repeated": (lambda m: m["quantization"].update(weight_only=["decoder", "decoder"]), "distinct graph names"),
    "weight_only a number": (lambda m: m["quantization"].update(weight_only=[3]), "distinct graph names"),
    "weight_only an unknown graph": (lambda m: m["quantization"].update(weight_only=["decoder", "unet"]),
                                     "names 'unet', which is not a graph of this bundle"),
    "weight_only an FP32 graph": (lambda m: m["quantization"].update(weight_only=["image_decoder"]),
                                  "names 'image_decoder', whose precision is 'fp32', not 'int8'"),
}


@pytest.mark.parametrize("case", list(BAD_QUANTIZATION))
def test_a_malformed_weight_only_list_is_refused_with_the_fix(weight_only_bundle, tmp_path, case):
    change, match = BAD_QUANTIZATION[case]
    bad = Path(shutil.copytree(weight_only_bundle, tmp_path / "bad"))
    _edit_manifest(bad, change)
    with pytest.raises(BundleError, match=re.escape(match)) as exc:
        open_bundle(bad)
    assert "qk-export" in str(exc.value)
