"""qk-edit / qk-generate in-process: outputs, timings JSON, one-line errors with exit status 2."""
import json

import numpy as np
import pytest
from PIL import Image

from qk_runtime.bundle import open_bundle
from qk_runtime.cli import edit_main, generate_main
from qk_runtime.errors import BundleError
from qk_runtime.session import default_bundle_dir


@pytest.fixture()
def image_file(tmp_path, source_image):
    path = tmp_path / "in.png"
    Image.fromarray(np.kron(source_image, np.ones((2, 1, 1), np.uint8))).save(path)  # 64 x 32
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 1, err
    return lines[0]


def test_qk_edit_writes_the_image_and_timings(fp32_bundle, image_file, tmp_path, capsys):
    out, js = tmp_path / "o" / "out.png", tmp_path / "t.json"
    rc = edit_main(["--bundle", str(fp32_bundle), "--image", str(image_file), "--instruction", "make the red square blue",
                    "--box", "4,12,20,36", "--out", str(out), "--steps", "4", "--backend", "ort", "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (64, 32, 3)
    data = json.loads(js.read_text())
    assert data["backend"] == "ort-cpu" and data["steps"] == 4
    t = data["timings_ms"]
    for stage in ("text_encoder", "gateway", "cmg", "decoder", "image_encoder", "image_decoder", "total"):
        assert t[stage] >= 0
    assert len(t["decoder_steps"]) == 4
    assert "backend ort-cpu" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_qk_generate_writes_the_image(fp32_bundle, tmp_path):
    out = tmp_path / "g.png"
    assert generate_main(["--bundle", str(fp32_bundle), "--prompt", "a red circle", "--out", str(out),
                          "--steps", "3", "--backend", "ort-cpu"]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)


@pytest.mark.parametrize("extra, message", [
    (["--box", "0,0,40,10"], "outside the image"),
    (["--box", "9,9,3,3"], "inverted or empty"),
    (["--instruction", ""], "instruction is empty"),
    (["--image", "missing.png"], "does not exist"),
    (["--out", "out.tiff2"], "cannot tell the image format"),
    (["--bundle", "no/such/bundle"], "does not exist"),
    (["--threads", "100000"], "threads=100000; must be an integer from 1 to"),  # was: 100000 threads, 16 GB
    (["--out", "o.xbm"], "Pillow cannot write an RGB image as XBM"),  # was: the edit ran, then a raw Pillow error
    (["--threads", "0"], "threads=0; must be an integer from 1 to"),
])
def test_qk_edit_errors_are_one_line_with_status_2(fp32_bundle, image_file, tmp_path, capsys, extra, message):
    args = {"--bundle": str(fp32_bundle), "--image": str(image_file), "--instruction": "make it blue",
            "--out": str(tmp_path / "o.png")}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = [x for kv in args.items() for x in kv] + ["--backend", "ort-cpu", "--steps", "2"]
    assert edit_main(argv) == 2
    line = _one_line_error(capsys)
    assert line.startswith("qk-edit: error:") and message in line
    assert not (tmp_path / "o.png").exists()


def test_default_bundle(capsys, image_file, tmp_path):
    """The shipped default bundle verifies; where it is not built yet, the error says how to make it."""
    try:
        path = default_bundle_dir()
    except BundleError as exc:
        assert "qk-export --int8 --out engines/default/int8" in str(exc)
        assert edit_main(["--image", str(image_file), "--instruction", "x", "--out", str(tmp_path / "o.png")]) == 2
        assert "qk-export --int8" in _one_line_error(capsys)
        return
    bundle = open_bundle(path)  # every file's sha256 equals the manifest's
    assert bundle.precision == "int8"


def test_spin_reaches_onnx_runtime_and_gives_the_same_image(fp32_bundle, image_file, tmp_path, monkeypatch):
    """`--spin` only changes how ONNX Runtime's idle threads wait: the session is built with
    allow_spinning=1 and the edit is the same image as without it."""
    from qk_runtime import backend_ort

    seen = []
    real = backend_ort.OrtBackend.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        seen.append(self.spinning)

    monkeypatch.setattr(backend_ort.OrtBackend, "__init__", spy)
    outs = []
    for extra in ([], ["--spin"]):
        out = tmp_path / f"o{len(outs)}.png"
        assert edit_main(["--bundle", str(fp32_bundle), "--image", str(image_file), "--instruction", "make the red square blue",
                          "--out", str(out), "--steps", "3", "--backend", "ort-cpu", *extra]) == 0
        outs.append(np.asarray(Image.open(out)))
    assert seen == [False, True]
    assert np.array_equal(outs[0], outs[1])


def test_only_the_denoising_loop_spins(fp32_bundle):
    """Every ONNX Runtime session has its own thread pool: spinning is set on the graphs the loop
    calls back to back, the once-per-edit graphs keep sleeping (all spinning made edits slower)."""
    from qk_runtime import EditSession
    from qk_runtime.backend_ort import SPIN_GRAPHS

    key = "session.intra_op.allow_spinning"
    with EditSession(fp32_bundle, backend="ort-cpu", spinning=True) as s:
        for graph in s.bundle.graphs:
            s.backend._session(graph)  # sessions are made lazily: make each one
        spins = {g: sess.get_session_options().get_session_config_entry(key) for g, sess in s.backend.sessions.items()}
    assert {g for g, v in spins.items() if v == "1"} == set(SPIN_GRAPHS) & set(spins) and "decoder" in spins
    with EditSession(fp32_bundle, backend="ort-cpu") as s:
        assert all(sess.get_session_options().get_session_config_entry(key) == "0" for sess in s.backend.sessions.values())


def test_spin_on_openvino_warns_and_runs(fp32_bundle, image_file, tmp_path, capsys):
    pytest.importorskip("openvino")
    out = tmp_path / "o.png"
    assert edit_main(["--bundle", str(fp32_bundle), "--image", str(image_file), "--instruction", "make the red square blue",
                      "--out", str(out), "--steps", "2", "--backend", "ov-cpu", "--spin"]) == 0
    err = capsys.readouterr().err
    assert "spinning applies to ONNX Runtime backends" in err and "--backend ort-cpu" in err
    assert out.is_file()


def test_qk_edit_checks_its_output_paths_before_the_work(fp32_bundle, image_file, tmp_path, capsys):
    """--json on the --out image, a folder as --out or --json, and a file where a folder should be are
    refused up front with one line; nothing is written (before: the edit ran, then a raw errno)."""
    out = tmp_path / "o.png"
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "afile").write_text("mine")
    base = ["--bundle", str(fp32_bundle), "--image", str(image_file), "--instruction", "make it blue",
            "--backend", "ort-cpu", "--steps", "2"]
    for extra, message in [
        (["--out", str(out), "--json", str(out)], "is the --out image"),
        (["--out", str(tmp_path / "folder.png")], "is a folder; give a file name"),
        (["--out", str(out), "--json", str(tmp_path / "folder.png")], "is a folder; give a file name"),
        (["--out", str(tmp_path / "afile" / "o.png")], "is a file, not a folder"),
    ]:
        assert edit_main(base + extra) == 2
        line = _one_line_error(capsys)
        assert line.startswith("qk-edit: error:") and message in line, line
    assert not out.exists() and (tmp_path / "afile").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name not in ("afile", "folder.png", image_file.name)]


