"""`qk-serve`: the runtime over HTTP (FastAPI + uvicorn), with a one-page editor at `/`.

    qk-serve [--bundle DIR] [--backend auto|ort-cpu|...] [--host 127.0.0.1] [--port 8000]
             [--max-queue 8] [--timeout 60] [--max-upload-bytes 8388608] [--max-pixels 16777216]
             [--max-steps 50] [--body-timeout 10] [--max-uploads 16] [--cors-origin URL ...]

Routes (the schema is at /openapi.json; the interactive /docs page is off because it loads
its scripts from a CDN):

- `POST /v1/edit`, multipart/form-data: `image` (file), `instruction`, optional `box`
  ("x0,y0,x1,y1" in the image's pixels, x1 and y1 exclusive), `steps`, `seed`.
- `POST /v1/generate`, form fields: `prompt`, optional `steps`, `seed`.
  Both answer with the PNG and `X-QK-Timings` (JSON, milliseconds per stage: the runtime's
  stages plus `queue_wait`, `decode`, `encode` and `server_total`), `X-QK-Backend`, `X-QK-Seed`,
  `X-QK-Steps`; with `?format=json` a JSON object instead, the PNG in base64 (`image_png_base64`)
  and, for edits, the CMG's gate.
- `GET /healthz`: backend, model side, queue state and limits, and whether the page's "in this
  browser" mode can run (`web`). `GET /`: the editor page.
- `GET /web/<module>`, `/web/ort/<file>`, `/bundle/<bundle>/<file>`: the JavaScript runtime,
  onnxruntime-web's files and the bundle's files for the page's "in this browser" mode (`web.py`).

One `EditSession` per process, driven by one worker thread behind a bounded queue
(`worker.SessionWorker`). Every POST body is read whole by `BodyGuard` before the route sees it.
Limits, and the answer when one is hit:
- request body over `--max-upload-bytes` plus 64 KiB for the other fields: 413, before the body
  is read when Content-Length says so, else as soon as the bytes arrive;
- a body that stalls (no bytes for `--body-timeout` seconds, or not complete within `--timeout`):
  408 and the connection closed; more than `--max-uploads` bodies arriving at once: 503 with
  Retry-After;
- image over `--max-pixels` (from its header, before decoding): 413; not an image, truncated,
  corrupt (the image is decoded completely before the request takes a queue slot), bad box,
  blank instruction: 400; a field missing, empty, not UTF-8, of the wrong type or out of
  range: 422;
- more than `--max-queue` requests waiting: 503 with Retry-After; a request not done within
  `--timeout` seconds (queue wait included): 504; more than `--max-connections` open
  connections: uvicorn's 503.
Every error is a JSON object `{"detail": "<what was wrong and how to fix it>"}`, never a
traceback. Requests never name files: images arrive as bytes; the page's own files are served
from a fixed table. No CORS headers unless `--cors-origin` is given.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from ..backend import CHOICES
from ..errors import InputError, QKRuntimeError
from ..inputs import check_box, check_text
from .uploads import ImageTooLarge, decode_upload, encode_png, form_text_problem
from .web import ISOLATION_HEADERS, bundle_files, find_ort_web, load_modules, media_type
from .worker import JobTimeout, QueueFull, SessionWorker

try:
    import uvicorn
    from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
    import anyio
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # the serve extra is not installed
    _MISSING = exc
else:
    _MISSING = None

log = logging.getLogger("qk_runtime.serve")

FORM_SLACK_BYTES = 64 * 1024  # body allowance for the non-file fields and multipart framing
MAX_SEED = 2**64 - 1
STATIC_FILES = {  # the only files served: name -> media type (no path ever comes from a request)
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "sample.png": "image/png",
    "sample.json": "application/json",
}
TIMINGS_HEADER = "X-QK-Timings"
EXPOSED_HEADERS = [TIMINGS_HEADER, "X-QK-Backend", "X-QK-Seed", "X-QK-Steps"]
EDIT_FORM_HINT = ("POST /v1/edit takes multipart/form-data with image (file), instruction, optional box "
                  "(x0,y0,x1,y1), steps and seed")
GENERATE_FORM_HINT = "POST /v1/generate takes form fields prompt, optional steps and seed"


@dataclass(frozen=True)
class ServeConfig:
    """What `qk-serve` runs and the limits it enforces (the flags of the same names)."""

    bundle: Optional[Path] = None  # None: the shipped default bundle
    backend: str = "auto"
    threads: Optional[int] = None
    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_queue: int = 8
    timeout_s: float = 60.0
    max_steps: int = 50
    max_text_chars: int = 1000
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    body_timeout_s: float = 10.0  # longest wait for the next bytes of a request body
    max_uploads: int = 16  # request bodies arriving (or their images decoding) at once
    ort_web_dir: Optional[Path] = None  # onnxruntime-web's dist folder; None: runtime/web/node_modules/onnxruntime-web/dist

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_steps", "max_text_chars", "max_uploads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; must be a positive integer")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue={self.max_queue!r}; must be 0 or more (0: only the running request)")
        for name in ("timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}; must be a positive, finite number of seconds")
        if "*" in self.cors_origins:
            raise ValueError("--cors-origin '*' would let any web page drive this server; name the origins, "
                             "e.g. --cors-origin http://localhost:3000")

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + FORM_SLACK_BYTES

    def public_limits(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_queue": self.max_queue, "timeout_s": self.timeout_s, "max_steps": self.max_steps,
                "max_text_chars": self.max_text_chars, "body_timeout_s": self.body_timeout_s,
                "max_uploads": self.max_uploads}


def _require_fastapi() -> None:
    if _MISSING is not None:
        raise QKRuntimeError(f"qk-serve needs FastAPI, uvicorn and python-multipart ({_MISSING}); "
                             f"install them with: pip install 'query-kontext[serve]'")


# --------------------------------------------------------------------------- request body limit


if _MISSING is None:
    class BodyTooLarge(HTTPException):
        """Raised from `receive` when the body outgrows the limit. An HTTPException, so FastAPI's
        form parsing passes it on instead of turning it into a generic 400."""

        def __init__(self, limit: int):
            super().__init__(413, f"the request body is over the limit of {limit} bytes (images up to "
                                  f"--max-upload-bytes {limit - FORM_SLACK_BYTES} plus {FORM_SLACK_BYTES} for "
                                  f"the other fields); send a smaller image or raise --max-upload-bytes")


class BodyGuard:
    """ASGI middleware: read every POST body whole before the app sees it. Refuses bodies over
    `max_bytes` (413: from Content-Length, or as the bytes arrive), bodies that stall (408: no
    bytes for `body_timeout_s`, or not complete within `total_timeout_s`), more than
    `max_uploads` bodies arriving at once (503), a body shorter than its Content-Length (400),
    and form fields that are not UTF-8 text (422). Then the app reads the body from memory."""

    def __init__(self, app, max_bytes: int, body_timeout_s: float, total_timeout_s: float, max_uploads: int):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_uploads = max_uploads
        self.in_flight = 0

    @staticmethod
    async def _answer(scope, receive, send, status: int, detail: str, headers: dict | None = None):
        await JSONResponse({"detail": detail}, status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                declared = int(declared)
            except ValueError:
                return await self._answer(scope, receive, send, 400, "the Content-Length header is not an integer")
            if declared > self.max_bytes:
                return await self._answer(scope, receive, send, 413, BodyTooLarge(self.max_bytes).detail, {"Connection": "close"})
        if self.in_flight >= self.max_uploads:
            return await self._answer(scope, receive, send, 503, f"the server is receiving {self.in_flight} uploads "
                                      f"already (--max-uploads {self.max_uploads}); retry in a moment", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            body = await self._read(scope, receive, send, declared)
        finally:
            self.in_flight -= 1
        if body is None:  # answered, or the client left
            return
        problem = form_text_problem(headers.get(b"content-type", b""), body)
        if problem:
            return await self._answer(scope, receive, send, 422, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope, receive, send, declared: int | None) -> bytes | None:
        chunks, seen = [], 0
        deadline = time.monotonic() + self.total_timeout_s
        while True:
            wait = min(self.body_timeout_s, deadline - time.monotonic())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), timeout=wait)
            except asyncio.TimeoutError:
                await self._answer(scope, receive, send, 408,
                                   f"the request body stalled after {seen} bytes (no data for {self.body_timeout_s:g} s, "
                                   f"or not complete within {self.total_timeout_s:g} s); send the whole body at once",
                                   {"Connection": "close"})
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._answer(scope, receive, send, 413, BodyTooLarge(self.max_bytes).detail, {"Connection": "close"})
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if declared is not None and seen != declared:
            await self._answer(scope, receive, send, 400, f"the request body is {seen} bytes but Content-Length says "
                               f"{declared}; send the whole body", {"Connection": "close"})
            return None
        return b"".join(chunks)


# --------------------------------------------------------------------------- responses


def _error(status: int, detail: str, headers: dict | None = None):
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _field_errors(exc, hint: str) -> str:
    """FastAPI's validation errors -> one readable line (no echo of the submitted values)."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query")]
        name = ".".join(loc) or "body"
        if err.get("type") == "missing":
            parts.append(f"missing or empty field '{name}'")
        else:
            parts.append(f"field '{name}': {err.get('msg', 'invalid')}")
    return "; ".join(parts) + f". {hint}"


