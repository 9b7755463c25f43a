"""Checking and converting what a user hands the runtime: images, boxes, instructions.

The rules (they are also in the error messages):
- Images: a path, a PIL image, or a numpy array (H, W), (H, W, 1|3|4) of uint8 or uint16.
  Files must decode completely: truncated, unreadable and non-image files are refused, and so is
  any image over `MAX_PIXELS` pixels (checked from the header, before decoding: decompression
  bombs never get decoded). EXIF orientation is applied. Grey, palette, CMYK and other modes are
  converted to RGB; an alpha channel is composited over white; 16-bit values are scaled to 8 bits
  (v / 257, rounded).
- Any size: the image is resized (bilinear) to the model's square side, ignoring its aspect
  ratio, and the result is resized back (bilinear) to the input's width and height.
- Boxes: four integers x0, y0, x1, y1 in the input image's pixels, x1 and y1 exclusive, with
  0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height; outside, inverted or empty boxes are refused.
  When the image is resized, the box is scaled with it (rounding outwards, at least one pixel).
- Instructions: empty or blank text is refused; text longer than the tokenizer's max_length
  tokens is truncated with a warning.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels, about 8192 x 8192


def _check_size(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1:
        raise InputError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {MAX_PIXELS} "
            f"(refused as a possible decompression bomb); downscale it first"
        )


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)  # 16-bit -> 8-bit
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        raise InputError("floating-point (mode F) images are not supported; save the image as 8- or 16-bit")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    _check_size(arr.shape[1], arr.shape[0], "image array")
    if arr.dtype == np.uint16:
        arr = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"image array has dtype {arr.dtype}; expected uint8 (0-255) or uint16 (0-65535)")
    if arr.shape[2] == 4:  # composite over white
        a = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.rint(arr[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def load_image(image) -> np.ndarray:
    """A path, PIL image or numpy array -> (H, W, 3) uint8, or InputError with the reason."""
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, "image")
        return _pil_to_rgb(ImageOps.exif_transpose(image))  # the EXIF rule holds for an opened image as for a file
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"image must be a file path, a PIL image or a numpy array, not {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist or is not a file")
    try:
        with Image.open(path) as img:
            _check_size(img.width, img.height, f"image {path}")
            img.load()  # decode fully now: truncated files fail here
            img = ImageOps.exif_transpose(img)
            return _pil_to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path} is not an image file PIL can read (PNG, JPEG, WebP, BMP, ...)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise InputError(f"image {path} is truncated or corrupt: {exc}") from exc


def resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))


def check_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The box rule: integers with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height (x1, y1 exclusive)."""
    rule = f"need integers 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (x1, y1 exclusive, in the input image's pixels)"
    if isinstance(box, str):
        box = box.split(",")
    try:
        vals = list(box)
    except TypeError as exc:
        raise InputError(f"box {box!r} must be four integers x0,y0,x1,y1; {rule}") from exc
    if len(vals) != 4:
        raise InputError(f"box {box!r} has {len(vals)} values; it must be four integers x0,y0,x1,y1")
    out = []
    for v in vals:
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError as exc:
                raise InputError(f"box {box!r}: {v!r} is not an integer; {rule}") from exc
        if (isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)) or not math.isfinite(float(v))
                or float(v) != math.floor(float(v))):
            raise InputError(f"box {box!r}: {v!r} is not an integer; {rule}")
        out.append(int(v))
    x0, y0, x1, y1 = out
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        what = "inverted or empty" if (x1 <= x0 or y1 <= y0) else "outside the image"
        raise InputError(f"box {tuple(out)} is {what} for a {width}x{height} image; {rule}")
    return x0, y0, x1, y1


def scale_box(box: tuple[int, int, int, int], width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """A valid box in a width x height image -> the box in the side x side resized image (outwards, >= 1 px)."""
    if (width, height) == (side, side):
        return box
    sx, sy = side / width, side / height
    x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    return x0, y0, max(int(np.ceil(box[2] * sx)), x0 + 1), max(int(np.ceil(box[3] * sy)), y0 + 1)


def check_text(text, what: str = "instruction") -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, not {type(text).__name__}")
    if not text.strip():
        hint = "change, e.g. 'make the red circle blue'" if what == "instruction" else "draw, e.g. 'a red circle and a blue square'"
        raise InputError(f"{what} is empty; say what to {hint}")
    return text


def check_threads(threads) -> int | None:
    """None (the backend's default: one per core) or 1 .. this machine's logical CPUs. More
    threads than CPUs only slow a session down, and an absurd count (100000) made ONNX Runtime
    start that many threads and use 16 GB before it failed."""
    if threads is None:
        return None
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise InputError(f"threads={threads!r}; must be an integer from 1 to {cpus} (this machine's logical CPUs), "
                         f"or left unset for one per core")
    return threads


def check_writable(flag: str, path: Path) -> None:
    """`path` can be written: not a folder, and its folder (or the nearest existing parent, since
    missing folders are made) is a writable folder."""
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {parent} (no permission or a read-only file system); "
                         f"choose another place")
