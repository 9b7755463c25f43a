"""The JavaScript runtime (`runtime/web/`) against the Python runtime.

- Its parts, in Node's test runner: tokenizer ids (the shipped WordPiece tokenizer and the tiny
  preset's WordLevel one, on ShapeWorld texts and awkward Unicode), noise bits on a thousand seeds,
  sigma bits (the few-step schedule and its step sizes too), guidance + Euler step, Pillow's
  resize, compositing, the region decoder's tokens, and which texts and boxes are refused; the
  cases are computed here with Python and written to a folder. bundle.js reads and refuses
  format 5's `few_step` entries and `quantization.weight_only` lists as bundle.py does, and the
  backend opens the weight-only graphs with Q/DQ fusion off.
- The page's "in this browser" mode in Debian's Chromium (Playwright, as test_serve_page.py):
  an edit on the shipped FP32 bundle equals `qk_runtime.EditSession`'s within 1 level of 8 bits,
  and so does a few-step (format 5) FP32 edit at 4 steps;
  on the shipped INT8 bundle outside the gate the source's own pixels are kept exactly and inside
  it the edit stays within `INT8_TOLERANCE` (WebAssembly kernels round floats differently from
  ONNX Runtime's x86 kernels, and INT8 requantization amplifies that: runtime/web/README.md);
  on a weight-only INT8 bundle (`qk-export --int8 --weight-only`, the tiny model) within 1 level;
  the noise drawn in the page equals numpy's; a bundle file damaged after the server opened it is
  refused naming the file, and the page stays usable; bad input gives a message; with the server
  stopped and the network off the page still edits and generates.

Skips only where Node.js or Chromium is missing. onnxruntime-web must be installed
(`npm ci --prefix runtime/web`); without it the browser tests fail saying so.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qk_runtime import EditSession
from qk_runtime.composite import Composite, change_weight, composite
from qk_runtime.errors import InputError
from qk_runtime.inputs import check_box, check_text, scale_box
from qk_runtime.noise import portable_normal
from qk_runtime.sampler import FlowMatchEulerScheduler, few_step_sigmas
from qk_runtime.session import active_token_indices, default_bundle_dir, guided_velocity

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "runtime" / "web"
TOLERANCE = 1  # uint8 levels, FP32 bundle
INT8_TOLERANCE = 16  # uint8 levels, INT8 bundle, inside the gate (measured up to 14 over 20 edits; README)
BOX = (45, 31, 60, 46)  # the sample scene's orange circle
INSTRUCTION = "make the orange circle blue"
TOKEN_PX = 8

AWKWARD = [
    "make the red circle blue", "Make The RED Circle BLUE!!", "remove the green square at the top left",
    "café naïve résumé Ærøskøbing Ελληνικά", "ΣΊΣΥΦΟΣ Σ ß ẞ İstanbul ǅ ﬁ Ω K Å",
    "don't, won't; (hello) [CLS] [MASK]x [UNK][SEP]", "中文字符 and 日本語 かな 한국어",
    "a\u200bb soft\u00adhyphen \x0b tab\tnew\nline\r \u3000ideo\u00a0nbsp\u2028", "emoji 😀👍🏽 ∑ ≤ € $5.00 #tag @user",
    "under_score snake_case CamelCase123 3.14 1,000", "a\u0301 e\u0300 combining ab\u0300\u0301cd",
    "ﬀ ＡＢＣ fullwidth １２３ ⅰⅱ Ⅻ ⓐ Ⓐ", "\u0378 unassigned \ue000 private \U000E0001 \u2066iso\u2069",
    "‘quotes’ “double” — dash – en … ellipsis", "a\x00b\ufffdc\x7fd\x1fe", "𠀀 𪜀 \U0002B820 \U0002B920 \U0002CEAF",
    "x" * 150, " ".join(["word"] * 200), "", "   ",
]


def _node() -> str:
    node = shutil.which("node")
    if not node:
        pytest.skip("Node.js not found (node on PATH); install it with: apt-get install -y nodejs")
    return node


def _chromium() -> str:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Chromium not found (looked for chromium on PATH and /usr/bin/chromium); "
                "install it with: apt-get install -y chromium")


# --------------------------------------------------------------------------- the parts, in Node


def _save(folder: Path, name: str, array: np.ndarray) -> str:
    np.ascontiguousarray(array).tofile(folder / name)
    return name


def _tokenizer_cases(folder: Path) -> list[dict]:
    from tokenizers import Tokenizer

    from qk_train.data.shapeworld import caption, make_edit, make_scene
    from qk_train.models.text_encoder import tiny_tokenizer

    texts = [t for i in range(30) for t in (make_edit("test", i, side=64).instruction, caption(make_scene("test", i, side=64)))]
    texts += AWKWARD
    shipped = default_bundle_dir() / "tokenizer.json"
    length = json.loads((default_bundle_dir() / "manifest.json").read_text())["dims"]["max_length"]
    (folder / "wordpiece.json").write_text(shipped.read_text())
    tiny_tokenizer(16).save(str(folder / "wordlevel.json"))
    cases = []
    for file, max_length, kind in (("wordpiece.json", length, "wordpiece"), ("wordlevel.json", 16, "wordlevel")):
        tok = Tokenizer.from_file(str(folder / file))
        expected = [{"ids": e.ids, "mask": e.attention_mask, "truncated": bool(e.overflowing)} for e in (tok.encode(t) for t in texts)]
        cases.append({"file": file, "max_length": max_length, "kind": kind, "texts": texts, "expected": expected})
    assert any(e["truncated"] for c in cases for e in c["expected"])
    return cases


def _write_cases(folder: Path) -> None:
    rng = np.random.default_rng(7)
    cases: dict = {"tokenizers": _tokenizer_cases(folder)}

    seeds = list(range(1000)) + [2**64 - 1, 2**63, 2**53 + 1, 123456789012345678]
    draws = [(str(s), 1024) for s in seeds] + [("7", 1 << 20), ("11", 1023)]
    _save(folder, "noise.bin", np.concatenate([portable_normal(int(s), (n,)) for s, n in draws]))
    cases["noise"] = {"file": "noise.bin", "draws": draws}

    cases["sigmas"] = []
    for steps in (1, 2, 7, 20, 50, 1000):
        for shift in (1.0, 3.0, 0.5):
            sched = FlowMatchEulerScheduler(shift=shift)
            sched.set_timesteps(steps)
            cases["sigmas"].append({"steps": steps, "shift": shift, "file": _save(folder, f"sig{steps}_{shift}.bin", sched.sigmas)})

    cases["few_step"] = []
    for steps in (1, 2, 3, 4, 8):
        sched = FlowMatchEulerScheduler(shift=3.0)
        sched.set_sigmas(few_step_sigmas(steps))
        sizes = []
        for _ in range(steps):
            sizes.append(sched.step_size)
            sched.step_index += 1
        cases["few_step"].append({"steps": steps, "file": _save(folder, f"few{steps}.bin", sched.sigmas),
                                  "step_sizes": _save(folder, f"few{steps}_d.bin", np.array(sizes, np.float32))})

    cases["steps"] = []
    for k, (nb, s_txt, s_img) in enumerate(((2, 3.0, 1.0), (3, 3.0, 1.5), (3, 7.3, 0.0), (2, 0.1, 1.0))):
        v = (rng.standard_normal((nb, 4, 16, 16)) * 2).astype(np.float32)
        x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
        sched = FlowMatchEulerScheduler()
        sched.set_timesteps(20)
        sched.step_index = 5
        out = sched.step(guided_velocity(v, s_txt, s_img), x)
        cases["steps"].append({"nb": nb, "s_txt": s_txt, "s_img": s_img, "steps": 20, "index": 5, "v": _save(folder, f"v{k}.bin", v),
                               "x": _save(folder, f"x{k}.bin", x), "out": _save(folder, f"xo{k}.bin", out)})

    cases["resize"] = []
    for k, (src, dst) in enumerate((((64, 64), (37, 91)), ((13, 7), (64, 64)), ((300, 200), (64, 64)), ((64, 64), (640, 480)),
                                    ((1, 1), (64, 64)), ((64, 64), (64, 17)), ((97, 64), (64, 64)))):
        img = rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
        out = np.asarray(Image.fromarray(img).resize(dst, Image.BILINEAR))
        cases["resize"].append({"src": list(src), "dst": list(dst), "in": _save(folder, f"r{k}.in", img), "out": _save(folder, f"r{k}.out", out)})

    cases["composite"] = []
    for k, c in enumerate((Composite("changed", 0.02, 0.08, 2), Composite("changed", 0.0, 1.0, 0), Composite("gate"))):
        S = 32
        dec = rng.uniform(-1.2, 1.2, (1, 3, S, S)).astype(np.float32)
        dsrc = (dec + rng.normal(0, 0.05, dec.shape)).astype(np.float32)
        src = rng.uniform(-1, 1, (1, 3, S, S)).astype(np.float32)
        pix = (rng.uniform(0, 1, (1, 1, S, S)) > 0.4).astype(np.float32)
        weight = change_weight(dec, dsrc, c) if c.decodes_source else None
        cases["composite"].append({"side": S, "composite": c.to_dict() | {"widen": c.widen},
                                   "decoded": _save(folder, f"c{k}d.bin", dec), "decoded_source": _save(folder, f"c{k}s.bin", dsrc),
                                   "source": _save(folder, f"c{k}src.bin", src), "pix": _save(folder, f"c{k}p.bin", pix),
                                   "weight": None if weight is None else _save(folder, f"c{k}w.bin", weight),
                                   "out": _save(folder, f"c{k}o.bin", composite(dec, src, pix, c, dsrc))})

    cases["active"] = []
    for k in range(40):
        grid = 8
        active = (rng.uniform(0, 1, grid * grid) < rng.uniform(0, 0.5)).tolist()
        halo = int(k % 3)
        buckets = [b / 8 for b in range(1, 9)] if k % 2 else [0.25, 0.5, 0.75, 1.0]
        expected = active_token_indices(np.array(active), grid, grid, halo, buckets).tolist()
        cases["active"].append({"active": active, "grid": grid, "halo": halo, "buckets": buckets, "expected": expected})

    cases["texts"] = []
    for text in AWKWARD + ["\u200b\u200c", "\t\n ", "\x1c\x1d", "ok", "\ufeffa", "a\x00", "\u3000", "\u00ad"]:
        try:
            check_text(text)
            refused = False
        except InputError:
            refused = True
        cases["texts"].append({"text": text, "refused": refused})

    cases["boxes"] = []
    for box, (w, h) in (((1, 2, 30, 40), (64, 64)), ((0, 0, 64, 64), (64, 64)), ((10, 10, 5, 20), (64, 64)), ((0, 0, 65, 10), (64, 64)),
                        ((-1, 0, 10, 10), (64, 64)), ("3,4,50,60", (100, 80)), ("3, 4 ,50,60", (100, 80)), ("3,4,5", (64, 64)),
                        ("a,b,c,d", (64, 64)), ((1.0, 2.0, 30.0, 40.0), (64, 64)), ((1.5, 2, 30, 40), (64, 64)),
                        ((7, 9, 31, 33), (333, 77)), ((0, 0, 1, 1), (4000, 3000))):
        try:
            expected = list(scale_box(check_box(box, w, h), w, h, 64))
        except InputError:
            expected = None
        cases["boxes"].append({"box": list(box) if isinstance(box, tuple) else box, "width": w, "height": h, "side": 64,
                               "expected": expected})
    (folder / "cases.json").write_text(json.dumps(cases))


def test_parts_equal_the_python_runtime_in_node(tmp_path):
    node = _node()
    _write_cases(tmp_path)
    run = subprocess.run([node, "--test", str(WEB / "test" / "parts.test.mjs")], env={"QK_WEB_CASES": str(tmp_path), "PATH": ""},
                         capture_output=True, text=True, timeout=300, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "# fail 0" in out and "# skipped 0" in out, out[-3000:]


def _changed_copies(bundle, changes, tmp_path) -> list[str]:
    """One linked copy of `bundle` per manifest change (a function editing the manifest dict in place)."""
    dirs = []
    for i, change in enumerate(changes):
        folder = _linked_copy(bundle, tmp_path / str(i))
        m = json.loads((folder / "manifest.json").read_text())
        change(m)
        (folder / "manifest.json").unlink()  # a hard link: write a new file, not through the link
        (folder / "manifest.json").write_text(json.dumps(m))
        dirs.append(str(folder))
    return dirs


def _node_results(node, script: str, dirs: list[str]) -> list:
    """Run a node check script over the folders; its JSON answer, one entry per folder."""
    run = subprocess.run([node, "--input-type=module", "-e", script, json.dumps(dirs)], cwd=WEB,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return json.loads(run.stdout)


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a bundle folder, hard-linked where the file system allows (the files stay inside it)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    return Path(shutil.copytree(src, dst, copy_function=link))


def test_edits_in_node_equal_the_python_runtime(tmp_path):
    """The whole edit in Node on the FP32 bundle made format 4 with compositing `changed` (the source
    latent decoded too), a resized input with a box, three guidance branches, the dense and the region
    decoder, and a generation: the Python runtime's pixels within 1 level."""
    node = _node()
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail("onnxruntime-web is not installed: run `npm ci --prefix runtime/web`")
    shipped = default_bundle_dir().parent
    _linked_copy(shipped / "int8", tmp_path / "int8")  # the FP32 bundle's text encoder lives here
    bundle = _linked_copy(shipped / "fp32", tmp_path / "fp32")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 4
    manifest["composite"] = {"kind": "changed", "lo": 0.03, "hi": 0.08, "widen": 1}
    (bundle / "manifest.json").unlink()  # a link to the shipped manifest: replace, never write through
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    rng = np.random.default_rng(3)
    scene = np.asarray(Image.fromarray(_sample()).resize((100, 80), Image.NEAREST))
    scene = np.clip(scene.astype(np.int16) + rng.integers(-6, 7, scene.shape), 0, 255).astype(np.uint8)
    scene.tofile(tmp_path / "scene.rgb")
    image = {"width": 100, "height": 80, "file": str(tmp_path / "scene.rgb")}
    jobs = [
        {"image": image, "instruction": INSTRUCTION, "box": [70, 38, 95, 72], "seed": 5},
        {"image": image, "instruction": "remove the red diamond", "box": None, "seed": "18446744073709551615", "sparse": "none"},
        {"image": image, "instruction": INSTRUCTION, "box": [60, 30, 99, 79], "seed": 9, "imageGuidance": 1.5, "steps": 7},
        {"prompt": "a small green square at the bottom left", "seed": 11, "steps": 12, "guidance": 4.0},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([node, str(WEB / "test" / "run_jobs.mjs"), str(bundle), str(tmp_path / "jobs.json"), str(out)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = json.loads((out / "results.json").read_text())["results"]
    with EditSession(bundle, backend="ort-cpu") as s:
        assert s.bundle.composite.kind == "changed"
        for i, job in enumerate(jobs):
            if "prompt" in job:
                want = s.generate(job["prompt"], seed=job["seed"], steps=job["steps"], guidance=job["guidance"])
            else:
                want = s.edit(scene, job["instruction"], box=job["box"], seed=int(job["seed"]), steps=job.get("steps"),
                              image_guidance=job.get("imageGuidance"), sparse=job.get("sparse"))
                assert "source_decoder" in want.timings and "source_decoder" in results[i]["timings"]
                assert results[i]["activeTokens"] == want.active_tokens
            got = np.fromfile(out / f"{i}.rgb", np.uint8).reshape(want.image.shape)
            diff = np.abs(got.astype(np.int16) - want.image.astype(np.int16))
            assert diff.max() <= TOLERANCE, f"job {i}: Node's output differs from the Python runtime's by up to {diff.max()} levels"


def _bundle_check(body: str, imports: str = "") -> str:
    """A node script that opens each bundle folder of argv[1] with the web runtime's openBundle, runs
    `body` on it (`b`; it pushes one entry to `out`) and prints the entries, an error as {error, message}."""
    return """
import fs from "node:fs";
import path from "node:path";
import { openBundle } from "./bundle.js";
""" + imports + """
const out = [];
for (const dir of JSON.parse(process.argv[1])) {
  const source = { name: dir, async read(rel) { return new Uint8Array(fs.readFileSync(path.join(dir, rel))); } };
  try {
    const b = await openBundle(source, { verify: false });
""" + body + """
  } catch (err) {
    out.push({ error: err.name, message: err.message });
  }
}
console.log(JSON.stringify(out));
"""


FEW_STEP_CHECK = _bundle_check("    out.push({ fewStep: b.fewStep });")


def test_few_step_manifests_are_read_and_refused_in_node_as_in_python(few_step_bundle, tmp_path):
    """bundle.js reads format 5's `few_step` and refuses a malformed one as bundle.py does."""
    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    node = _node()
    changes = {
        "as exported": (lambda m: None, None),
        "unsorted steps": (lambda m: m["few_step"].update(steps=[4, 2]), "increasing integer step counts"),
        "non-integer steps": (lambda m: m["few_step"].update(steps=[1, 2.5]), "increasing integer step counts"),
        "an unknown key": (lambda m: m["few_step"].update(shift=3), "exactly the keys"),
        "other sigmas": (lambda m: m["few_step"].update(sigmas="karras"), "this runtime runs only \"uniform\""),
        "other_step_size false": (lambda m: m["few_step"].update(other_step_size=False), "few_step.other_step_size=false"),
        "format 4": (lambda m: m.update(format_version=4), "'few_step' needs format_version 5 or newer"),
        "no few_step": (lambda m: m.pop("few_step"), "differ from the contract"),
    }
    dirs = _changed_copies(few_step_bundle, [c for c, _ in changes.values()], tmp_path)
    results = _node_results(node, FEW_STEP_CHECK, dirs)
    for (name, (_, message)), folder, got in zip(changes.items(), dirs, results):
        if message is None:
            assert got == {"fewStep": {"steps": list(open_bundle(folder, verify=False).few_step.steps)}}, name
            continue
        with pytest.raises(BundleError):
            open_bundle(folder, verify=False)
        assert got.get("error") == "BundleError" and message in got["message"], f"{name}: {got}"
        assert "qk-export" in got["message"], got["message"]


WEIGHT_ONLY_CHECK = _bundle_check("""
    const backend = new OrtWebBackend(null, b, "wasm");
    const fusionOff = Object.keys(b.graphs).filter((g) => backend.options(g).extra.session.disable_quant_qdq === "1");
    out.push({ weightOnly: [...b.weightOnly].sort(), fusionOff: fusionOff.sort() });""", 'import { OrtWebBackend } from "./backend.js";')


def test_weight_only_graphs_are_read_and_refused_in_node_as_in_python(weight_only_bundle, tmp_path):
    """bundle.js reads `quantization.weight_only` as bundle.py does (the INT8 text encoder without
    it) and refuses a malformed one saying the same; the backend opens exactly those graphs with
    ONNX Runtime's Q/DQ fusion off (`session.disable_quant_qdq`)."""
    from qk_runtime.bundle import open_bundle
    from qk_runtime.errors import BundleError

    node = _node()
    changes = {
        "as exported": (lambda m: None, None),
        "no list (older bundles)": (lambda m: m["quantization"].pop("weight_only"), None),
        "a list": (lambda m: m.update(quantization=["decoder"]), "'quantization' must be an object (or null)"),
        "repeated": (lambda m: m["quantization"].update(weight_only=["cmg", "cmg"]), "must be a list of distinct graph names"),
        "an unknown graph": (lambda m: m["quantization"].update(weight_only=["unet"]), "names 'unet', which is not a graph"),
        "an FP32 graph": (lambda m: m["quantization"].update(weight_only=["image_decoder"]),
                          "names 'image_decoder', whose precision is 'fp32', not 'int8'"),
    }
    dirs = _changed_copies(weight_only_bundle, [c for c, _ in changes.values()], tmp_path)
    results = _node_results(node, WEIGHT_ONLY_CHECK, dirs)
    assert results[0]["weightOnly"] == ["cmg", "decoder", "decoder_region", "gateway", "text_encoder"]
    for (name, (_, message)), folder, got in zip(changes.items(), dirs, results):
        if message is None:
            want = sorted(open_bundle(folder, verify=False).weight_only)
            assert got == {"weightOnly": want, "fusionOff": want}, name
            continue
        with pytest.raises(BundleError):
            open_bundle(folder, verify=False)
        assert got.get("error") == "BundleError" and message in got["message"], f"{name}: {got}"
        assert "qk-export" in got["message"], got["message"]


# --------------------------------------------------------------------------- what qk-serve hands the page


def test_serve_hands_out_the_runtime_onnxruntime_web_and_the_bundle(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'query-kontext[serve]')")
    from fastapi.testclient import TestClient

    from qk_runtime.bundle import open_bundle
    from qk_runtime.serve import ServeConfig, create_app
    from qk_runtime.serve.web import ORT_FILES, bundle_files

    isolated = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}
    with EditSession(default_bundle_dir(), backend="ort-cpu", threads=1) as session:
        with TestClient(create_app(ServeConfig(), session=session)) as c:
            web = c.get("/healthz").json()["web"]
            assert web["available"], web["reason"]
            assert web["onnxruntime_web"] == json.loads((WEB / "package-lock.json").read_text())[
                "packages"]["node_modules/onnxruntime-web"]["version"]
            for url in ("/", "/web/qk.js", "/web/worker.js", web["bundle_url"] + "manifest.json", web["bundle_url"] + "gateway.onnx",
                        *(web["ort_url"] + name for name in ORT_FILES)):
                r = c.get(url)
                assert r.status_code == 200, url
                assert {k: r.headers[k] for k in isolated} == isolated, url
            assert c.get("/web/ort/ort-wasm-simd-threaded.wasm").headers["content-type"] == "application/wasm"
            assert c.get("/web/qk.js").headers["content-type"].startswith("text/javascript")
            assert c.get(web["bundle_url"] + "gateway.onnx").content == (default_bundle_dir() / "gateway.onnx").read_bytes()
            for url in ("/web/app.py", "/web/..%2F__init__.py", "/web/ort/package.json", "/web/ort/..%2Fpackage.json",
                        "/bundle/int8/../checkpoint/model.safetensors", "/bundle/int8/%2E%2E/checkpoint/model.safetensors",
                        "/bundle/checkpoint/model.safetensors", "/bundle/int8/"):
                assert c.get(url).status_code == 404, url
        # without onnxruntime-web the page offers the server mode only, saying why
        with TestClient(create_app(ServeConfig(ort_web_dir=tmp_path / "nowhere"), session=session)) as c:
            web = c.get("/healthz").json()["web"]
            assert not web["available"] and "nowhere" in web["reason"] and "--ort-web-dir" in web["reason"]
            assert c.get("/web/ort/ort.wasm.min.mjs").status_code == 404
    # the FP32 bundle's shared text encoder is served from its sibling, with the sibling's manifest
    folder, table = bundle_files(open_bundle(default_bundle_dir().parent / "fp32", verify=False))
    assert folder == "fp32/"
    assert table["int8/text_encoder.onnx"].resolve() == (default_bundle_dir() / "text_encoder.onnx").resolve()
    assert table["int8/manifest.json"].resolve() == (default_bundle_dir() / "manifest.json").resolve()
    assert not any(".." in url for url in table)


# --------------------------------------------------------------------------- the page, in Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serve(bundle: Path):
    """qk-serve on a free localhost port with `bundle` (its own EditSession); yields the URL."""
    import uvicorn

    from qk_runtime.serve import ServeConfig, create_app

    session = EditSession(bundle, backend="ort-cpu", threads=1)
    app = create_app(ServeConfig(), session=session)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="qk-serve-web-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"qk-serve did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    stop = {"done": False}

    def shutdown():
        if not stop["done"]:
            server.should_exit = True
            thread.join(15)
            stop["done"] = True

    try:
        yield f"http://127.0.0.1:{port}", shutdown
    finally:
        shutdown()
        session.close()


@contextmanager
def _page(url: str):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.errors, page.console = [], []
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            page.on("console", lambda msg: page.console.append(f"{msg.type}: {msg.text}"))
            page.goto(url + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=15_000)
            assert page.evaluate("crossOriginIsolated"), "the page is not cross-origin isolated (COOP/COEP headers)"
            yield context, page
        finally:
            browser.close()


def _wait(page, timeout_ms: int = 180_000) -> str:
    page.wait_for_selector("body[data-state=ready], body[data-state=done], body[data-state=error]", timeout=timeout_ms)
    return page.get_attribute("body", "data-state")


def _load_in_browser(page) -> str:
    """Switch to the in-browser mode; -> the runtime line the page shows."""
    health = page.evaluate("fetch('/healthz').then(r => r.json())")
    assert health["web"]["available"], f"the in-browser mode is off: {health['web']['reason']}"
    page.check("#mode-browser")
    state = _wait(page)
    assert state == "ready", f"{page.inner_text('#status')}; console: {page.console[-10:]}; errors: {page.errors}"
    return page.inner_text("#runtime-info")


def _drag_box(page, box, side: int) -> None:
    canvas = page.locator("#source").bounding_box()
    scale = canvas["width"] / side
    x0, y0, x1, y1 = box
    page.mouse.move(canvas["x"] + (x0 + 0.5) * scale, canvas["y"] + (y0 + 0.5) * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + (x1 - 0.5) * scale, canvas["y"] + (y1 - 0.5) * scale, steps=8)
    page.mouse.up()
    assert page.inner_text("#box-text") == ",".join(map(str, box))


def _result_png(page) -> np.ndarray:
    png = bytes(page.evaluate(
        "async () => Array.from(new Uint8Array(await (await fetch(document.getElementById('result').src)).arrayBuffer()))"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _edit_in_page(page, box=BOX) -> np.ndarray:
    page.click("#sample")
    assert _wait(page) == "ready", page.inner_text("#status")
    page.click("#clear-box")
    _drag_box(page, box, 64)
    page.fill("#instruction", INSTRUCTION)
    page.click("#edit")
    assert _wait(page) == "done", page.inner_text("#status")
    assert "in this browser" in page.inner_text("#status")
    return _result_png(page)


def _sample() -> np.ndarray:
    return np.asarray(Image.open(resources.files("qk_runtime.serve") / "static" / "sample.png").convert("RGB"))


def _outside_token_box(box, side: int, token: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.ones((side, side), bool)
    mask[y0 // token * token:-(-y1 // token) * token, x0 // token * token:-(-x1 // token) * token] = False
    return mask


def _edit_here_and_in_the_browser(bundle: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(Python runtime's edit, the page's edit in this browser) of the test sample; the page names `label`."""
    _chromium()
    with EditSession(bundle, backend="ort-cpu") as s:
        want = s.edit(_sample(), INSTRUCTION, box=BOX, seed=0).image
    with _serve(bundle) as (url, _), _page(url) as (_, page):
        info = _load_in_browser(page)
        assert label in info and "wasm" in info, info
        got = _edit_in_page(page)
        assert not page.errors, page.errors
    return want, got


def test_fp32_edit_in_the_browser_equals_the_python_runtime():
    want, got = _edit_here_and_in_the_browser(default_bundle_dir().parent / "fp32", "fp32 bundle")
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= TOLERANCE, f"the browser's edit differs from the Python runtime's by up to {diff.max()} levels"


def test_few_step_edit_in_the_browser_equals_the_python_runtime(few_step_bundle):
    """A format-5 bundle (the tiny few-step model, FP32) in the page at 4 steps: the few-step
    sampler (uniform sigmas, step_size fed), the Python runtime's pixels within 1 level."""
    _chromium()
    with EditSession(few_step_bundle, backend="ort-cpu") as s:
        assert s.bundle.few_step is not None and 4 in s.bundle.few_step.steps
        want = s.edit(_sample(), INSTRUCTION, box=BOX, seed=0, steps=4).image
    with _serve(few_step_bundle) as (url, _), _page(url) as (_, page):
        info = _load_in_browser(page)
        assert "fp32 bundle" in info, info
        page.fill("#steps", "4")
        got = _edit_in_page(page)
        assert "decoder (4 steps)" in page.inner_text("#timings")
        assert not page.errors, page.errors
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= TOLERANCE, f"the browser's 4-step edit differs from the Python runtime's by up to {diff.max()} levels"


def test_weight_only_int8_edit_in_the_browser_equals_the_python_runtime(weight_only_bundle):
    """`qk-export --int8 --weight-only` (the tiny model): every INT8 graph runs float kernels on
    dequantized weights on both sides (Q/DQ fusion off), so the browser's edit is the Python
    runtime's within 1 level, as on FP32 bundles (static INT8: INT8_TOLERANCE)."""
    want, got = _edit_here_and_in_the_browser(weight_only_bundle, "int8 weight-only bundle")
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= TOLERANCE, f"the browser's weight-only INT8 edit differs from the Python runtime's by up to {diff.max()} levels"
    assert (want != _sample()).any(), "the edit changed nothing: the comparison proves little"


def test_int8_edit_in_the_browser_against_the_python_runtime_and_offline():
    _chromium()
    bundle = default_bundle_dir()
    with EditSession(bundle, backend="ort-cpu") as s:
        want = s.edit(_sample(), INSTRUCTION, box=BOX, seed=0)
    with _serve(bundle) as (url, shutdown), _page(url) as (context, page):
        info = _load_in_browser(page)
        assert "int8 bundle" in info and "wasm (auto: " in info, info

        # the noise drawn in the page is numpy's, bit for bit
        drawn = page.evaluate("""async () => {
            const { portableNormal } = await import('/web/noise.js');
            const all = new Uint8Array(100 * 4096);
            for (let s = 0; s < 100; s++) all.set(new Uint8Array(portableNormal(s, 1024).buffer), s * 4096);
            let text = '';
            for (let i = 0; i < all.length; i += 8192) text += String.fromCharCode(...all.subarray(i, i + 8192));
            return btoa(text); }""")
        want_noise = np.concatenate([portable_normal(s, (1024,)) for s in range(100)])
        assert base64.b64decode(drawn) == want_noise.tobytes()

        got = _edit_in_page(page)
        diff = np.abs(got.astype(np.int16) - want.image.astype(np.int16)).max(axis=-1)
        outside = _outside_token_box(BOX, 64, TOKEN_PX)
        assert diff[outside].max() == 0, "outside the gate the browser's edit is not the source's own pixels"
        assert diff.max() <= INT8_TOLERANCE, f"inside the gate the browser's edit differs by up to {diff.max()} levels"
        assert diff[~outside].mean() < 1.0, f"mean difference inside the box {diff[~outside].mean():.2f} levels"
        table = page.inner_text("#timings")
        for stage in ("image encoder", "text encoder", "cross-modal gate", "decoder (20 steps)", "image decoder", "runtime total",
                      "round trip (this page)", "worker + page overhead"):
            assert stage in table, table

        # the network cut: the server stopped, the browser offline; edits and generation still run
        shutdown()
        context.set_offline(True)
        assert page.evaluate("fetch('/healthz').then(() => 'reached', () => 'unreachable')") == "unreachable"
        page.click("#sample")
        assert _wait(page) == "ready", page.inner_text("#status")
        page.click("#edit")
        assert _wait(page) == "done", page.inner_text("#status")
        page.fill("#prompt", "a large red circle at the top left")
        page.fill("#seed", "3")
        page.click("#generate")
        assert _wait(page) == "ready", page.inner_text("#status")
        gen = bytes(page.evaluate("""async () => { const img = document.querySelector('#history li.current img');
            return Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer())); }"""))
        gen = np.asarray(Image.open(io.BytesIO(gen)).convert("RGB"))
        assert gen.shape == (64, 64, 3) and np.abs(gen.astype(np.int16) - _sample()).max() > 32, "no new image was generated"
        assert not page.errors, page.errors


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
            + b"\x00" * 16)


def test_damaged_bundle_file_and_bad_input_give_messages(tmp_path):
    _chromium()
    bundle = Path(shutil.copytree(default_bundle_dir(), tmp_path / "int8"))
    with _serve(bundle) as (url, _), _page(url) as (_, page):
        # the server opened (and checked) the bundle; now a file is damaged on its way to the browser
        damaged = bundle / "gateway.onnx"
        good = damaged.read_bytes()
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        page.check("#mode-browser")
        assert _wait(page) == "error"
        message = page.inner_text("#status")
        assert "gateway.onnx" in message and "sha256" in message, message
        assert "not loaded" in page.inner_text("#runtime-info")

        # the page is not stuck: mended, the bundle loads
        damaged.write_bytes(good)
        page.click("#load-bundle")
        assert _wait(page) == "ready", page.inner_text("#status")

        # bad input, each a message and the page usable after it
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
        assert _wait(page) == "error"
        assert "notes.txt is not an image in a supported format" in page.inner_text("#status")
        page.set_input_files("#file", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": _png_header(20000, 20000)}])
        assert _wait(page) == "error"
        assert "over the limit of" in page.inner_text("#status")
        page.set_input_files("#file", files=[{"name": "cut.png", "mimeType": "image/png", "buffer": _png_header(64, 64)}])
        assert _wait(page) == "error"
        page.click("#sample")
        assert _wait(page) == "ready"
        page.fill("#instruction", "   ")
        page.click("#edit")
        assert _wait(page) == "error" and "instruction" in page.inner_text("#status")
        page.fill("#instruction", "\u200b\u200b")
        page.click("#edit")
        assert _wait(page) == "error" and "no visible character" in page.inner_text("#status")
        page.fill("#instruction", INSTRUCTION)
        page.fill("#steps", "0")
        page.click("#edit")
        assert _wait(page) == "error" and "steps" in page.inner_text("#status")
        page.fill("#steps", "")
        bad_box = page.evaluate("""async () => {
            const png = await (await fetch('/static/sample.png')).arrayBuffer();
            try { await window.qkPage.edit({ png, instruction: 'make it blue', box: [50, 10, 40, 30] }); return 'accepted'; }
            catch (err) { return err.message; } }""")
        assert "inverted or empty" in bad_box, bad_box
        page.click("#edit")
        assert _wait(page) == "done", page.inner_text("#status")
        assert not page.errors, page.errors
