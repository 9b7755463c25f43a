"""Checking and converting what a user hands the runtime: images, boxes, instructions.

The rules (they are also in the error messages):
- Images: a path, a PIL image, or a numpy array (H, W), (H, W, 1|3|4) of uint8 or uint16.
  Files and uploads go through one decode path, `decode_image`: the header is checked (any image
  over `MAX_PIXELS` pixels is refused before decoding: decompression bombs never get decoded),
  the data verified (PNG chunk checksums) and decoded completely once, then the EXIF orientation
  applied; any failure on the way (truncated, corrupt, unreadable, a broken EXIF block) is an
  `InputError`, and nothing reads the image before that. A PIL image handed in is loaded the
  same way (a lazily opened one is decoded here; a closed one is refused). Grey, palette, CMYK and other modes are
  converted to RGB; an alpha channel is composited over white; 16-bit values are scaled to 8 bits
  (v / 257, rounded).
- Any size: the image is resized (bilinear) to the model's square side, ignoring its aspect
  ratio, and the result is resized back (bilinear) to the input's width and height.
- Boxes: four integers x0, y0, x1, y1 in the input image's pixels, x1 and y1 exclusive, with
  0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height; outside, inverted or empty boxes are refused.
  When the image is resized, the box is scaled with it (rounding outwards, at least one pixel).
- Instructions: text without a visible character (empty, blank, only zero-width or control
  characters), text holding NUL or unpaired surrogates (bytes that were not UTF-8) is refused;
  text longer than the tokenizer's max_length tokens is truncated with a warning.
"""
from __future__ import annotations

import io
import math
import os
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels, about 8192 x 8192


def _check_size(width: int, height: int, what: str, max_pixels: int = MAX_PIXELS, too_large=InputError) -> None:
    """An empty image or one over `max_pixels` (`too_large` is raised) is refused, before decoding."""
    if width < 1 or height < 1:
        raise InputError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise too_large(f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels "
                        f"(refused as a possible decompression bomb); downscale it first")


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


def _oriented(img: Image.Image, what: str) -> Image.Image:
    """A fully loaded image with its EXIF orientation applied (a copy), or InputError."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block raises many kinds; each is refused alike
        raise InputError(f"{what} has a broken EXIF block ({type(exc).__name__}: {exc}); re-save the image "
                         f"without EXIF data") from None


def decode_image(source, what: str, *, formats=None, max_pixels: int = MAX_PIXELS, too_large=InputError) -> Image.Image:
    """The one decode path: a path or bytes -> a fully decoded PIL image with its EXIF orientation
    applied, detached from any file. The header's size is checked first (`too_large` over
    `max_pixels`), then the data is verified and decoded completely; every failure is an
    InputError (or `too_large`) naming `what`."""
    def opened():
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, formats=formats)

    try:
        with opened() as probe:
            _check_size(*probe.size, what, max_pixels, too_large)
            probe.verify()  # PNG: every chunk's checksum, up to IEND
        with opened() as img:
            img.load()  # once: after a failed load Pillow's next load() returns without an error
            return _oriented(img, what)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise too_large(f"{what} refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        kinds = ", ".join(formats) if formats else "PNG, JPEG, WebP, BMP, ..."
        raise InputError(f"{what} is not an image file PIL can read: not an image in a supported format "
                         f"({kinds})") from None
    except FileNotFoundError:
        raise InputError(f"{what} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: Pillow's decoders raise many kinds
        raise InputError(f"{what} is truncated or corrupt ({type(exc).__name__}: {exc}); send a complete image "
                         f"file") from None


def _pil_image(image: Image.Image) -> Image.Image:
    """A PIL image handed to the API, loaded and oriented like a file (`decode_image`)."""
    try:
        w, h = image.size
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"the PIL image cannot be read ({type(exc).__name__}: {exc})") from None
    _check_size(w, h, "image")
    filename = getattr(image, "filename", None)
    if getattr(image, "fp", None) is not None and filename and os.path.isfile(filename):
        try:  # lazily opened from a file, not decoded yet: its data is verified as decode_image does
            with Image.open(filename) as probe:
                probe.verify()
        except Exception as exc:  # noqa: BLE001 - Pillow's own errors for truncated or corrupt files
            raise InputError(f"the PIL image's file {filename} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                             f"pass a complete image") from None
    try:
        image.load()  # a lazily opened image decodes here; a closed one fails here
    except Image.DecompressionBombError as exc:
        raise InputError(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's own errors for closed, truncated or corrupt images
        state = "closed" if "closed" in str(exc) else "truncated or corrupt"
        raise InputError(f"the PIL image is {state} ({type(exc).__name__}: {exc}); pass a complete, open image "
                         f"(or the file's path)") from None
    return _oriented(image, "the PIL image")


def load_image(image) -> np.ndarray:
    """A path, PIL image or numpy array -> (H, W, 3) uint8, or InputError with the reason."""
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(_pil_image(image))
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"image must be a file path, a PIL image or a numpy array, not {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist or is not a file")
    return _pil_to_rgb(decode_image(path, f"image {path}"))


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


INVISIBLE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")  # control, format (zero-width), separators


def check_text(text, what: str = "instruction") -> str:
    """An instruction or prompt with at least one visible character; no NUL, no unpaired
    surrogates (bytes that were not UTF-8 reach Python as those)."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, not {type(text).__name__}")
    hint = "change, e.g. 'make the red circle blue'" if what == "instruction" else "draw, e.g. 'a red circle and a blue square'"
    if "\0" in text:
        raise InputError(f"{what} contains a NUL character; send plain text saying what to {hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid UTF-8 text (it holds undecodable bytes); send UTF-8 text") from None
    if not text.strip():
        raise InputError(f"{what} is empty; say what to {hint}")
    if all(unicodedata.category(c) in INVISIBLE_CATEGORIES for c in text):
        raise InputError(f"{what} has no visible character (only spaces, zero-width or control characters); "
                         f"say what to {hint}")
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
