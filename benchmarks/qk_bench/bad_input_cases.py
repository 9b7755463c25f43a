"""The malformed-input corpus's cases, by class: bundle paths, outputs, images, numbers, the
server and errors (manifest shape, damaged files, texts). Each builder returns `Case`s for the
harness in `bad_inputs.py` (what a case is, how its outcome is classified, the workspace);
`all_cases` is the whole corpus, `fast_cases` the subset CI runs."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from .bad_inputs import (CPP_TOOL, REPO_ROOT, STEPS, Case, Result, Workspace, bad_images, call_api, call_cli, call_module,
                         call_process, classify_http, link_tree, png_bytes, put, scene, sha256)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, m) -> None:
    put(bundle / "manifest.json", json.dumps(m) if not isinstance(m, (bytes, str)) else m)


def _edit_argv(bundle: Path, image: Path, out: Path, *extra: str, instruction: str = "make the red square blue") -> list[str]:
    return ["--bundle", str(bundle), "--image", str(image), "--instruction", instruction, "--out", str(out),
            "--steps", STEPS, "--backend", "ort-cpu", "--threads", "1", *extra]


def _cpp_call(bundle: Path, image: Path, out: Path, *extra: str,
              instruction: str = "make the red square blue") -> Callable[[], Result]:
    """qk_edit_cpp with these arguments, as a zero-argument call (inputs prepared now)."""
    argv = [str(CPP_TOOL), "--bundle", str(bundle), "--image", str(image), "--instruction", instruction,
            "--out", str(out), "--steps", STEPS, "--threads", "1", *extra]
    return lambda: call_process(argv)


def bundle_consumers(ws: Workspace, bundle: Path, d: Path, which: set[str]) -> dict[str, Callable[[], Result]]:
    """Every consumer of a bundle folder, as a zero-argument call."""
    from qk_runtime.bundle import open_bundle

    calls: dict[str, Callable[[], Result]] = {}
    if "api" in which:
        calls["api open_bundle"] = lambda: call_api(lambda: open_bundle(bundle))
    if "session" in which:
        def session():
            from qk_runtime import EditSession

            def edit():
                with EditSession(bundle, backend="ort-cpu", threads=1) as s:
                    s.edit(ws.image, "make the red square blue", steps=2)
            return call_api(edit)
        calls["api EditSession"] = session
    if "qk-edit" in which:
        from qk_runtime.cli import edit_main
        calls["qk-edit"] = lambda: call_cli(edit_main, _edit_argv(bundle, ws.image, d / "out.png"))
    if "qk-triton" in which:
        from qk_runtime.triton.repo import main as triton_main
        calls["qk-triton"] = lambda: call_cli(triton_main, ["--bundle", str(bundle), "--out", str(d / "repo")])
    if "qk-export --check" in which:
        from qk_export.cli import main as export_main
        calls["qk-export --check"] = lambda: call_cli(export_main, ["--check", str(bundle)])
    if "qk-export --verify" in which:
        from qk_export.cli import main as export_main
        calls["qk-export --verify"] = lambda: call_cli(export_main, ["--verify", str(bundle)])
    if "qk_edit_cpp" in which:
        calls["qk_edit_cpp"] = _cpp_call(bundle, ws.image, d / "out.png")
    return calls


ALL_BUNDLE_CONSUMERS = {"api", "qk-edit", "qk-triton", "qk-export --check", "qk-export --verify", "qk_edit_cpp"}


def _bundle_cases(klass: str, name: str, mutate: Callable[[Workspace, Path], None], consumers: set[str],
                  which: str = "int8", fast: set[str] = frozenset(), watch: bool = False) -> list[Case]:
    cases = []
    for consumer in sorted(consumers):
        def run(ws, d, consumer=consumer):
            bundle = ws.bundle_copy(d, which)
            mutate(ws, bundle)
            return next(iter(bundle_consumers(ws, bundle, d, {consumer}).values()))
        label = {"api": "api open_bundle", "session": "api EditSession"}.get(consumer, consumer)
        cases.append(Case(f"{name} [{label}]", klass, label, run, fast=consumer in fast, watch_secret=watch))
    return cases


# --------------------------------------------------------------------------- 1. bundle paths


def path_cases() -> list[Case]:
    cases: list[Case] = []

    def outside_rel(ws: Workspace, bundle: Path) -> str:
        return os.path.relpath(ws.secret, bundle)

    def graph_file(graph: str, how: str):
        def mutate(ws, bundle):
            m = _manifest(bundle)
            rel = {"relative": outside_rel(ws, bundle), "absolute": str(ws.secret),
                   "dotdot_inside_first": "text_encoder.onnx/../" + outside_rel(ws, bundle)}[how]
            old = m["graphs"][graph]["file"]
            m["graphs"][graph]["file"] = rel
            m["files"].pop(old, None)
            m["files"][rel] = ws.secret_sha
            _write_manifest(bundle, m)
        return mutate

    for graph in ("text_encoder", "decoder", "image_encoder"):
        for how in ("relative", "absolute"):
            cases += _bundle_cases("bundle paths", f"graph {graph} file -> {how} path outside", graph_file(graph, how),
                                   ALL_BUNDLE_CONSUMERS, fast={"api", "qk-triton", "qk_edit_cpp"} if graph == "text_encoder" else
                                   {"qk-triton"}, watch=True)
    cases += _bundle_cases("bundle paths", "graph file x/../../outside", graph_file("gateway", "dotdot_inside_first"),
                           {"api", "qk-triton", "qk_edit_cpp"}, watch=True)

    def files_entry(ws, bundle):
        m = _manifest(bundle)
        m["files"][outside_rel(ws, bundle)] = ws.secret_sha
        _write_manifest(bundle, m)
    cases += _bundle_cases("bundle paths", "extra 'files' entry outside", files_entry, ALL_BUNDLE_CONSUMERS,
                           fast={"qk-export --verify"}, watch=True)

    def external_data(ws, bundle):
        m = _manifest(bundle)
        rel = outside_rel(ws, bundle)
        m["graphs"]["decoder"]["external_data"] = rel
        m["files"][rel] = ws.secret_sha
        _write_manifest(bundle, m)
    cases += _bundle_cases("bundle paths", "decoder external_data outside", external_data, ALL_BUNDLE_CONSUMERS,
                           fast={"qk-triton"}, watch=True)

    def symlink(target: str):
        def mutate(ws, bundle):
            m = _manifest(bundle)
            (bundle / target).unlink()
            (bundle / target).symlink_to(ws.secret)
            m["files"][target] = ws.secret_sha
            if target == "manifest.json":
                return
            _write_manifest(bundle, m)
        return mutate
    for target in ("tokenizer.json", "decoder.onnx", "cmg.onnx"):
        cases += _bundle_cases("bundle paths", f"{target} a symlink to a file outside", symlink(target),
                               ALL_BUNDLE_CONSUMERS, fast={"api"}, watch=True)

    def manifest_link(ws, bundle):
        real = put(ws.secret.parent / f"manifest-{bundle.parent.name}.json", (bundle / "manifest.json").read_bytes())
        (bundle / "manifest.json").unlink()
        (bundle / "manifest.json").symlink_to(real)
    cases += _bundle_cases("bundle paths", "manifest.json a symlink out of the bundle", manifest_link,
                           ALL_BUNDLE_CONSUMERS, fast={"api"})

    def dir_link(ws, bundle):  # a folder inside the bundle that is a link to outside
        (bundle / "sub").symlink_to(ws.secret.parent, target_is_directory=True)
        m = _manifest(bundle)
        m["files"]["sub/secret.txt"] = ws.secret_sha
        _write_manifest(bundle, m)
    cases += _bundle_cases("bundle paths", "a folder symlink out of the bundle", dir_link, ALL_BUNDLE_CONSUMERS,
                           fast={"qk-triton"}, watch=True)

    for bad in ("a//b.onnx", "./decoder.onnx", "decoder.onnx/", "dec\\oder.onnx", "", "..", "../", "dec\u0000.onnx"):
        def odd(ws, bundle, bad=bad):
            m = _manifest(bundle)
            m["files"][bad] = "0" * 64
            _write_manifest(bundle, m)
        cases += _bundle_cases("bundle paths", f"odd file name {bad!r}", odd, {"api", "qk_edit_cpp"},
                               fast={"api"} if bad in ("..", "") else set())

    for value in (None, 17, ["decoder.onnx"], {"a": 1}):
        def not_string(ws, bundle, value=value):
            m = _manifest(bundle)
            m["graphs"]["decoder"]["file"] = value
            _write_manifest(bundle, m)
        cases += _bundle_cases("bundle paths", f"graph file {value!r}", not_string, {"api", "qk_edit_cpp", "qk-triton"})

    # the shared text encoder rule: only ../<sibling bundle>/<its own text encoder>
    def sibling(kind: str):
        def mutate(ws, bundle):
            m = _manifest(bundle)
            if kind == "not a bundle":
                other = bundle.parent / "plain"
                other.mkdir()
                shutil.copy(ws.secret, other / "text_encoder.onnx")
                rel = "../plain/text_encoder.onnx"
            elif kind == "other file of the sibling":
                rel = "../int8/tokenizer.json"
            elif kind == "sibling a symlink to a bundle elsewhere":
                os.symlink(ws.int8, bundle.parent / "linked")  # beside by name, elsewhere after the link
                rel = "../linked/text_encoder.onnx"
            elif kind == "two levels up":
                rel = "../../shared/bundles/int8/text_encoder.onnx"
            elif kind == "sibling of another hash":
                m["files"]["../int8/text_encoder.onnx"] = "0" * 64
                _write_manifest(bundle, m)
                return
            elif kind == "dotdot after the sibling":
                rel = "../int8/../int8/text_encoder.onnx"
            elif kind == "for the decoder":
                m["graphs"]["decoder"]["file"] = "../int8/decoder.onnx"
                m["files"]["../int8/decoder.onnx"] = m["files"].pop("decoder.onnx")
                _write_manifest(bundle, m)
                return
            old = m["graphs"]["text_encoder"]["file"]
            sha = m["files"].pop(old)
            m["graphs"]["text_encoder"]["file"] = rel
            m["files"].setdefault(rel, sha if kind != "not a bundle" else sha256(ws.secret))
            _write_manifest(bundle, m)
        return mutate
    for kind in ("not a bundle", "other file of the sibling", "sibling a symlink to a bundle elsewhere", "two levels up",
                 "sibling of another hash", "dotdot after the sibling", "for the decoder"):
        cases += _bundle_cases("bundle paths", f"fp32 shared text encoder: {kind}", sibling(kind),
                               {"api", "qk_edit_cpp", "qk-triton"}, which="fp32",
                               fast={"api"} if kind in ("not a bundle", "two levels up") else set())
    return cases


# --------------------------------------------------------------------------- 6. errors: manifest shape, damaged files


def manifest_shape_cases() -> list[Case]:
    cases: list[Case] = []
    raw = {
        "nested 200000 levels": "[" * 200_000 + "]" * 200_000,
        "nested 1000 levels in a key": '{"format": "qk-bundle", "x": ' + "[" * 1000 + "]" * 1000 + "}",
        "nested 65 levels": '{"a": ' + "[" * 64 + "]" * 64 + "}",
        "5 MB of whitespace": "{" + " " * (5 * 1024 * 1024) + "}",
        "not UTF-8": b"\xff\xfe{\x00}",
        "not JSON": "{format: qk-bundle",
        "empty file": "",
        "a JSON array": "[1, 2, 3]",
        "a JSON string": '"qk-bundle"',
        "NaN literal": '{"format": NaN}',
    }
    for name, text in raw.items():
        def mutate(ws, bundle, text=text):
            _write_manifest(bundle, text)
        fast = {"api", "qk-triton", "qk-export --check", "qk-export --verify", "qk_edit_cpp"} if name == "nested 200000 levels" else {"api"}
        cases += _bundle_cases("errors", f"manifest {name}", mutate, ALL_BUNDLE_CONSUMERS | {"session"}, fast=fast)

    edits = {
        "format_version a string": ("format_version", "4"),
        "format_version true": ("format_version", True),
        "format_version 99": ("format_version", 99),
        "files a list": ("files", ["decoder.onnx"]),
        "files empty": ("files", {}),
        "graphs a list": ("graphs", []),
        "dims a string": ("dims", "64"),
        "precision int4": ("precision", "int4"),
        "sparse_attn magic": ("sparse_attn", "magic"),
        "sampler null": ("sampler", None),
    }
    for name, (key, value) in edits.items():
        def mutate(ws, bundle, key=key, value=value):
            m = _manifest(bundle)
            m[key] = value
            _write_manifest(bundle, m)
        cases += _bundle_cases("errors", f"manifest {name}", mutate, {"api", "qk_edit_cpp", "qk-triton"},
                               fast={"api"} if name in ("files a list", "graphs a list") else set())

    # `quantization.weight_only`: the INT8 graphs the runtimes open with Q/DQ fusion off (contract.py
    # WEIGHT_ONLY_KEY); every consumer that opens the bundle reads it
    weight_only = {
        "quantization a list": lambda m: m.update(quantization=["decoder"]),
        "quantization.weight_only a string": lambda m: m["quantization"].update(weight_only="decoder"),
        "quantization.weight_only repeated": lambda m: m["quantization"].update(weight_only=["decoder", "decoder"]),
        "quantization.weight_only an unknown graph": lambda m: m["quantization"].update(weight_only=["unet"]),
        "quantization.weight_only an FP32 graph": lambda m: m["quantization"].update(weight_only=["image_decoder"]),
    }
    for name, change in weight_only.items():
        def mutate(ws, bundle, change=change):
            m = _manifest(bundle)
            m["quantization"] = m.get("quantization") or {}
            change(m)
            _write_manifest(bundle, m)
        cases += _bundle_cases("errors", f"manifest {name}", mutate, {"api", "qk_edit_cpp", "qk-triton"},
                               fast={"api", "qk_edit_cpp"} if name == "quantization.weight_only an FP32 graph" else set())

    for name, value in {"sha256 a number": 5, "sha256 null": None}.items():
        def mutate(ws, bundle, value=value):
            m = _manifest(bundle)
            m["files"]["cmg.onnx"] = value
            _write_manifest(bundle, m)
        cases += _bundle_cases("errors", f"manifest {name}", mutate, {"api", "qk_edit_cpp"})

    for dim, value in {"image_size": 10**9, "max_length": 2**40, "width": -1, "depth": 10**7, "patch": 0,
                       "latent_channels": 1.5}.items():
        def mutate(ws, bundle, dim=dim, value=value):
            m = _manifest(bundle)
            m["dims"][dim] = value
            _write_manifest(bundle, m)
        cases += _bundle_cases("numbers", f"dims.{dim}={value}", mutate, {"api", "qk_edit_cpp"}, fast={"api"} if dim == "image_size" else set())
    return cases


def damaged_file_cases() -> list[Case]:
    """Graph and weight files truncated or replaced, with the manifest's sha256 updated to match."""
    cases: list[Case] = []
    damage = {
        "truncated to half": lambda data: data[: len(data) // 2],
        "truncated to 100 bytes": lambda data: data[:100],
        "empty": lambda data: b"",
        "random bytes": lambda data: np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
    }
    # the graphs an edit with the shipped (region) bundle loads; decoder.onnx loads on first use (sparse none, generation)
    for target in ("text_encoder.onnx", "decoder_region.onnx", "decoder.weights", "gateway.onnx", "image_decoder.onnx"):
        for how, fn in damage.items():
            def mutate(ws, bundle, target=target, fn=fn):
                data = fn((bundle / target).read_bytes())
                put(bundle / target, data)
                m = _manifest(bundle)
                m["files"][target] = hashlib.sha256(data).hexdigest()
                _write_manifest(bundle, m)
            consumers = {"session", "qk-edit", "qk_edit_cpp"} | ({"qk-export --check"} if target.endswith(".onnx") else set())
            fast = {"session", "qk-edit", "qk-export --check"} if how == "truncated to half" and target in ("decoder_region.onnx", "decoder.weights") else set()
            cases += _bundle_cases("errors", f"{target} {how}, hash updated", mutate, consumers, fast=fast)
    return cases


# --------------------------------------------------------------------------- 4. numbers in manifests


def manifest_number_cases() -> list[Case]:
    cases: list[Case] = []
    values = {
        "steps": [0, -1, 1e308, 20.5, "20", True, 10**12],
        "text_guidance": [float("nan"), float("inf"), 1e308, -1.0, "3", None],
        "image_guidance": [float("nan"), -float("inf"), 1e308, -0.5],
        "gen_guidance": [float("nan"), 1e308],
        "gate_threshold": [float("nan"), 2.0, -0.1, "0.3"],
        "shift": [0, -1, float("inf"), 1e308],
        "halo": [-1, 10**9, 1.5],
        "region_buckets": [[], [0.5], [1.0, 0.5, 1.0], [float("nan"), 1.0], "all", [0.0, 1.0]],
    }
    for key, vals in values.items():
        for v in vals:
            def mutate(ws, bundle, key=key, v=v):
                m = _manifest(bundle)
                m["sampler"][key] = v
                _write_manifest(bundle, m)  # json.dumps writes NaN / Infinity literals
            consumers = {"api", "qk_edit_cpp"} if key != "gen_guidance" else {"api"}
            if key in ("text_guidance", "steps") and v in (1e308, 0):
                consumers |= {"qk-edit"}
            fast = {"api"} if (key, repr(v)) in (("text_guidance", "nan"), ("steps", "1e+308"), ("halo", "-1")) else set()
            if key == "text_guidance" and v == 1e308:
                fast = {"api", "qk-edit", "qk_edit_cpp"}
            cases += _bundle_cases("numbers", f"manifest sampler.{key}={v!r}", mutate, consumers, fast=fast)

    def composite(entry):
        def mutate(ws, bundle):
            m = _manifest(bundle)
            m["format_version"] = 4
            m["composite"] = entry
            _write_manifest(bundle, m)
        return mutate
    for entry in ({"kind": "changed", "lo": float("nan"), "hi": 0.1, "widen": 1},
                  {"kind": "changed", "lo": 0.05, "hi": 2.0, "widen": 1},
                  {"kind": "changed", "lo": 0.05, "hi": 0.1, "widen": 100},
                  {"kind": "changed", "lo": 0.05, "hi": 0.1, "widen": 1.5},
                  {"kind": "blend"}):
        cases += _bundle_cases("numbers", f"manifest composite {entry}", composite(entry), {"api", "qk_edit_cpp"})

    # format 5's few_step (contract.py FEW_STEP_FIELDS). The shipped bundles are format 4 with
    # decoders that take no step_size: each entry below is refused for what is wrong with it (every
    # consumer reads `few_step` before the graphs), and a well-formed entry for the missing input.
    good = {"steps": [1, 2, 4], "sigmas": "uniform", "step_size": "sigma - sigma_next", "other_step_size": 0.0}

    def few_step(change, version=5):
        def mutate(ws, bundle):
            m = _manifest(bundle)
            m["format_version"] = version
            m["few_step"] = dict(good)
            change(m)
            _write_manifest(bundle, m)
        return mutate

    def add_step_size(m):  # a decoder input without the entry that says what to feed it
        del m["few_step"]
        m["graphs"]["decoder"]["inputs"].insert(2, {"name": "step_size", "dtype": "float32", "shape": ["batch"]})

    few_consumers = {"api", "qk_edit_cpp", "qk-triton"}
    for name, change, version, fast in (
            ("few_step in a format-4 manifest", lambda m: None, 4, few_consumers),
            ("few_step with an unknown key", lambda m: m["few_step"].update(shift=3.0), 5, {"api"}),
            ("few_step without sigmas", lambda m: m["few_step"].pop("sigmas"), 5, set()),
            ("few_step a list", lambda m: m.update(few_step=[1, 2, 4]), 5, set()),
            ("few_step.steps unsorted [4, 2, 1]", lambda m: m["few_step"].update(steps=[4, 2, 1]), 5, {"qk_edit_cpp"}),
            ("few_step.steps repeated [2, 2]", lambda m: m["few_step"].update(steps=[2, 2]), 5, set()),
            ("few_step.steps not integers [1, 2.5]", lambda m: m["few_step"].update(steps=[1, 2.5]), 5, set()),
            ("few_step.steps [0, 1]", lambda m: m["few_step"].update(steps=[0, 1]), 5, set()),
            ("few_step.steps empty", lambda m: m["few_step"].update(steps=[]), 5, set()),
            ("few_step.sigmas 'karras'", lambda m: m["few_step"].update(sigmas="karras"), 5, set()),
            ("few_step.other_step_size 0.5", lambda m: m["few_step"].update(other_step_size=0.5), 5, set()),
            ("few_step but the decoders take no step_size", lambda m: None, 5, {"api", "qk-triton"}),
            ("decoder step_size input without few_step", add_step_size, 5, {"qk_edit_cpp"})):
        cases += _bundle_cases("numbers", f"manifest {name}", few_step(change, version), few_consumers, fast=fast)
    return cases


# --------------------------------------------------------------------------- 3. images


def image_cases() -> list[Case]:
    cases: list[Case] = []
    from PIL import Image

    images = bad_images()
    names = list(images)
    lazily_opened = set()  # the files PIL opens (reads the header of) without an error: a caller can hand those in
    for name, data in images.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image.open(io.BytesIO(data))
            lazily_opened.add(name)
        except Exception:  # noqa: BLE001 - PIL refuses it before any runtime could see it
            pass
    fast_names = {"png_truncated_50pct", "png_idat_garbage", "png_idat_bad_crc", "png_broken_exif", "png_bomb_100k",
                  "jpeg_truncated_half", "text_file", "empty_file"}

    for name in names:
        def api_path(ws, d, name=name):
            return lambda: call_api(lambda: ws.session.edit(ws.bad[name], "make the red square blue", steps=2))

        def api_lazy(ws, d, name=name):
            from PIL import Image

            img = Image.open(ws.bad[name])  # lazily opened: the header read, nothing decoded yet
            return lambda: call_api(lambda: ws.session.edit(img, "make the red square blue", steps=2))

        def cli(ws, d, name=name):
            from qk_runtime.cli import edit_main
            return lambda: call_cli(edit_main, _edit_argv(ws.int8, ws.bad[name], d / "out.png"))

        def server(ws, d, name=name):
            data = ws.bad[name].read_bytes()
            return lambda: classify_http(ws.client.post("/v1/edit", files={"image": ("in.png", data, "image/png")},
                                                        data={"instruction": "make the red square blue", "steps": STEPS}))

        def cpp(ws, d, name=name):
            return _cpp_call(ws.int8, ws.bad[name], d / "out.png")

        fast = name in fast_names
        cases += [Case(f"image {name} [api path]", "images", "api EditSession", api_path, fast=fast),
                  Case(f"image {name} [cli]", "images", "qk-edit", cli, fast=fast and name == "png_idat_garbage"),
                  Case(f"image {name} [server]", "server", "qk-serve", server, fast=fast),
                  Case(f"image {name} [cpp]", "images", "qk_edit_cpp", cpp, fast=fast and name == "png_truncated_50pct")]
        if name in lazily_opened:
            cases.append(Case(f"image {name} [api lazily opened PIL image]", "images", "api EditSession", api_lazy,
                              fast=fast))

    # PIL images in other states, numpy arrays that are not images
    def pil_closed(ws, d):
        from PIL import Image
        img = Image.open(ws.image)
        img.load()
        img.close()
        return lambda: call_api(lambda: ws.session.edit(img, "make the red square blue", steps=2))

    def pil_closed_lazy(ws, d):
        from PIL import Image
        img = Image.open(ws.image)
        img.close()
        return lambda: call_api(lambda: ws.session.edit(img, "make the red square blue", steps=2))

    def pil_new_closed(ws, d):
        from PIL import Image
        img = Image.new("RGB", (40, 40))
        img.close()
        return lambda: call_api(lambda: ws.session.edit(img, "make the red square blue", steps=2))

    def pil_mode_f(ws, d):
        from PIL import Image
        return lambda: call_api(lambda: ws.session.edit(Image.new("F", (40, 40)), "make it blue", steps=2))

    cases += [Case("PIL image closed after loading [api]", "images", "api EditSession", pil_closed, fast=True),
              Case("PIL image closed before loading [api]", "images", "api EditSession", pil_closed_lazy, fast=True),
              Case("PIL image made and closed [api]", "images", "api EditSession", pil_new_closed),
              Case("PIL image mode F [api]", "images", "api EditSession", pil_mode_f)]
    arrays = {"float64 array": np.zeros((40, 40, 3)), "two channels": np.zeros((40, 40, 2), np.uint8),
              "empty array": np.zeros((0, 0, 3), np.uint8), "4-D array": np.zeros((1, 40, 40, 3), np.uint8),
              "object array": np.array([[None]]), "bool array": np.zeros((8, 8), bool),
              "huge header-free array": np.zeros((1, 70_000_000), np.uint8)}
    for name, arr in arrays.items():
        def run(ws, d, arr=arr):
            return lambda: call_api(lambda: ws.session.edit(arr, "make the red square blue", steps=2))
        cases.append(Case(f"numpy {name} [api]", "images", "api EditSession", run, fast=name == "float64 array"))
    for what in ("a folder", "a missing file", "an int"):
        def run(ws, d, what=what):
            image = {"a folder": d, "a missing file": d / "missing.png", "an int": 7}[what]
            return lambda: call_api(lambda: ws.session.edit(image, "make the red square blue", steps=2))
        cases.append(Case(f"image is {what} [api]", "images", "api EditSession", run))
    return cases


# --------------------------------------------------------------------------- 6. errors: texts


TEXTS = {
    "empty": "", "blank": "   \t\n", "zero-width space": "\u200b", "zero-width run": "\u200b\u200c\u200d\ufeff\u2060",
    "NUL": "\0", "NULs": "\0\0\0", "NUL inside": "make it\0 blue", "control characters": "\x01\x02\x1b",
    "file separators": "\x1c\x1d\x1e\x1f", "bidi marks": "\u200e\u200f\u202a\u202c", "soft hyphen": "\u00ad",
    "tag characters": "\U000e0001\U000e0041", "private use": "\ue000\uf8ff", "lone surrogate": "\udcff\udcfe",
    "line separators": "\u2028\u2029",
}


def text_cases() -> list[Case]:
    cases: list[Case] = []
    for name, text in TEXTS.items():
        def api_edit(ws, d, text=text):
            return lambda: call_api(lambda: ws.session.edit(ws.image, text, steps=2))

        def api_gen(ws, d, text=text):
            return lambda: call_api(lambda: ws.session.generate(text, steps=2))

        def cli_edit(ws, d, text=text):
            from qk_runtime.cli import edit_main
            return lambda: call_cli(edit_main, _edit_argv(ws.int8, ws.image, d / "out.png", instruction=text))

        def cli_gen(ws, d, text=text):
            from qk_runtime.cli import generate_main
            return lambda: call_cli(generate_main, ["--bundle", str(ws.int8), "--prompt", text, "--out", str(d / "g.png"),
                                                    "--steps", STEPS, "--backend", "ort-cpu", "--threads", "1"])

        def server(ws, d, text=text):
            raw = text.encode("utf-8", "surrogateescape")
            return lambda: classify_http(ws.client.post(
                "/v1/edit", files={"image": ("in.png", ws.image.read_bytes(), "image/png"),
                                   "instruction": (None, raw), "steps": (None, STEPS.encode())}))

        def server_gen(ws, d, text=text):
            raw = text.encode("utf-8", "surrogateescape")
            return lambda: classify_http(ws.client.post("/v1/generate", files={"prompt": (None, raw),
                                                                               "steps": (None, STEPS.encode())}))

        def cpp(ws, d, text=text):
            return _cpp_call(ws.int8, ws.image, d / "out.png", instruction=text)

        fast = name in ("zero-width run", "NUL", "lone surrogate")
        cases += [Case(f"text {name} [api edit]", "errors", "api EditSession", api_edit, fast=fast),
                  Case(f"text {name} [api generate]", "errors", "api EditSession", api_gen),
                  Case(f"text {name} [qk-edit]", "errors", "qk-edit", cli_edit, fast=fast and name == "NUL"),
                  Case(f"text {name} [qk-generate]", "errors", "qk-generate", cli_gen),
                  Case(f"text {name} [server edit]", "server", "qk-serve", server, fast=fast),
                  Case(f"text {name} [server generate]", "server", "qk-serve", server_gen)]
        if "\0" not in text and name != "empty":  # argv cannot carry NUL; "" is refused by the flag parser's rule
            cases.append(Case(f"text {name} [qk_edit_cpp]", "errors", "qk_edit_cpp", cpp, fast=fast))
    # invalid UTF-8 bytes in form fields
    for field_name in ("instruction", "box", "steps"):
        def run(ws, d, field_name=field_name):
            fields = {"instruction": (None, b"make it blue"), "steps": (None, STEPS.encode())}
            fields[field_name] = (None, b"make it \xff\xfe blue" if field_name == "instruction" else b"\xff1")
            return lambda: classify_http(ws.client.post("/v1/edit", files={"image": ("in.png", ws.image.read_bytes(), "image/png"),
                                                                           **fields}))
        cases.append(Case(f"server field {field_name} not UTF-8", "server", "qk-serve", run, fast=field_name == "instruction"))

    def urlencoded(ws, d):
        return lambda: classify_http(ws.client.post("/v1/generate", content=b"prompt=a%FF%FEcircle&steps=2",
                                                    headers={"Content-Type": "application/x-www-form-urlencoded"}))
    cases.append(Case("server urlencoded prompt not UTF-8", "server", "qk-serve", urlencoded, fast=True))
    return cases


# --------------------------------------------------------------------------- 4. numbers on the command line and the API


BAD_FLOATS = ["nan", "inf", "-inf", "1e308", "-1", "101", "1e-400x"]


def cli_number_cases() -> list[Case]:
    cases: list[Case] = []
    from qk_runtime.cli import edit_main, generate_main

    for flag in ("--text-guidance", "--image-guidance"):
        for v in BAD_FLOATS:
            def cli(ws, d, flag=flag, v=v):
                return lambda: call_cli(edit_main, _edit_argv(ws.int8, ws.image, d / "out.png", flag, v))

            def cpp(ws, d, flag=flag, v=v):
                return _cpp_call(ws.int8, ws.image, d / "out.png", flag, v)

            def api(ws, d, flag=flag, v=v):
                key = flag[2:].replace("-", "_")
                try:
                    value = float(v)
                except ValueError:
                    value = v
                return lambda: call_api(lambda: ws.session.edit(ws.image, "make it blue", steps=2, **{key: value}))
            fast = v in ("nan", "1e308")
            cases += [Case(f"qk-edit {flag} {v}", "numbers", "qk-edit", cli, fast=fast and flag == "--text-guidance"),
                      Case(f"qk_edit_cpp {flag} {v}", "numbers", "qk_edit_cpp", cpp, fast=fast and flag == "--image-guidance"),
                      Case(f"api edit {flag[2:]}={v}", "numbers", "api EditSession", api, fast=fast)]
    for v in BAD_FLOATS:
        def gen(ws, d, v=v):
            return lambda: call_cli(generate_main, ["--bundle", str(ws.int8), "--prompt", "a red circle", "--out",
                                                    str(d / "g.png"), "--steps", STEPS, "--backend", "ort-cpu",
                                                    "--threads", "1", "--guidance", v])
        cases.append(Case(f"qk-generate --guidance {v}", "numbers", "qk-generate", gen, fast=v == "1e308"))
    ints = {"--steps": ["0", "-1", "1001", "99999999999999999999", "2.5"], "--seed": ["-1", str(2**64), "1e3"],
            "--threads": ["0", "-1", "100000"]}
    for flag, vals in ints.items():
        for v in vals:
            cpp_too = not (flag == "--threads" and v == "0")  # qk_edit_cpp documents --threads 0 as one per core
            def cli(ws, d, flag=flag, v=v):
                argv = _edit_argv(ws.int8, ws.image, d / "out.png")
                for k in (flag,):
                    if k in argv:
                        i = argv.index(k)
                        del argv[i:i + 2]
                return lambda: call_cli(edit_main, argv + [flag, v])

            def cpp(ws, d, flag=flag, v=v):
                argv = [str(CPP_TOOL), "--bundle", str(ws.int8), "--image", str(ws.image), "--instruction", "make it blue",
                        "--out", str(d / "out.png"), flag, v]
                if flag != "--steps":
                    argv += ["--steps", STEPS]
                return lambda: call_process(argv)
            cases.append(Case(f"qk-edit {flag} {v}", "numbers", "qk-edit", cli, fast=v == "-1" and flag == "--threads"))
            if cpp_too:
                cases.append(Case(f"qk_edit_cpp {flag} {v}", "numbers", "qk_edit_cpp", cpp))
    for box in ("nan,0,10,10", "0,0,1e308,5", "0,0,inf,5", "-1,0,10,10", "0,0,10", "10,10,5,5"):
        def run(ws, d, box=box):
            return lambda: call_api(lambda: ws.session.edit(ws.image, "make it blue", box, steps=2))
        cases.append(Case(f"api box {box}", "numbers", "api EditSession", run))
    return cases


def train_cases() -> list[Case]:
    """qk-train / qk-eval arguments and configs (the `train` extra)."""
    cases: list[Case] = []

    def train(argv_fn, fast=False, name="", klass="numbers"):
        def run(ws, d):
            argv = argv_fn(ws, d)
            return lambda: call_module("qk_train.train", argv)
        return Case(name, klass, "qk-train", run, fast=fast)

    base = lambda d: ["--preset", "tiny", "--out", str(d / "run"), "--max-steps", "1", "--no-progress"]  # noqa: E731
    for v in ("-1", "0", "100000"):
        cases.append(train(lambda ws, d, v=v: base(d) + ["--threads", v], fast=v == "-1", name=f"qk-train --threads {v}"))
    sets = ["train.batch_size=1e12", "train.batch_size=1e400", "train.batch_size=-1", "train.batch_size=nan",
            "train.lr=nan", "train.lr=inf", "train.grad_clip=inf", "train.ema_decay=nan", "decoder.width=1000000000",
            "decoder.depth=100000", "data.image_size=1000000", "data.buckets=[1000000]", "train.ae_batch_size=1e12",
            "text.max_length=1000000000", "decoder.mlp_ratio=inf", "train.steps=1e400"]
    for s in sets:
        preset = ["--preset", "small"] if s.startswith("train.ae_") else []  # tiny has no autoencoder stage
        cases.append(train(lambda ws, d, s=s, preset=preset: base(d) + preset + ["--set", s], fast=s == "train.batch_size=1e12",
                           name=f"qk-train --set {s}"))
    for flag, v in (("--time-budget", "nan"), ("--time-budget", "inf"), ("--checkpoint-minutes", "-1"),
                    ("--max-steps", "0"), ("--data-workers", "-1"), ("--steps", "0")):
        cases.append(train(lambda ws, d, flag=flag, v=v: base(d) + [flag, v], name=f"qk-train {flag} {v}"))
    presets = {"not UTF-8": b"name: x\ntrain: {lr: \xff\xfe}\n", "empty": b"", "only a comment": b"# nothing\n",
               "a list": b"- 1\n- 2\n", "nested 5000 levels": b"[" * 5000 + b"]" * 5000, "not YAML": b"train: {lr: [\n",
               "train.lr nan": b"train: {lr: .nan}\n", "batch 1e12": b"train: {batch_size: 1000000000000}\n"}
    for name, data in presets.items():
        def argv(ws, d, data=data):
            preset = put(d / "preset.yaml", data)
            return ["--preset", str(preset), "--out", str(d / "run"), "--max-steps", "1", "--no-progress"]
        cases.append(train(argv, fast=name == "not UTF-8", name=f"qk-train preset {name}", klass="errors"))
    return cases


def checkpoint_cases() -> list[Case]:
    """Damaged pretrained.json (and friends) in a checkpoint, for qk-export, qk-eval and qk-train --init-from."""
    cases: list[Case] = []
    broken = {"not JSON": "{text_encoder: ", "a list": "[]", "no sha256": '{"text_encoder": {"package": "x"}}',
              "sha256 a number": '{"text_encoder": {"sha256": 5}}', "entry a string": '{"text_encoder": "abc"}',
              "nested 100000 levels": "[" * 100_000 + "]" * 100_000, "not UTF-8": b"\xff\xfe",
              "empty": ""}
    for name, text in broken.items():
        def prep(ws, d, text=text):
            ck = link_tree(ws.checkpoint, d / "ckpt")
            put(ck / "pretrained.json", text)
            return ck

        def export(ws, d, prep=prep):
            ck = prep(ws, d)
            return lambda: call_module("qk_export.cli", ["--model", str(ck), "--out", str(d / "bundle"), "--quiet"])

        def evaluate(ws, d, prep=prep):
            ck = prep(ws, d)
            return lambda: call_module("qk_train.eval.evaluate", ["--model", str(ck), "--n", "1", "--gen-n", "0", "--json",
                                                                  str(d / "r.json"), "--no-progress"])

        def init_from(ws, d, prep=prep):
            ck = prep(ws, d)
            return lambda: call_module("qk_train.train", ["--preset", "small", "--init-from", str(ck), "--out", str(d / "run"),
                                                          "--max-steps", "1", "--no-progress"])
        fast = name == "not JSON"
        cases += [Case(f"pretrained.json {name} [qk-export]", "errors", "qk-export", export, fast=fast),
                  Case(f"pretrained.json {name} [qk-eval]", "errors", "qk-eval", evaluate),
                  Case(f"pretrained.json {name} [qk-train --init-from]", "errors", "qk-train", init_from,
                       fast=fast and name == "not JSON")]
    return cases


# --------------------------------------------------------------------------- 2. outputs


def output_cases() -> list[Case]:
    from qk_runtime.cli import edit_main, generate_main

    cases: list[Case] = []

    def image_copy(d: Path) -> Path:
        return put(d / "mine.png", png_bytes(scene()))

    def edit_case(name, argv_fn, fast=False):
        def run(ws, d):
            return lambda: call_cli(edit_main, argv_fn(ws, d))
        return Case(name, "outputs", "qk-edit", run, fast=fast)

    cases += [
        edit_case("qk-edit --out is --image", lambda ws, d: _edit_argv(ws.int8, image_copy(d), d / "mine.png"), fast=True),
        edit_case("qk-edit --out is --image by another path",
                  lambda ws, d: _edit_argv(ws.int8, image_copy(d), d / "sub" / ".." / "mine.png") if (d / "sub").mkdir() is None else []),
        edit_case("qk-edit --out a symlink to --image",
                  lambda ws, d: _edit_argv(ws.int8, image_copy(d), _symlink(d / "link.png", d / "mine.png"))),
        edit_case("qk-edit --out a hard link to --image",
                  lambda ws, d: _edit_argv(ws.int8, image_copy(d), _hardlink(d / "hard.png", d / "mine.png"))),
        edit_case("qk-edit --json is --image", lambda ws, d: _edit_argv(ws.int8, image_copy(d), d / "o.png", "--json", str(d / "mine.png")),
                  fast=True),
        edit_case("qk-edit --json is --image with --overwrite-input",
                  lambda ws, d: _edit_argv(ws.int8, image_copy(d), d / "o.png", "--json", str(d / "mine.png"), "--overwrite-input")),
        edit_case("qk-edit --json is the bundle's manifest",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d), ws.image, d / "o.png", "--json", str(d / "int8" / "manifest.json")),
                  fast=True),
        edit_case("qk-edit --json a new file inside the bundle",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d), ws.image, d / "o.png", "--json", str(d / "int8" / "t.json"))),
        edit_case("qk-edit --out a graph file of the bundle",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d), ws.image, d / "int8" / "decoder.png")),
        edit_case("qk-edit --out the bundle's tokenizer (as .png)",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d), ws.image, _symlink(d / "tok.png", d / "int8" / "tokenizer.json"))),
        edit_case("qk-edit fp32 --json inside its shared text encoder's bundle",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d, "fp32"), ws.image, d / "o.png", "--json", str(d / "int8" / "manifest.json")),
                  fast=True),
        edit_case("qk-edit fp32 --out inside its shared text encoder's bundle",
                  lambda ws, d: _edit_argv(ws.bundle_copy(d, "fp32"), ws.image, d / "int8" / "x.png")),
    ]

    def gen_case(name, argv_fn):
        def run(ws, d):
            return lambda: call_cli(generate_main, argv_fn(ws, d))
        return Case(name, "outputs", "qk-generate", run)
    cases += [gen_case("qk-generate --out inside the bundle", lambda ws, d: [
                  "--bundle", str(ws.bundle_copy(d)), "--prompt", "a red circle", "--out", str(d / "int8" / "g.png"), "--steps", STEPS]),
              gen_case("qk-generate --json the bundle's manifest", lambda ws, d: [
                  "--bundle", str(ws.bundle_copy(d)), "--prompt", "a red circle", "--out", str(d / "g.png"), "--json",
                  str(d / "int8" / "manifest.json"), "--steps", STEPS])]

    def cpp_case(name, call_fn, fast=False):
        def run(ws, d):
            return call_fn(ws, d)  # inputs prepared here, the call made by run_case
        return Case(name, "outputs", "qk_edit_cpp", run, fast=fast)
    cases += [cpp_case("qk_edit_cpp --out is --image", lambda ws, d: _cpp_call(ws.int8, image_copy(d), d / "mine.png"), fast=True),
              cpp_case("qk_edit_cpp --json is --image", lambda ws, d: _cpp_call(ws.int8, image_copy(d), d / "o.png", "--json", str(d / "mine.png"))),
              cpp_case("qk_edit_cpp --json the bundle's manifest",
                       lambda ws, d: _cpp_call(ws.bundle_copy(d), ws.image, d / "o.png", "--json", str(d / "int8" / "manifest.json"))),
              cpp_case("qk_edit_cpp fp32 --out inside the shared text encoder's bundle",
                       lambda ws, d: _cpp_call(ws.bundle_copy(d, "fp32"), ws.image, d / "int8" / "x.png"))]

    def triton_case(name, prep, fast=False):
        def run(ws, d):
            from qk_runtime.triton.repo import main
            argv = prep(ws, d)
            return lambda: call_cli(main, argv)
        return Case(name, "outputs", "qk-triton", run, fast=fast)
    cases += [triton_case("qk-triton --out is the bundle", lambda ws, d: ["--bundle", str(ws.bundle_copy(d)), "--out", str(d / "int8"), "--force"]),
              triton_case("qk-triton --out inside the bundle", lambda ws, d: ["--bundle", str(ws.bundle_copy(d)), "--out", str(d / "int8" / "repo")]),
              triton_case("qk-triton --out the folder holding the bundle", lambda ws, d: ["--bundle", str(ws.bundle_copy(d)), "--out", str(d), "--force"]),
              triton_case("qk-triton fp32 --out is its shared text encoder's bundle",
                          lambda ws, d: ["--bundle", str(ws.bundle_copy(d, "fp32")), "--out", str(d / "int8"), "--force"], fast=True)]

    def export_case(name, prep, fast=False):
        def run(ws, d):
            argv = prep(ws, d)
            return lambda: call_module("qk_export.cli", argv + ["--quiet"])
        return Case(name, "outputs", "qk-export", run, fast=fast)
    cases += [export_case("qk-export --out is --model", lambda ws, d: ["--model", str(link_tree(ws.checkpoint, d / "ck")), "--out", str(d / "ck")]),
              export_case("qk-export --out inside --model", lambda ws, d: ["--model", str(link_tree(ws.checkpoint, d / "ck")), "--out", str(d / "ck" / "b")], fast=True),
              export_case("qk-export --out is --text-encoder-from", lambda ws, d: [
                  "--model", str(ws.checkpoint), "--out", str(ws.bundle_copy(d)), "--text-encoder-from", str(d / "int8")]),
              export_case("qk-export --out holds --model", lambda ws, d: ["--model", str(link_tree(ws.checkpoint, d / "x" / "ck")), "--out", str(d / "x")])]

    def train_case(name, prep):
        def run(ws, d):
            argv = prep(ws, d)
            return lambda: call_module("qk_train.train", argv)
        return Case(name, "outputs", "qk-train", run)
    cases += [train_case("qk-train --out is --init-from", lambda ws, d: ["--preset", "small", "--init-from", str(link_tree(ws.checkpoint, d / "ck")),
                                                                       "--out", str(d / "ck"), "--max-steps", "1", "--no-progress"]),
              train_case("qk-train --out inside --init-from", lambda ws, d: ["--preset", "small", "--init-from", str(link_tree(ws.checkpoint, d / "ck")),
                                                                           "--out", str(d / "ck" / "run"), "--max-steps", "1", "--no-progress"]),
              train_case("qk-train --out is the preset file", lambda ws, d: ["--preset", str(put(d / "p.yaml", (REPO_ROOT / "qk_train" / "configs" / "tiny.yaml").read_bytes())),
                                                                           "--out", str(d / "p.yaml"), "--max-steps", "1", "--no-progress"]),
              train_case("qk-train --release into its source", lambda ws, d: ["--release", str(link_tree(ws.checkpoint, d / "ck")), "--out", str(d / "ck")])]

    def eval_case(name, prep, fast=False):
        def run(ws, d):
            argv = prep(ws, d)
            return lambda: call_module("qk_train.eval.evaluate", argv)
        return Case(name, "outputs", "qk-eval", run, fast=fast)
    cases += [eval_case("qk-eval --json inside the bundle", lambda ws, d: ["--model", str(ws.bundle_copy(d)), "--n", "1", "--gen-n", "0",
                                                                          "--json", str(d / "int8" / "manifest.json"), "--no-progress"], fast=True),
              eval_case("qk-eval --json inside the checkpoint", lambda ws, d: ["--model", str(link_tree(ws.checkpoint, d / "ck")), "--n", "1",
                                                                              "--gen-n", "0", "--json", str(d / "ck" / "pretrained.json"), "--no-progress"]),
              eval_case("qk-eval fp32 --json inside its sibling bundle", lambda ws, d: ["--model", str(ws.bundle_copy(d, "fp32")), "--n", "1", "--gen-n", "0",
                                                                                       "--json", str(d / "int8" / "r.json"), "--no-progress"])]
    return cases


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _hardlink(link: Path, target: Path) -> Path:
    os.link(target, link)
    return link


