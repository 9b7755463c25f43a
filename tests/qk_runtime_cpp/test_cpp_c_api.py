"""Bad input through the C API (qk.h), driven by the C program runtime/cpp/tests/c_api_test.c:
each case returns its status code and a message, and nothing crashes. Plus the example program."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

EXPECTED_CASES = 47


def _inputs(tmp_path: Path, bundle: Path, scene_png: Path):
    (tmp_path / "not_a.png").write_text("this is not a PNG")
    data = scene_png.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    tampered = Path(shutil.copytree(bundle, tmp_path / "tampered"))
    with open(tampered / "tokenizer.json", "a") as f:
        f.write(" ")
    out = tmp_path / "out"
    out.mkdir()
    return [str(bundle), str(scene_png), str(tmp_path / "not_a.png"), str(tmp_path / "truncated.png"), str(tampered), str(out)]


def test_bad_input_through_the_c_api(cpp_build, fp32_bundle, scene_png, tmp_path):
    args = _inputs(tmp_path, fp32_bundle, scene_png)
    run = subprocess.run([str(cpp_build / "qk_c_api_test"), *args], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok ", "FAIL "))]
    failed = [line for line in lines if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, f"status {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert len(lines) == EXPECTED_CASES, run.stdout
    cases = {line.split(" ", 3)[1]: line.split(" ", 3)[3] if len(line.split(" ", 3)) > 3 else "" for line in lines}
    # the messages say what was wrong and how to fix it
    assert "does not exist" in cases["open_missing_bundle"]
    assert "tokenizer.json has sha256" in cases["open_tampered_bundle"]
    assert "TensorRT" in cases["open_tensorrt"]
    assert "bundle_dir is NULL" in cases["open_null_dir"]
    assert "inverted or empty" in cases["edit_box_inverted"]
    assert "outside the image" in cases["edit_box_outside"]
    assert "instruction is empty" in cases["edit_empty_instruction"]
    assert "not valid UTF-8" in cases["edit_bad_utf8"]
    assert "is not a PNG file" in cases["edit_png_not_png"]
    assert "truncated or corrupt" in cases["edit_png_truncated"]
    assert "steps=5000" in cases["edit_steps_too_many"]
    assert (tmp_path / "out" / "c_api_out.png").is_file()


def test_example_program(cpp_build, fp32_bundle, scene_png, tmp_path):
    from qk_runtime import EditSession

    exe = str(cpp_build / "qk_edit_cpp")
    out = tmp_path / "edited.png"
    cmd = [exe, "--bundle", str(fp32_bundle), "--image", str(scene_png), "--instruction", "make the red square blue",
           "--box", "6,8,18,20", "--out", str(out), "--seed", "3", "--threads", "1", "--json", str(tmp_path / "t.json")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "qk_edit_cpp:" in run.stdout and (tmp_path / "t.json").is_file()
    with EditSession(fp32_bundle, backend="ort-cpu", threads=1) as s:
        want = s.edit(str(scene_png), "make the red square blue", box=(6, 8, 18, 20), seed=3).image
    assert np.abs(np.asarray(Image.open(out)).astype(int) - want.astype(int)).max() <= 1

    for bad, words in [(["--box", "6,8,5,20"], "inverted or empty"), (["--box", "1,2,3"], "four integers"),
                       (["--box", "a,2,3,4"], "not an integer"), (["--seed", "-1"], "--seed"),
                       (["--steps", "0"], "--steps"), (["--sparse", "window"], "--sparse"),
                       (["--threads", "100000"], "threads=100000; must be an integer from 1 to"),  # Python's rule
                       (["--bogus"], "unknown option --bogus"),  # was: "--bogus needs a value"
                       (["--sparse=region"], "write --sparse VALUE with a space, not '='")]:
        args = cmd[:]
        for k in range(0, len(bad), 2):
            i = args.index(bad[k]) if bad[k] in args else None
            if i is None:
                args += bad[k:k + 2]
            else:
                args[i + 1] = bad[k + 1]
        run = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and words in run.stderr and run.stderr.startswith("error: "), (bad, run.stderr)
    run = subprocess.run([exe, "--bundle", str(tmp_path / "none"), "--image", str(scene_png), "--instruction", "x",
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "does not exist" in run.stderr
