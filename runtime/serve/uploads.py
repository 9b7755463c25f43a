"""Uploaded image bytes in, PNG bytes out, under the server's limits; form text checked as UTF-8.

`decode_upload` is the runtime's one decode path (`qk_runtime.inputs.decode_image`) with the
server's limits: it refuses empty uploads, formats outside `FORMATS` (so no file type with an
external decoder, such as EPS with Ghostscript, is ever opened) and images over the pixel limit
(from the header, before any pixel is decoded), then verifies and decodes the image completely
and applies its EXIF orientation, and converts it to RGB as `qk-edit` does. It runs before a
request takes a queue slot, so a truncated or corrupt upload is refused with 400 and never
queues. `form_text_problem` finds form fields that are not UTF-8 text (the form parser would
read them as Latin-1). Nothing here reads or writes a file path.
"""
from __future__ import annotations

import io
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from ..errors import InputError
from ..inputs import decode_image, load_image

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


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8, fully decoded and oriented, or InputError / ImageTooLarge."""
    check_upload_size(len(data), max_bytes)
    img = decode_image(data, "the uploaded image", formats=FORMATS, max_pixels=max_pixels, too_large=ImageTooLarge)
    return load_image(img)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (zlib level 1: the server's time matters more than bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------- form text


def _multipart_text_fields(boundary: bytes, body: bytes) -> list[tuple[str, bytes]]:
    """(name, raw bytes) of every multipart part without a filename (the text fields)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    fields, state = [], {"headers": {}, "field": b"", "value": b"", "data": []}

    def on_part_begin():
        state["headers"], state["data"] = {}, []

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        state["data"].append(data[start:end])

    def on_part_end():
        _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if b"filename" not in options:
            fields.append((options.get(b"name", b"").decode("latin-1"), b"".join(state["data"])))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(body)
    parser.finalize()
    return fields


def form_text_problem(content_type: bytes, body: bytes) -> str | None:
    """A sentence naming the first form field whose value is not UTF-8 text, else None.
    Bodies the form parser cannot read at all are left to it (it answers 400)."""
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type or b"")
    try:
        if kind == b"multipart/form-data" and options.get(b"boundary"):
            fields = _multipart_text_fields(options[b"boundary"], body)
        elif kind == b"application/x-www-form-urlencoded":
            try:
                parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                return "a form field is not UTF-8 text; send the form's text fields as UTF-8"
            return None
        else:
            return None
    except Exception:  # noqa: BLE001 - a malformed body: the form parser refuses it with its own 400
        return None
    for name, raw in fields:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"field '{name}' is not UTF-8 text (byte {exc.start}); send the form's text fields as UTF-8"
    return None
