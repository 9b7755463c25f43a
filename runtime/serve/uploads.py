"""Uploaded image bytes in, PNG bytes out, under the server's limits.

`open_upload` reads only the header (cheap, done before a request is queued): it refuses empty
uploads, formats outside `FORMATS` (so no file type with an external decoder, such as EPS with
Ghostscript, is ever opened), and images over the pixel limit, before any pixel is decoded.
`decode` runs on the worker thread: it decodes fully (truncated files fail here) and applies
EXIF orientation; conversion to RGB (grey, palette, alpha over white, 16-bit) is left to
`qk_runtime.inputs.load_image`, which `EditSession.edit` applies to the PIL image, so an upload
and a file given to `qk-edit` are treated alike. Nothing here reads or writes a file path.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class ImageTooLarge(InputError):
    """An upload over the byte or pixel limit (answered with 413)."""


def check_upload_size(n_bytes: int, max_bytes: int) -> None:
    if n_bytes == 0:
        raise InputError("the uploaded image is empty (0 bytes); send the file's contents in the 'image' field")
    if n_bytes > max_bytes:
        raise ImageTooLarge(
            f"the uploaded image is {n_bytes} bytes, over the limit of {max_bytes} bytes; "
            f"send a smaller file (the model works at a few hundred pixels) or start the server with a larger --max-upload-bytes"
        )


def open_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Image bytes -> a PIL image whose header has been read and checked, not yet decoded."""
    check_upload_size(len(data), max_bytes)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own check, far above ours
        raise ImageTooLarge(f"the uploaded image is refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"the uploaded file is not an image in a supported format ({', '.join(FORMATS)}); "
            f"send one of those"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"the uploaded image header is corrupt: {exc}") from exc
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"the uploaded image is empty ({w}x{h} pixels)")
    if w * h > max_pixels:
        raise ImageTooLarge(
            f"the uploaded image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels; "
            f"downscale it first (the model works at a few hundred pixels) or start the server with a larger --max-pixels"
        )
    return img


def decode(img: Image.Image) -> Image.Image:
    """Decode a checked upload fully and apply its EXIF orientation."""
    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the uploaded image is refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"the uploaded image is truncated or corrupt: {exc}") from exc


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (zlib level 1: the server's time matters more than bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