def _rounded(timings: dict) -> dict:
    out = {}
    for k, v in timings.items():
        out[k] = [round(float(x), 3) for x in v] if isinstance(v, (list, tuple)) else round(float(v), 3)
    return out


def _answer(fmt: str, png: bytes, result, timings: dict, width: int, height: int):
    timings = _rounded(timings)
    if fmt == "json":
        body = {"image_png_base64": base64.b64encode(png).decode("ascii"), "width": width, "height": height,
                "timings_ms": timings, "backend": result.backend, "seed": result.seed, "steps": result.steps,
                "active_tokens": result.active_tokens,
                "gate": None if result.gate is None else [[round(float(v), 4) for v in row] for row in result.gate]}
        return JSONResponse(body)
    headers = {TIMINGS_HEADER: json.dumps(timings, separators=(",", ":")), "X-QK-Backend": result.backend,
               "X-QK-Seed": str(result.seed), "X-QK-Steps": str(result.steps), "Cache-Control": "no-store"}
    return Response(png, media_type="image/png", headers=headers)


def _empty_fields(form, names) -> None:
    """A field sent empty (or blank) is refused like a missing one: 422 (the form parser would read
    an empty optional field as absent)."""
    empty = [n for n in names if isinstance(form.get(n), str) and not form.get(n).strip()]
    if empty:
        raise HTTPException(422, "; ".join(f"missing or empty field '{n}'" for n in empty) + ": leave an optional "
                                 "field out instead of sending it empty")