def test_outputs_never_replace_an_input(bundle_copy, image_file, tmp_path, capsys):
    """Before: --json equal to --image replaced the image with timings, --json <bundle>/manifest.json
    replaced the bundle's manifest, --out equal to --image replaced the input; all exit 0."""
    import shutil

    bundle = bundle_copy
    keep = {p: p.read_bytes() for p in [image_file, *bundle.iterdir()]}
    (tmp_path / "link.png").symlink_to(image_file)
    base = ["--bundle", str(bundle), "--image", str(image_file), "--instruction", "make it blue",
            "--backend", "ort-cpu", "--steps", "2"]
    for extra, message in [
        (["--out", str(image_file)], "is the --image file: the edit would replace your image"),
        (["--out", str(tmp_path / "link.png")], "is the --image file"),
        (["--out", str(tmp_path / "o.png"), "--json", str(image_file)], "is the same file as --image"),
        (["--out", str(tmp_path / "o.png"), "--json", str(bundle / "manifest.json")], "lies inside the bundle"),
        (["--out", str(bundle / "x.png")], "lies inside the bundle"),
        (["--out", str(tmp_path / "o.png"), "--json", str(image_file), "--overwrite-input"], "is the same file as --image"),
    ]:
        assert edit_main(base + extra) == 2, extra
        line = _one_line_error(capsys)
        assert message in line, line
    assert {p: p.read_bytes() for p in keep} == keep and not (tmp_path / "o.png").exists()
    assert generate_main(["--bundle", str(bundle), "--prompt", "a red circle", "--out", str(bundle / "g.png")]) == 2
    assert "lies inside the bundle" in _one_line_error(capsys)
    # replacing the image is a choice the flag makes explicit
    mine = tmp_path / "mine.png"
    shutil.copy(image_file, mine)
    assert edit_main(base[:3] + [str(mine)] + base[4:] + ["--out", str(mine), "--overwrite-input"]) == 0
    assert mine.read_bytes() != image_file.read_bytes()


@pytest.mark.parametrize("flag, value", [("--text-guidance", "1e308"), ("--text-guidance", "nan"),
                                         ("--image-guidance", "-1"), ("--image-guidance", "inf")])
def test_guidance_from_the_command_line_must_be_finite_and_in_range(fp32_bundle, image_file, tmp_path, capsys, flag, value):
    """Before: 1e308 ran to NaN pixels with exit 0."""
    assert edit_main(["--bundle", str(fp32_bundle), "--image", str(image_file), "--instruction", "make it blue",
                      "--out", str(tmp_path / "o.png"), "--steps", "2", flag, value]) == 2
    assert "must be a finite number from 0 to 100" in _one_line_error(capsys)
    assert not (tmp_path / "o.png").exists()
