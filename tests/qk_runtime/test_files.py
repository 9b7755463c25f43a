"""runtime/files.py: JSON under limits, paths a manifest names kept inside their folder, outputs
that would replace an input refused."""
import os

import pytest

from qk_runtime.errors import BundleError, InputError
from qk_runtime.files import MAX_JSON_DEPTH, check_output, contained, json_depth, parse_json, read_json


def test_json_depth_without_recursion():
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [{"b": []}]}) == 4
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep) == 100_001


@pytest.mark.parametrize("data, words", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), f"over the limit of {MAX_JSON_DEPTH}"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b" " * 10, "not valid JSON"),
], ids=["200000 levels", "65 levels", "not UTF-8", "not JSON", "blank"])
def test_parse_json_refusals_name_the_file(data, words):
    with pytest.raises(BundleError, match=words) as err:
        parse_json(data, "x/manifest.json", BundleError, "re-export it")
    assert str(err.value).startswith("x/manifest.json") and str(err.value).endswith("re-export it")


def test_read_json_stops_at_the_size_limit(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + " " * 2000 + "]")
    with pytest.raises(BundleError, match="over the limit of 1000"):
        read_json(path, BundleError, max_bytes=1000)
    assert read_json(path, BundleError) == []


def test_contained_refuses_paths_out_of_the_folder(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "ok.onnx").write_text("x")
    (tmp_path / "secret").write_text("s")
    (folder / "link.onnx").symlink_to(tmp_path / "secret")
    assert contained(folder, "ok.onnx", "w", BundleError) == (folder / "ok.onnx").resolve()
    for rel in ("../secret", str(tmp_path / "secret"), "link.onnx", "a/../../secret", "a//b", "./ok.onnx", "", "..",
                "a\\b", None, 3):
        with pytest.raises(BundleError):
            contained(folder, rel, "w", BundleError)
    # with a root around the folder, '..' may climb up to it, not past it
    inner = folder / "m" / "1"
    inner.mkdir(parents=True)
    assert contained(inner, "../../ok.onnx", "w", BundleError, root=folder) == (folder / "ok.onnx").resolve()
    with pytest.raises(BundleError):
        contained(inner, "../../../secret", "w", BundleError, root=folder)


def test_check_output_refuses_inputs_and_read_folders(tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(b"x")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.link(image, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(image)
    for out in (image, tmp_path / "hard.png", tmp_path / "soft.png", tmp_path / "sub" / ".." / "in.png"):
        with pytest.raises(InputError, match="same file as --image"):
            check_output("--out", out, inputs=[("--image", image)])
    for out in (bundle / "manifest.json", bundle / "new" / "x.png", bundle):
        with pytest.raises(InputError, match="lies inside the bundle"):
            check_output("--json", out, folders=[("the bundle", bundle)])
    with pytest.raises(InputError, match="contains the bundle"):
        check_output("--out", tmp_path, folders=[("the bundle", bundle)], folder_output=True)
    check_output("--out", tmp_path / "other.png", inputs=[("--image", image)], folders=[("the bundle", bundle)])
