"""Every bad input gets its error; every odd-but-valid image is converted (issue 4, item 8)."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qk_runtime.errors import InputError
from qk_runtime.inputs import MAX_PIXELS, check_box, check_text, check_threads, load_image, scale_box


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG file written by hand, so headers can claim anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- refused files


def test_truncated_png_is_refused(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(path)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="not an image file"):
        load_image(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("side", [9000, 100_000])  # over our limit; over PIL's own bomb limit
def test_decompression_bomb_header_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(side, side, 8, 2, b"\x00" * 16))  # a tiny file claiming side x side RGB
    assert path.stat().st_size < 200
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(path)


def test_huge_array_is_refused():
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(MAX_PIXELS // 1000 + 1, 1000, 3), strides=(0, 0, 0))
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(big)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8, 3), np.float32), "dtype float32"),
    (np.zeros((8, 8, 2), np.uint8), "shape"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    ("not/a/real/path.png", "does not exist"),
    (12, "must be a file path"),
])
def test_bad_arrays_and_objects_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        load_image(bad)


# --------------------------------------------------------------------------- converted images


def test_grey_is_converted(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 77, np.uint8), "L").save(path)
    out = load_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and (out == 77).all()


def test_rgba_is_composited_over_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., :3] = (200, 10, 10)
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = load_image(path)
    assert out.shape == (4, 4, 3)
    assert (out[:2] == (200, 10, 10)).all() and (out[2:] == 255).all()
    assert np.array_equal(load_image(arr), out)  # arrays follow the same rule


def test_palette_is_converted(tmp_path):
    img = Image.new("P", (6, 3))
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    img.putdata([0, 1] * 9)
    path = tmp_path / "p.png"
    img.save(path)
    out = load_image(path)
    assert out.shape == (3, 6, 3)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (40, 50, 60)


def test_16bit_grey_is_scaled(tmp_path):
    path = tmp_path / "g16.png"
    path.write_bytes(_png(2, 1, 16, 0, b"\x00" + struct.pack(">HH", 65535, 257 * 100)))
    out = load_image(path)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255] * 3 and out[0, 1].tolist() == [100] * 3


def test_16bit_rgb_is_scaled(tmp_path):
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png(1, 1, 16, 2, b"\x00" + struct.pack(">HHH", 0xABCD, 0x0000, 0xFFFF)))
    assert load_image(path)[0, 0].tolist() == [0xAB, 0, 255]
    arr16 = np.array([[[0xABCD, 0, 0xFFFF]]], np.uint16)
    assert load_image(arr16)[0, 0].tolist() == [171, 0, 255]


# --------------------------------------------------------------------------- boxes and text


@pytest.mark.parametrize("box, what", [
    ((0, 0, 41, 10), "outside"),
    ((-1, 0, 10, 10), "outside"),
    ((10, 5, 5, 20), "inverted or empty"),
    ((5, 5, 5, 20), "inverted or empty"),
    ((0, 0, 10), "has 3 values"),
    ((0, 0, 10.5, 10), "not an integer"),
    ("a,b,c,d", "not an integer"),
    (5, "must be four integers"),
])
def test_bad_boxes_are_refused_with_the_rule(box, what):
    with pytest.raises(InputError, match=what) as err:
        check_box(box, 40, 30)
    if "values" not in what and "four" not in what:
        assert "0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 30" in str(err.value)


def test_good_boxes_and_scaling():
    assert check_box("1, 2, 40, 30", 40, 30) == (1, 2, 40, 30)
    assert check_box((np.int64(0), 0, 1, 1), 40, 30) == (0, 0, 1, 1)
    assert scale_box((0, 0, 40, 30), 40, 30, 32) == (0, 0, 32, 32)
    assert scale_box((10, 10, 11, 11), 100, 100, 32) == (3, 3, 4, 4)  # outwards, at least one pixel
    assert scale_box((5, 6, 7, 8), 32, 32, 32) == (5, 6, 7, 8)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_instruction_is_refused(text):
    with pytest.raises(InputError, match="instruction is empty"):
        check_text(text)
    with pytest.raises(InputError, match="must be a string"):
        check_text(None)


def test_empty_prompt_hint_is_a_prompt():
    # a generation's empty prompt is answered with an example prompt, not an edit instruction
    with pytest.raises(InputError, match=r"prompt is empty; say what to draw, e.g. 'a red circle") as err:
        check_text(" ", "prompt")
    assert "make the" not in str(err.value)


def test_threads_are_unset_or_one_to_the_cpu_count():
    import os

    cpus = os.cpu_count() or 1
    assert check_threads(None) is None and check_threads(1) == 1 and check_threads(cpus) == cpus
    for bad in (0, -1, cpus + 1, 100_000, 1.5, "2", True):
        with pytest.raises(InputError, match=f"must be an integer from 1 to {cpus}"):
            check_threads(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_non_finite_box_values_are_refused_with_the_rule(value):
    with pytest.raises(InputError, match="is not an integer; need integers 0 <= x0"):
        check_box((0, 0, value, 8), 32, 32)


def test_exif_orientation_is_applied_to_files_and_opened_images(tmp_path):
    # a 4x2 picture stored with EXIF orientation 6 (rotate 90 degrees clockwise to view): seen as 2x4
    img = Image.new("RGB", (4, 2), (200, 0, 0))
    img.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=100)
    from_file = load_image(path)
    with Image.open(path) as opened:
        from_pil = load_image(opened)
    assert from_file.shape == from_pil.shape == (4, 2, 3)
    np.testing.assert_array_equal(from_file, from_pil)


# --------------------------------------------------------------------------- one decode path


def _corrupt_idat_png(tmp_path) -> bytes:
    """A PNG whose IDAT is garbage behind a valid CRC: Pillow's first load() fails, a second passes."""
    path = tmp_path / "g.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    good = path.read_bytes()
    i = good.index(b"IDAT")
    n = struct.unpack(">I", good[i - 4:i])[0]
    body = b"\x78\x9c" + bytes(range(256))[: n - 2]
    return good[:i - 4] + struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body)) + good[i + 8 + n:]