# --------------------------------------------------------------------------- 5. server


def server_cases() -> list[Case]:
    cases: list[Case] = []

    def post(fields: dict, image: bool = True, path: str = "/v1/edit"):
        def run(ws, d):
            files = {k: (None, v.encode() if isinstance(v, str) else v) for k, v in fields.items()}
            if image:
                files["image"] = ("in.png", ws.image.read_bytes(), "image/png")
            return lambda: classify_http(ws.client.post(path, files=files))
        return run

    base = {"instruction": "make the red square blue", "steps": STEPS}
    for name, fields in {"steps empty": {**base, "steps": ""}, "seed empty": {**base, "seed": ""},
                         "box empty": {**base, "box": ""}, "box blank": {**base, "box": "   "},
                         "steps blank": {**base, "steps": " "}, "steps nan": {**base, "steps": "nan"},
                         "seed 1e400": {**base, "seed": "1e400"}, "steps 1e308": {**base, "steps": "1e308"},
                         "box nan": {**base, "box": "nan,0,4,4"}, "instruction missing": {"steps": STEPS}}.items():
        cases.append(Case(f"server edit {name}", "server", "qk-serve", post(fields), fast=name in ("steps empty", "box empty")))
    for name, fields in {"steps empty": {"prompt": "a red circle", "steps": ""}, "seed empty": {"prompt": "a red circle", "seed": ""}}.items():
        cases.append(Case(f"server generate {name}", "server", "qk-serve", post(fields, image=False, path="/v1/generate")))

    def raw_request(body: bytes, headers: dict, send_all: bool = True, hold_s: float = 0.0):
        """Over a real socket: send headers and (part of) a body, then read the answer."""
        def run(ws, d):
            host, port = ws.server()

            def go():
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                with socket.create_connection((host, port), timeout=15) as s:
                    s.sendall(f"POST /v1/edit HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
                    t0 = time.monotonic()
                    data = b""
                    try:
                        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 10:
                            chunk = s.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                    except socket.timeout:
                        return Result("crash or hang", f"no answer within 15 s (after {len(body)} body bytes)")
                    waited = time.monotonic() - t0
                status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
                text = data.decode(errors="replace")
                if status == 200:
                    return Result("wrongly accepted", f"HTTP 200 after {waited:.1f} s")
                if status == 0:
                    return Result("crash or hang", f"connection closed without an answer after {waited:.1f} s")
                if status >= 500 and status not in (503, 504):
                    return Result("traceback", text[:300])
                if waited > 10:
                    return Result("crash or hang", f"HTTP {status} only after {waited:.1f} s")
                return Result("clear error", f"HTTP {status} after {waited:.1f} s: {text.split(chr(10))[-1][:200]}")
            return go
        return run

    boundary = "qkboundary"

    def multipart(image: bytes, instruction: str = "make it blue") -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\n{instruction}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n{STEPS}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()

    ctype = f"multipart/form-data; boundary={boundary}"
    cases += [
        Case("server announces 200 KB, sends 150 bytes", "server", "qk-serve (socket)",
             raw_request(b"x" * 150, {"Content-Type": ctype, "Content-Length": "200000"}), fast=True),
        Case("server announces 5000 bytes, sends the headers only", "server", "qk-serve (socket)",
             raw_request(b"", {"Content-Type": ctype, "Content-Length": "5000"})),
    ]

    def truncated_upload(frac):
        def run(ws, d):
            png = ws.image.read_bytes()
            return lambda: classify_http(ws.client.post("/v1/edit", files={"image": ("in.png", png[: int(len(png) * frac)], "image/png")},
                                                        data={"instruction": "make it blue", "steps": STEPS}))
        return run
    for frac in (0.2, 0.5, 0.8, 0.95):
        cases.append(Case(f"server truncated upload {int(frac * 100)}%", "server", "qk-serve", truncated_upload(frac), fast=frac == 0.5))

    def queue_untouched(ws, d):  # a truncated upload must not take a queue slot
        png = ws.image.read_bytes()
        png = png[: len(png) // 2]

        def go():
            worker = ws.client.app.state.worker
            before = worker.admitted, worker.completed
            r = classify_http(ws.client.post("/v1/edit", files={"image": ("in.png", png, "image/png")},
                                             data={"instruction": "make it blue", "steps": STEPS}))
            if (worker.admitted, worker.completed) != before:
                return Result("wrongly accepted", f"took a queue slot: {before} -> {(worker.admitted, worker.completed)}")
            return r
        return go
    cases.append(Case("server truncated upload never queues", "server", "qk-serve", queue_untouched, fast=True))

    def odd_body(content: bytes, ctype: str):
        def run(ws, d):
            return lambda: classify_http(ws.client.post("/v1/edit", content=content, headers={"Content-Type": ctype}))
        return run
    for name, (content, ct) in {"no boundary": (b"abc", "multipart/form-data"),
                                "garbage multipart": (b"--x\r\nnonsense", "multipart/form-data; boundary=x"),
                                "JSON body": (b'{"instruction": "x"}', "application/json"),
                                "empty body": (b"", ctype)}.items():
        cases.append(Case(f"server {name}", "server", "qk-serve", odd_body(content, ct)))

    def too_many_uploads(ws, d):
        host, port = ws.server()

        def go():
            socks = []
            try:
                for _ in range(3):  # the server allows 2 bodies in flight
                    s = socket.create_connection((host, port), timeout=10)
                    s.sendall(f"POST /v1/edit HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 10)
                    socks.append(s)
                    time.sleep(0.2)
                data = socks[-1].recv(4096)
            finally:
                for s in socks:
                    s.close()
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
            if status == 503:
                return Result("clear error", "HTTP 503 for the third upload in flight")
            return Result("wrongly accepted", f"third upload in flight answered {status or 'nothing'}")
        return go
    cases.append(Case("server more uploads in flight than --max-uploads", "server", "qk-serve (socket)", too_many_uploads))
    return cases


# --------------------------------------------------------------------------- all


def all_cases(include_train: bool = True) -> list[Case]:
    """Every case; without the C++ tool built its cases are left out, without the train extra
    (torch) the qk-train / qk-eval / qk-export ones (`include_train=False`)."""
    cases = (path_cases() + manifest_shape_cases() + damaged_file_cases() + manifest_number_cases() + image_cases()
             + text_cases() + cli_number_cases() + output_cases() + server_cases())
    if include_train:
        cases += train_cases() + checkpoint_cases()
    else:
        cases = [c for c in cases if c.consumer not in ("qk-export", "qk-export --check", "qk-export --verify",
                                                        "qk-eval", "qk-train")]
    if not CPP_TOOL.exists():
        cases = [c for c in cases if c.consumer != "qk_edit_cpp"]
    return cases


def fast_cases(include_train: bool = True) -> list[Case]:
    return [c for c in all_cases(include_train) if c.fast]
