"""Readers for user data: edit manifests (JSONL, MagicBrush-style) and COCO caption files.

numpy + pillow only. Every problem raises `DataError` naming ``file:line``, what is wrong and
how to fix it; no raw exception escapes without that context.

Edit manifest: one JSON object per line (blank lines are skipped)::

    {"source": "imgs/0001_src.png", "instruction": "make the cup red",
     "target": "imgs/0001_tgt.png", "mask": "imgs/0001_mask.png", "box": [12, 30, 80, 96]}

"mask" (optional, may be null): an image of the source's size; a pixel counts as changed when
any of its colour channels is nonzero (alpha is ignored). "box" (optional, may be null):
``[x0, y0, x1, y1]`` in pixels, x1/y1 exclusive, ``0 <= x0 < x1 <= width`` and likewise for y.
Relative image paths resolve against the manifest's folder.

COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``,
one `CaptionRecord` per annotation; relative file names resolve against `image_dir` (default:
the JSON's folder).

Images load as RGB uint8 (grey, RGBA, palette and other modes are converted). Images with more
than `max_pixels` pixels are refused before decoding (decompression-bomb guard); Pillow's own
limit, when it triggers, is reported the same way.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # refuse larger images unless max_pixels says otherwise


class DataError(ValueError):
    """A data file that cannot be read; the message names file:line, the problem and the fix."""


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to a single bool
class EditRecord:
    source: np.ndarray  # (H, W, 3) uint8
    instruction: str
    target: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool, True = changed
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive)
    where: str  # "file:line"


@dataclass(frozen=True, eq=False)
class CaptionRecord:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    where: str  # "file:line" of the annotation


# --------------------------------------------------------------------------- images


def _open_image(path: Path, where: str, what: str, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, turning every failure into a DataError at `where`."""
    if not path.is_file():
        raise DataError(f"{where}: {what} image {str(path)!r} does not exist; fix the path "
                        "(relative paths resolve against the manifest's folder, or image_dir "
                        "for COCO captions)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(
                    f"{where}: {what} image {str(path)!r} is {width}x{height} = {width * height} "
                    f"pixels, over the limit of {max_pixels}; downscale it or raise max_pixels")
            im.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{where}: {what} image {str(path)!r} trips Pillow's decompression-bomb "
                        f"limit ({e}); downscale it or check that the file is what you expect") from e
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for unreadable files
        raise DataError(f"{where}: {what} image {str(path)!r} cannot be read as an image ({e}); "
                        "re-save it as PNG or JPEG") from e
    return im


