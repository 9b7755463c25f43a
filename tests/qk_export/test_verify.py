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
