import shutil

import pytest

from qk_export.cli import main
from qk_export.verify import BundleError, verify_bundle


@pytest.fixture
def copy(bundles, tmp_path):
    return shutil.copytree(bundles["fp32"], tmp_path / "b")


def test_intact_bundle_verifies(copy, capsys):
    assert verify_bundle(copy).precision == "fp32"
    assert main(["--verify", str(copy)]) == 0


def test_a_flipped_byte_is_caught_and_named(copy, capsys):
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder\.onnx has sha256"):
        verify_bundle(copy)
    assert main(["--verify", str(copy)]) == 1
    assert "decoder.onnx" in capsys.readouterr().err


def test_a_missing_or_unlisted_file_is_named(copy):
    (copy / "cmg.onnx").rename(copy / "extra.onnx")
    with pytest.raises(BundleError, match=r"missing cmg\.onnx"):
        verify_bundle(copy)
    (copy / "extra.onnx").rename(copy / "cmg.onnx")
    (copy / "stray.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"stray\.bin"):
        verify_bundle(copy)


def test_check_and_verify_together_report_both(copy, bundles, tmp_path, capsys):
    # before: --check ran alone and exited 0 while the --verify bundle was damaged
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "decoder.onnx").write_bytes(bytes(data))
    assert main(["--check", str(bundles["fp32"]), "--verify", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "TensorRT readiness" in captured.out and "decoder.onnx has sha256" in captured.err


def test_check_or_verify_of_a_missing_folder_is_a_bad_argument(tmp_path, capsys):
    for flag in ("--check", "--verify"):
        assert main([flag, str(tmp_path / "nope")]) == 2
        assert f"{flag} {tmp_path / 'nope'}: no such bundle folder" in capsys.readouterr().err
    assert main(["--check", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "run the export (--out) as a command of its own" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def _outside(copy, tmp_path):
    import hashlib
    import json
    import os

    secret = tmp_path / "outside.txt"
    secret.write_text("not the bundle's\n")
    m = json.loads((copy / "manifest.json").read_text())
    rel = os.path.relpath(secret, copy)
    m["graphs"]["cmg"]["file"] = rel
    m["files"][rel] = hashlib.sha256(secret.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(m))
    return secret, rel


@pytest.mark.parametrize("mode", ["--verify", "--check"])
def test_check_and_verify_never_read_outside_the_bundle(copy, tmp_path, capsys, mode):
    """Before: --check loaded `bundle / graph["file"]` wherever it pointed, --verify hashed it."""
    from qk_bench.bad_inputs import OpenWatch

    secret, rel = _outside(copy, tmp_path)
    with OpenWatch(secret) as watch:
        assert main([mode, str(copy)]) in (1, 2)
        assert not watch.opened()
    err = capsys.readouterr().err
    assert rel in err and "leaves the bundle folder" in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["--verify", "--check"])
def test_check_and_verify_refuse_a_deeply_nested_manifest(copy, capsys, mode):
    (copy / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)  # before: RecursionError
    assert main([mode, str(copy)]) in (1, 2)
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


def test_check_names_a_truncated_graph(copy, capsys):
    import hashlib
    import json

    data = (copy / "gateway.onnx").read_bytes()[:3000]
    (copy / "gateway.onnx").write_bytes(data)
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["gateway.onnx"] = hashlib.sha256(data).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["--check", str(copy)]) == 2  # before: protobuf's DecodeError as a traceback
    err = capsys.readouterr().err
    assert "gateway.onnx" in err and "not a readable ONNX model" in err and "Traceback" not in err
