"""Edit-manifest and COCO-caption readers on small fixtures written by the tests."""
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qk_train.data.manifest import DataError, read_coco_captions, read_edit_manifest

W, H = 8, 6


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def edit_dir(tmp_path):
    _png(tmp_path / "img" / "a_src.png", _rgb(0))
    _png(tmp_path / "img" / "a_tgt.png", _rgb(1))
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    _png(tmp_path / "img" / "grey.png", grey)  # mode L
    Image.fromarray(_rgb(2)).convert("RGBA").save(tmp_path / "img" / "rgba.png")
    Image.fromarray(_rgb(3)).convert("P").save(tmp_path / "img" / "pal.png")
    mask = np.zeros((H, W), np.uint8)
    mask[1:3, 2:5] = 255
    _png(tmp_path / "img" / "mask.png", mask)
    _png(tmp_path / "img" / "small.png", np.zeros((4, 4, 3), np.uint8))
    return tmp_path


def _write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"source": "img/a_src.png", "instruction": "make it red", "target": "img/a_tgt.png"}


def test_reads_records_with_optional_mask_and_box(edit_dir):
    manifest = _write_lines(edit_dir / "edits.jsonl", [
        dict(GOOD, mask="img/mask.png", box=[2, 1, 5, 3]),
        "",
        {"source": "img/grey.png", "instruction": "x", "target": "img/rgba.png", "mask": None},
        {"source": str(edit_dir / "img" / "pal.png"), "instruction": "y", "target": "img/a_src.png"},
    ])
    recs = read_edit_manifest(manifest)
    assert len(recs) == 3
    a, b, c = recs
    assert a.source.dtype == np.uint8 and a.source.shape == (H, W, 3)
    assert np.array_equal(a.source, _rgb(0)) and np.array_equal(a.target, _rgb(1))
    assert a.instruction == "make it red" and a.box == (2, 1, 5, 3)
    assert a.mask.dtype == bool and a.mask.sum() == 6 and a.mask[1:3, 2:5].all()
    assert a.where == f"{manifest}:1"
    assert b.where == f"{manifest}:3" and b.mask is None and b.box is None
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    assert np.array_equal(b.source, np.repeat(grey[..., None], 3, -1))  # grey -> RGB
    assert np.array_equal(b.target, _rgb(2))  # RGBA -> RGB
    assert c.source.shape == (H, W, 3) and c.where == f"{manifest}:4"  # absolute path, palette image


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("{not json", "not valid JSON"),
        ('["a", "list"]', "JSON object"),
        ({"source": "img/a_src.png", "target": "img/a_tgt.png"}, "'instruction'"),
        (dict(GOOD, instruction=3), "'instruction'"),
        (dict(GOOD, target="img/nope.png"), "nope.png"),
        (dict(GOOD, box=[5, 1, 2, 3]), "box"),
        (dict(GOOD, box=[0, 0, W + 1, 2]), "box"),
        (dict(GOOD, box=[0, 0, 2]), "box"),
        (dict(GOOD, mask="img/small.png"), "mask is 4x4"),
        (dict(GOOD, target="img/small.png"), "target is 4x4"),
        (dict(GOOD, mask=7), "mask"),
    ],
)
def test_broken_line_two_is_reported_with_file_and_line(edit_dir, bad, needle):
    manifest = _write_lines(edit_dir / "m.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as info:
        read_edit_manifest(manifest)
    message = str(info.value)
    assert f"{manifest}:2" in message and needle in message


def test_unreadable_image_is_a_data_error(edit_dir):
    (edit_dir / "img" / "broken.png").write_bytes(b"this is not a png")
    manifest = _write_lines(edit_dir / "m.jsonl", [dict(GOOD, source="img/broken.png")])
    with pytest.raises(DataError, match=r"m\.jsonl:1: source image .*broken\.png.* cannot be read"):
        read_edit_manifest(manifest)


def _png_claiming_size(path, width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_oversized_images_are_refused_before_decoding(edit_dir):
    _png_claiming_size(edit_dir / "img" / "bomb.png", 100_000, 100_000)  # beyond Pillow's own limit
    manifest = _write_lines(edit_dir / "m.jsonl", [GOOD, dict(GOOD, target="img/bomb.png")])
    with pytest.raises(DataError, match=r"m\.jsonl:2: target image .*bomb\.png"):
        read_edit_manifest(manifest)
    # our own limit, checked from the header
    manifest = _write_lines(edit_dir / "m2.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"m2\.jsonl:1: .*over the limit of 40"):
        read_edit_manifest(manifest, max_pixels=40)
    assert len(read_edit_manifest(manifest, max_pixels=48)) == 1


def test_missing_manifest_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_edit_manifest(tmp_path / "absent.jsonl")


def test_an_empty_manifest_or_caption_file_is_a_data_error(tmp_path):
    # before: training started and failed with ZeroDivisionError on the first batch
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no edit pairs"):
        read_edit_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "caps.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no captions"):
        read_coco_captions(tmp_path / "caps.json")


# --------------------------------------------------------------------------- COCO


def _coco(tmp_path, images, annotations, name="captions.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations}, indent=2))
    return path


def test_reads_coco_captions_with_line_numbers(tmp_path):
    _png(tmp_path / "000001.png", _rgb(0))
    _png(tmp_path / "000002.png", np.full((H, W), 9, np.uint8))
    path = _coco(tmp_path, [
        {"id": 1, "file_name": "000001.png"},
        {"id": 2, "file_name": "000002.png"},
    ], [
        {"image_id": 2, "caption": "a grey square"},
        {"image_id": 1, "caption": "noise"},
        {"image_id": 1, "caption": "static"},
    ])
    recs = read_coco_captions(path)
    assert [r.caption for r in recs] == ["a grey square", "noise", "static"]
    assert np.array_equal(recs[1].image, _rgb(0)) and recs[0].image.shape == (H, W, 3)
    assert (recs[0].image == 9).all()
    lines = path.read_text().splitlines()
    for r in recs:
        file, line = r.where.rsplit(":", 1)
        assert file == str(path)
        # the annotation's object opens on that line and its caption follows
        assert lines[int(line) - 1].strip() == "{"
        assert f'"caption": "{r.caption}"' in "\n".join(lines[int(line):int(line) + 3])


def test_coco_image_dir_and_errors(tmp_path):
    _png(tmp_path / "pics" / "a.png", _rgb(0))
    images = [{"id": 1, "file_name": "a.png"}]
    path = _coco(tmp_path, images, [{"image_id": 1, "caption": "c"}])
    assert len(read_coco_captions(path, image_dir=tmp_path / "pics")) == 1
    text_lines = [t.strip() for t in path.read_text().splitlines()]
    image_line = text_lines.index('"file_name": "a.png"') - 1  # 1-based line of the entry's "{"
    assert text_lines[image_line - 1] == "{"
    with pytest.raises(DataError, match=rf"captions\.json:{image_line}: listed image .*a\.png.* does not exist"):
        read_coco_captions(path)  # defaults to the JSON's folder, where a.png is not
    bad = _coco(tmp_path, images, [{"image_id": 1, "caption": "c"}, {"image_id": 5, "caption": "d"}], "b.json")
    with pytest.raises(DataError, match=r"b\.json:\d+: image_id 5"):
        read_coco_captions(bad, image_dir=tmp_path / "pics")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "images": [],\n  "annotations": [\n}\n')
    with pytest.raises(DataError, match=r"broken\.json:4: not valid JSON"):
        read_coco_captions(broken)
    nokey = tmp_path / "nokey.json"
    nokey.write_text('{"images": []}')
    with pytest.raises(DataError, match="'annotations'"):
        read_coco_captions(nokey)