def _load_rgb(path: Path, where: str, what: str, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8."""
    im = _open_image(path, where, what, max_pixels)
    try:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth: scale to 8 bits
            arr = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if im.mode.startswith("I") else 1.0
            grey = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: {what} image {str(path)!r} (mode {im.mode}) cannot be converted "
                        f"to RGB ({e}); re-save it as an 8-bit RGB PNG") from e


def _load_mask(path: Path, where: str, max_pixels: int) -> np.ndarray:
    """(H, W) bool: True where any colour channel is nonzero."""
    rgb = _load_rgb(path, where, "mask", max_pixels)  # (H, W, 3)
    return rgb.any(axis=-1)


def _resolve(folder: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else folder / p


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found; check the path") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save the file as UTF-8 JSON") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from e


# --------------------------------------------------------------------------- edit manifests


def _parse_box(value, where: str, width: int, height: int) -> tuple[int, int, int, int]:
    if (
        not isinstance(value, list) or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise DataError(f"{where}: \"box\" must be a list of 4 integers [x0, y0, x1, y1], got "
                        f"{value!r}; write pixel coordinates, x1/y1 exclusive")
    x0, y0, x1, y1 = value
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise DataError(
            f"{where}: \"box\" {value} is inverted or outside the {width}x{height} source image; "
            f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def read_edit_manifest(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[EditRecord]:
    """Read a JSONL edit manifest (see the module docstring) into EditRecords, in file order."""
    path = Path(path)
    folder = path.parent
    records: list[EditRecord] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line "
                            "must be one JSON object") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}; write "
                            '{"source": ..., "instruction": ..., "target": ...}')
        for key in ("source", "instruction", "target"):
            if key not in row:
                raise DataError(f"{where}: missing key {key!r}; every line needs \"source\", "
                                "\"instruction\" and \"target\"")
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
        if row.get("mask") is not None and not isinstance(row["mask"], str):
            raise DataError(f"{where}: \"mask\" must be an image path or null, got {row['mask']!r}")

        source = _load_rgb(_resolve(folder, row["source"]), where, "source", max_pixels)
        target = _load_rgb(_resolve(folder, row["target"]), where, "target", max_pixels)
        height, width = source.shape[:2]
        if target.shape != source.shape:
            raise DataError(f"{where}: target is {target.shape[1]}x{target.shape[0]} but source is "
                            f"{width}x{height}; resize them to the same size")
        mask = None
        if row.get("mask") is not None:
            mask = _load_mask(_resolve(folder, row["mask"]), where, max_pixels)
            if mask.shape != (height, width):
                raise DataError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but source is "
                                f"{width}x{height}; resize the mask to the source size")
        box = None
        if row.get("box") is not None:
            box = _parse_box(row["box"], where, width, height)
        records.append(EditRecord(source, row["instruction"], target, mask, box, where))
    if not records:
        raise DataError(f"{path}: no edit pairs (the file is empty or only blank lines); write one JSON object per line "
                        f"with \"source\", \"instruction\" and \"target\"")
    return records


# --------------------------------------------------------------------------- COCO captions


def _array_item_lines(text: str, keys: tuple[str, ...]) -> dict[str, list[int]]:
    """1-based line of each item of the top-level arrays named `keys` of a JSON object text.

    Walks the top level with the stdlib decoder so strings are handled exactly; returns empty
    lists for arrays it cannot locate (line numbers then fall back to the array's position).
    """
    decoder = json.JSONDecoder()
    lines: dict[str, list[int]] = {k: [] for k in keys}

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    try:
        i = skip(0)
        if text[i] != "{":
            return lines
        i = skip(i + 1)
        while i < len(text) and text[i] != "}":
            key, i = decoder.raw_decode(text, i)
            i = skip(i)
            i = skip(i + 1)  # past ':'
            if key in lines and text[i] == "[":
                i = skip(i + 1)
                while text[i] != "]":
                    lines[key].append(text.count("\n", 0, i) + 1)
                    _, i = decoder.raw_decode(text, i)
                    i = skip(i)
                    if text[i] == ",":
                        i = skip(i + 1)
                i += 1
            else:
                _, i = decoder.raw_decode(text, i)
            i = skip(i)
            if i < len(text) and text[i] == ",":
                i = skip(i + 1)
    except (ValueError, IndexError):
        pass
    return lines


def read_coco_captions(
    path, image_dir=None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[CaptionRecord]:
    """Read a COCO captions JSON into one CaptionRecord per annotation, in file order."""
    path = Path(path)
    folder = Path(image_dir) if image_dir is not None else path.parent
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}:1: expected a JSON object with \"images\" and \"annotations\", "
                        f"got {type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}:1: missing or non-list key {key!r}; a COCO captions file has "
                            "\"images\": [{\"id\", \"file_name\"}] and "
                            "\"annotations\": [{\"image_id\", \"caption\"}]")
    lines = _array_item_lines(text, ("images", "annotations"))

    def where(key: str, k: int) -> str:
        found = lines[key]
        return f"{path}:{found[k]}" if k < len(found) else f"{path}:{key}[{k}]"

    files: dict[object, tuple[str, str]] = {}  # image id -> (file name, where)
    for k, entry in enumerate(data["images"]):
        at = where("images", k)
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataError(f"{at}: each images entry needs \"id\" and \"file_name\", got {entry!r}")
        if not isinstance(entry["id"], (int, str)) or isinstance(entry["id"], bool):
            raise DataError(f"{at}: image \"id\" must be an integer or string, got {entry['id']!r}")
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise DataError(f"{at}: \"file_name\" must be a non-empty string, got {entry['file_name']!r}")
        if entry["id"] in files:
            raise DataError(f"{at}: image id {entry['id']!r} is listed twice (first at "
                            f"{files[entry['id']][1]}); give each image a unique id")
        files[entry["id"]] = (entry["file_name"], at)

    loaded: dict[object, np.ndarray] = {}
    records: list[CaptionRecord] = []
    for k, ann in enumerate(data["annotations"]):
        at = where("annotations", k)
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{at}: each annotations entry needs \"image_id\" and \"caption\", "
                            f"got {ann!r}")
        if not isinstance(ann["caption"], str) or not ann["caption"].strip():
            raise DataError(f"{at}: \"caption\" must be a non-empty string, got {ann['caption']!r}")
        image_id = ann["image_id"]
        if isinstance(image_id, bool) or image_id not in files:
            raise DataError(f"{at}: image_id {image_id!r} is not among the \"images\" ids; add the "
                            "image entry or fix the id")
        if image_id not in loaded:
            name, image_at = files[image_id]
            loaded[image_id] = _load_rgb(_resolve(folder, name), image_at, "listed", max_pixels)
        records.append(CaptionRecord(loaded[image_id], ann["caption"], at))
    if not records:
        raise DataError(f"{path}: no captions (\"annotations\" is empty); add at least one caption")
    return records