async def run_in_threadpool_limited(limiter, fn, *args):
    """`fn(*args)` on a worker thread, at most `limiter`'s tokens at once."""
    return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)


def _load_static() -> dict[str, bytes]:
    root = resources.files("qk_runtime.serve") / "static"
    files = {name: (root / name).read_bytes() for name in (*STATIC_FILES, "index.html")}
    return files


# --------------------------------------------------------------------------- the app


def create_app(config: ServeConfig | None = None, session=None):
    """The FastAPI app. Opens an `EditSession` from `config` unless `session` is given (then the
    caller keeps ownership and closes it). `app.state.worker` is the `SessionWorker`."""
    _require_fastapi()
    config = config or ServeConfig()
    owned = session is None
    if owned:
        from ..session import EditSession

        session = EditSession(config.bundle, backend=config.backend, threads=config.threads)
    worker = SessionWorker(config.max_queue, config.timeout_s)
    static = _load_static()
    bundle = session.bundle
    web_modules = load_modules()
    ort_web = find_ort_web(config.ort_web_dir)
    bundle_folder, bundle_table = bundle_files(bundle)
    if not ort_web.available:
        log.warning("qk-serve: the page's in-browser mode is off: %s", ort_web.reason)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()
        if owned:
            session.close()

    app = FastAPI(
        title="query-kontext", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Edit and generate images with a query-kontext bundle. Errors are JSON {\"detail\": message}.",
    )
    app.state.worker, app.state.session, app.state.config = worker, session, config
    app.add_middleware(BodyGuard, max_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s,
                       total_timeout_s=config.timeout_s, max_uploads=config.max_uploads)
    decode_slots = anyio.CapacityLimiter(2)  # images decoding at once (each may hold --max-pixels x 3 bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)

    # -- errors: one JSON line each, never a traceback
    @app.exception_handler(ImageTooLarge)
    async def too_large(request, exc):
        return _error(413, str(exc))

    @app.exception_handler(InputError)
    async def bad_input(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(JobTimeout)
    async def timed_out(request, exc):
        return _error(504, str(exc), {"Retry-After": str(worker.retry_after_s())})

    def form_hint(request) -> str:
        return GENERATE_FORM_HINT if request.url.path.endswith("/generate") else EDIT_FORM_HINT

    @app.exception_handler(RequestValidationError)
    async def invalid_fields(request, exc):
        return _error(422, _field_errors(exc, form_hint(request)))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException is a subclass
    async def http_error(request, exc):
        detail = str(exc.detail)
        if exc.status_code == 400 and request.url.path.startswith("/v1/"):  # the form parser's own refusals
            detail = f"{detail.rstrip('.')}: the form could not be parsed. {form_hint(request)}"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc):
        log.error("qk-serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    # -- the page
    page_headers = {"Cache-Control": "no-cache", **ISOLATION_HEADERS}

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(static["index.html"], headers=page_headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in STATIC_FILES:
            return _error(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=page_headers)

    # -- the page's in-browser mode: the JavaScript runtime, onnxruntime-web, the bundle (web.py)
    @app.get("/web/{name}", include_in_schema=False)
    async def web_module(name: str):
        if name not in web_modules:
            return _error(404, f"no module {name!r} in the web runtime")
        return Response(web_modules[name], media_type=media_type(name), headers=page_headers)

    @app.get("/web/ort/{name}", include_in_schema=False)
    async def ort_file(name: str):
        if name not in ort_web.files:
            detail = ort_web.reason or f"no file {name!r} among onnxruntime-web's served files"
            return _error(404, detail)
        return FileResponse(ort_web.files[name], media_type=media_type(name), headers=page_headers)

    @app.get("/bundle/{path:path}", include_in_schema=False)
    async def bundle_file(path: str):
        if path not in bundle_table:
            return _error(404, f"no file {path!r} in the served bundle")
        return FileResponse(bundle_table[path], media_type=media_type(path), headers=page_headers)

    # -- the API
    @app.get("/healthz", summary="Liveness, backend, queue state and limits")
    async def healthz():
        return {"status": "ok", "backend": session.backend_name, "backend_reason": session.backend_reason,
                "bundle": bundle.path.name, "precision": bundle.manifest.get("precision"),
                "image_size": session.side, "default_steps": bundle.sampler.steps,
                "queue": {"admitted": worker.admitted, "limit": worker.limit}, "completed": worker.completed,
                "refused": worker.refused, "timed_out": worker.timed_out, "limits": config.public_limits(),
                "web": {"available": ort_web.available, "reason": ort_web.reason, "onnxruntime_web": ort_web.version,
                        "bundle_url": f"/bundle/{bundle_folder}", "worker_url": "/web/worker.js", "ort_url": "/web/ort/"}}

    png_responses = {200: {"content": {"image/png": {}, "application/json": {}},
                           "description": "the PNG (timings in X-QK-Timings), or JSON with ?format=json"},
                     400: {"description": "bad image, box or text"}, 413: {"description": "upload too large"},
                     422: {"description": "a field missing or out of range"},
                     503: {"description": "queue full; see Retry-After"}, 504: {"description": "timed out"}}

    @app.post("/v1/edit", summary="Edit an image as an instruction says, inside a box if given",
              response_class=Response, responses=png_responses)
    async def edit(
        request: Request,
        image: UploadFile = File(..., description="the image (PNG, JPEG, WebP, BMP or GIF)"),
        instruction: str = Form(..., max_length=config.max_text_chars, description="e.g. 'make the red circle blue'"),
        box: Optional[str] = Form(None, max_length=64, description="x0,y0,x1,y1 in the image's pixels, x1 and y1 exclusive"),
        steps: Optional[int] = Form(None, ge=1, le=config.max_steps, description="denoising steps (default: the bundle's)"),
        seed: int = Form(0, ge=0, le=MAX_SEED, description="noise seed"),
        fmt: Literal["png", "json"] = Query("png", alias="format", description="png: the image; json: base64 PNG, timings, gate"),
    ):
        t0 = time.perf_counter()
        _empty_fields(await request.form(), ("box", "steps", "seed"))
        # refuse what would fail anyway before decoding and before taking a queue slot (the session checks again)
        check_text(instruction, "instruction")
        data = await image.read(config.max_upload_bytes + 1)
        await image.close()
        rgb = await run_in_threadpool_limited(decode_slots, decode_upload, data, config.max_upload_bytes, config.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1000.0
        height, width = rgb.shape[:2]
        if box is not None:
            check_box(box, width, height)

        def job():
            result = session.edit(rgb, instruction, box, steps=steps, seed=seed)
            t = time.perf_counter()
            png = encode_png(result.image)
            return result, png, (time.perf_counter() - t) * 1000.0

        (result, png, encode_ms), wait_ms = await worker.run(job)
        timings = {"queue_wait": wait_ms, "decode": decode_ms, **result.timings, "encode": encode_ms}
        timings["server_total"] = (time.perf_counter() - t0) * 1000.0
        h, w = result.image.shape[:2]
        return _answer(fmt, png, result, timings, w, h)

    @app.post("/v1/generate", summary="Draw a new image from a prompt", response_class=Response,
              responses=png_responses)
    async def generate(
        request: Request,
        prompt: str = Form(..., max_length=config.max_text_chars, description="e.g. 'a large red circle at the top left'"),
        steps: Optional[int] = Form(None, ge=1, le=config.max_steps, description="denoising steps (default: the bundle's)"),
        seed: int = Form(0, ge=0, le=MAX_SEED, description="noise seed"),
        fmt: Literal["png", "json"] = Query("png", alias="format", description="png: the image; json: base64 PNG and timings"),
    ):
        t0 = time.perf_counter()
        _empty_fields(await request.form(), ("steps", "seed"))
        check_text(prompt, "prompt")

        def job():
            result = session.generate(prompt, steps=steps, seed=seed)
            t = time.perf_counter()
            png = encode_png(result.image)
            return result, png, (time.perf_counter() - t) * 1000.0

        (result, png, encode_ms), wait_ms = await worker.run(job)
        timings = {"queue_wait": wait_ms, **result.timings, "encode": encode_ms}
        timings["server_total"] = (time.perf_counter() - t0) * 1000.0
        h, w = result.image.shape[:2]
        return _answer(fmt, png, result, timings, w, h)

    return app


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog="qk-serve", description="Serve a query-kontext bundle over HTTP, with an editor page at /.")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--backend", choices=CHOICES, default="auto", help="backend (default auto: the fastest available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / OpenVINO (default: all cores)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port, 1-65535 (default 8000)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests that may wait behind the running one; more get 503 + Retry-After (default {d.max_queue})")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help=f"seconds a request may take, queue wait included; then 504 (default {d.timeout_s:g})")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes,
                   help=f"largest image upload in bytes; larger get 413 (default {d.max_upload_bytes})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest image in pixels (width x height, read from the header); larger get 413 (default {d.max_pixels})")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help=f"largest steps a request may ask for (default {d.max_steps})")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars,
                   help=f"longest instruction or prompt in characters (default {d.max_text_chars})")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help=f"seconds a request body may stall before 408 (default {d.body_timeout_s:g}; the whole body must "
                        f"also arrive within --timeout)")
    p.add_argument("--max-uploads", type=int, default=d.max_uploads,
                   help=f"request bodies arriving at once; more get 503 + Retry-After (default {d.max_uploads})")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open connections at most; more get 503 from uvicorn (default 64)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="allow browser pages from this origin (repeatable); default: no CORS headers")
    p.add_argument("--ort-web-dir", type=Path, default=None, metavar="DIR",
                   help="onnxruntime-web's dist folder for the page's in-browser mode (default: the one `npm ci --prefix "
                        "runtime/web` installs beside the runtime)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True, help="log every request (default on)")
    return p


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; use 1-65535")
    return port


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _require_fastapi()
        config = ServeConfig(bundle=args.bundle, backend=args.backend, threads=args.threads,
                             max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                             max_queue=args.max_queue, timeout_s=args.timeout, max_steps=args.max_steps,
                             max_text_chars=args.max_text_chars, cors_origins=tuple(args.cors_origin),
                             body_timeout_s=args.body_timeout, max_uploads=args.max_uploads, ort_web_dir=args.ort_web_dir)
        if args.max_connections < config.max_queue + 2:
            raise ValueError(f"--max-connections {args.max_connections} is below --max-queue + 2 = {config.max_queue + 2}; "
                             f"queued requests would be refused by uvicorn instead of answered with Retry-After")
        app = create_app(config)
    except (QKRuntimeError, ValueError) as exc:
        print(f"qk-serve: error: {exc}", file=sys.stderr)
        return 2
    session = app.state.session
    print(f"qk-serve: {session.bundle.path} on {session.backend_name} ({session.backend_reason}), "
          f"{session.open_ms:.0f} ms to load; http://{args.host}:{args.port}/  limits: "
          + json.dumps(config.public_limits()), flush=True)
    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                limit_concurrency=args.max_connections, timeout_keep_alive=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