def test_pil_images_in_any_state_get_the_same_input_error(tmp_path):
    """Before: a closed PIL image raised PIL's ValueError, a lazily opened truncated one PIL's OSError."""
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    closed = Image.open(path)
    closed.load()
    closed.close()
    with pytest.raises(InputError, match="the PIL image is closed"):
        load_image(closed)
    made = Image.new("RGB", (8, 8))
    made.close()
    with pytest.raises(InputError, match="the PIL image is closed"):
        load_image(made)
    data = path.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(Image.open(tmp_path / "half.png"))
    (tmp_path / "no_end.png").write_bytes(data[:-12])  # every pixel there, no IEND: refused as the file path is
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(tmp_path / "no_end.png")
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(Image.open(tmp_path / "no_end.png"))
    assert load_image(Image.open(path)).shape == (64, 64, 3)  # a lazily opened, complete image decodes


def test_corrupt_image_data_and_broken_exif_are_refused(tmp_path):
    (tmp_path / "c.png").write_bytes(_corrupt_idat_png(tmp_path))
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(tmp_path / "c.png")
    good = (tmp_path / "g.png").read_bytes()
    i = good.index(b"IDAT") - 4
    exif = b"\0\0\0garbage" * 3
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    (tmp_path / "e.png").write_bytes(good[:i] + chunk + good[i:])
    with pytest.raises(InputError, match="broken EXIF block"):
        load_image(tmp_path / "e.png")


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d\ufeff\u2060", "\0", "\0\0", "ok\0", "\x01\x02",
                                  "\u2028", "\udcff"])
def test_instructions_without_visible_text_or_with_nul_are_refused(text):
    """Before: zero-width and NUL-only instructions were encoded and run as text."""
    with pytest.raises(InputError, match="no visible character|NUL|not valid UTF-8|is empty"):
        check_text(text)
