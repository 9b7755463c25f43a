"""qk-serve's HTTP API in-process (FastAPI TestClient) on the shipped INT8 bundle: round trips,
the schema, bad requests, the queue bound, the timeout and CORS.

Every edit here is a real edit on the real session. The queue tests hold the worker's single
thread with a job that waits on a `threading.Event`, submitted through the worker's public
`submit` (the same slot accounting as any request); the requests that queue behind it are real
edits. Nothing stands in for the session.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'query-kontext[serve]')")
pytest.importorskip("httpx", reason="httpx (the dev extra) is needed by FastAPI's TestClient")
from fastapi.testclient import TestClient  # noqa: E402

from qk_runtime import EditSession  # noqa: E402
from qk_runtime.serve import ServeConfig, create_app  # noqa: E402
from qk_runtime.serve.app import main  # noqa: E402
from qk_runtime.session import default_bundle_dir  # noqa: E402

STEPS = 4  # enough to exercise every stage; the test is about the service, not image quality
RUNTIME_STAGES = ("preprocess", "image_encoder", "text_encoder", "gateway", "cmg", "decoder", "image_decoder",
                  "postprocess", "total")
SERVER_STAGES = ("queue_wait", "decode", "encode", "server_total")


@pytest.fixture(scope="module")
def session():
    with EditSession(default_bundle_dir(), backend="ort-cpu", threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def client(session):
    with TestClient(create_app(ServeConfig(), session=session)) as c:
        yield c


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """96 x 80 (not the model's side, so the resize back is exercised): slate, a red square."""
    img = np.empty((80, 96, 3), np.uint8)
    img[:] = (112, 112, 120)
    img[20:50, 12:42] = (220, 40, 40)
    return img


def _edit(c, png: bytes, params=None, **fields):
    data = {"instruction": "make the red square blue", "steps": str(STEPS), **fields}
    return c.post("/v1/edit", files={"image": ("in.png", png, "image/png")}, data=data, params=params)


def _assert_clear_4xx(r, status: int, phrase: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and phrase in detail, detail
    assert "Traceback" not in r.text and 'File "' not in r.text


# --------------------------------------------------------------------------- round trips


def test_edit_returns_the_runtimes_png_and_timings(client, session, scene):
    r = _edit(client, _png(scene), box="10,18,44,52", seed="7")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (80, 96, 3)  # the input's size, not the model's
    timings = json.loads(r.headers["x-qk-timings"])
    for stage in RUNTIME_STAGES + SERVER_STAGES:
        assert timings[stage] >= 0, stage
    assert len(timings["decoder_steps"]) == STEPS
    assert timings["server_total"] >= timings["total"]
    assert r.headers["x-qk-backend"] == "ort-cpu" and r.headers["x-qk-seed"] == "7" and r.headers["x-qk-steps"] == str(STEPS)
    # the HTTP path returns exactly what the runtime computes for the same input
    direct = session.edit(scene, "make the red square blue", box=(10, 18, 44, 52), steps=STEPS, seed=7)
    np.testing.assert_array_equal(out, direct.image)


def test_edit_json_variant_has_the_image_timings_and_gate(client, scene):
    r = _edit(client, _png(scene), params={"format": "json"}, box="10,18,44,52")
    assert r.status_code == 200, r.text
    body = r.json()
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image_png_base64"]))))
    assert out.shape == (80, 96, 3) and (body["width"], body["height"]) == (96, 80)
    assert body["steps"] == STEPS and body["seed"] == 0 and body["backend"] == "ort-cpu"
    gate = np.asarray(body["gate"])
    assert gate.shape == (8, 8) and ((gate >= 0) & (gate <= 1)).all()
    assert body["timings_ms"]["total"] > 0


def test_generate_returns_a_png_of_the_models_side(client):
    r = client.post("/v1/generate", data={"prompt": "a large red circle at the top left", "steps": "3", "seed": "1"})
    assert r.status_code == 200, r.text
    assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (64, 64, 3)
    assert json.loads(r.headers["x-qk-timings"])["total"] > 0


def test_grey_and_rgba_uploads_are_converted(client, scene):
    grey = scene[..., 0]
    rgba = np.dstack([scene, np.full(scene.shape[:2], 128, np.uint8)])
    for arr in (grey, rgba):
        r = _edit(client, _png(arr))
        assert r.status_code == 200, r.text
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (80, 96, 3)


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["backend"] == "ort-cpu" and body["image_size"] == 64
    assert body["queue"] == {"admitted": 0, "limit": ServeConfig().max_queue + 1}
    assert body["limits"]["max_upload_bytes"] == ServeConfig().max_upload_bytes


def test_openapi_lists_the_routes_and_edit_fields(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/edit", "/v1/generate", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].split("/")[-1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert {"image", "instruction", "box", "steps", "seed"} <= set(props)
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


def test_page_and_its_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<canvas id="source"' in r.text and "/static/app.js" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    for name in ("app.js", "app.css", "sample.png", "sample.json"):
        assert client.get(f"/static/{name}").status_code == 200
    for name in ("app.py", "..%2Fapp.py", "..%2F..%2Fsession.py", "index.html.bak"):
        assert client.get(f"/static/{name}").status_code == 404


# --------------------------------------------------------------------------- bad requests


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is a few bytes: a bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_non_image_upload_is_400(client):
    _assert_clear_4xx(_edit(client, b"this is not an image"), 400, "not an image in a supported format")


def test_truncated_image_is_400(client, scene):
    png = _png(scene)
    _assert_clear_4xx(_edit(client, png[: len(png) // 2]), 400, "truncated or corrupt")


def test_empty_upload_is_400(client):
    _assert_clear_4xx(_edit(client, b""), 400, "empty")


def test_oversized_upload_is_413(session, scene):
    png = _png(scene)
    config = ServeConfig(max_upload_bytes=len(png) - 1)
    with TestClient(create_app(config, session=session)) as c:
        r = _edit(c, png)
    _assert_clear_4xx(r, 413, f"over the limit of {len(png) - 1} bytes")


def test_oversized_body_is_413_before_it_is_read(client):
    limit = ServeConfig().max_body_bytes
    r = client.post("/v1/edit", content=b"{" + b" " * (limit + 10) + b"}", headers={"content-type": "application/json"})
    _assert_clear_4xx(r, 413, "request body is over the limit")


def test_oversized_streamed_body_is_413(session):
    config = ServeConfig(max_upload_bytes=4096)

    def chunks():  # no Content-Length: the limit is enforced while the body arrives
        for _ in range(64):
            yield b"x" * 4096

    with TestClient(create_app(config, session=session)) as c:
        r = c.post("/v1/edit", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    _assert_clear_4xx(r, 413, "request body is over the limit")


@pytest.mark.parametrize("side, phrase", [
    (5000, "5000x5000 = 25000000 pixels, over the limit of 16777216 pixels"),  # our limit
    (100_000, "refused as a decompression bomb"),  # 10^10 pixels (30 GB decoded): PIL refuses it first
])
def test_too_many_pixels_is_413_without_decoding(client, side, phrase):
    _assert_clear_4xx(_edit(client, _png_header_only(side, side)), 413, phrase)


def test_pixel_limit_is_configurable(session, scene):
    with TestClient(create_app(ServeConfig(max_pixels=96 * 80 - 1), session=session)) as c:
        _assert_clear_4xx(_edit(c, _png(scene)), 413, "over the limit of 7679 pixels")


@pytest.mark.parametrize("box, phrase", [
    ("1,2,3", "has 3 values"),
    ("a,b,c,d", "is not an integer"),
    ("10,10,5,5", "inverted or empty"),
    ("0,0,97,10", "outside the image"),
])
def test_malformed_box_is_400(client, scene, box, phrase):
    _assert_clear_4xx(_edit(client, _png(scene), box=box), 400, phrase)


def test_blank_instruction_is_400(client, scene):
    _assert_clear_4xx(_edit(client, _png(scene), instruction="   "), 400, "instruction is empty")


def test_missing_fields_are_422(client, scene):
    r = client.post("/v1/edit", data={"instruction": "make it blue"})
    _assert_clear_4xx(r, 422, "missing or empty field 'image'")
    r = client.post("/v1/edit", files={"image": ("in.png", _png(scene), "image/png")})
    _assert_clear_4xx(r, 422, "missing or empty field 'instruction'")
    r = client.post("/v1/generate", data={})
    _assert_clear_4xx(r, 422, "missing or empty field 'prompt'")


@pytest.mark.parametrize("field, value, phrase", [
    ("steps", "0", "greater than or equal to 1"),
    ("steps", "51", "less than or equal to 50"),
    ("steps", "many", "valid integer"),
    ("seed", "-1", "greater than or equal to 0"),
    ("seed", str(2**64), "less than or equal to"),
])
def test_out_of_range_fields_are_422(client, scene, field, value, phrase):
    _assert_clear_4xx(_edit(client, _png(scene), **{field: value}), 422, phrase)


def test_huge_text_field_is_refused(client, scene):
    r = _edit(client, _png(scene), instruction="x" * 5000)
    _assert_clear_4xx(r, 422, "at most 1000 characters")
    assert len(r.content) < 1000  # the value is not echoed back
    r = _edit(client, _png(scene), instruction="x" * 2_000_000)  # over the multipart parser's part limit
    _assert_clear_4xx(r, 400, "the form could not be parsed. POST /v1/edit takes multipart/form-data")


def test_json_body_is_422_naming_the_form(client):
    r = client.post("/v1/edit", json={"instruction": "make it blue", "image": "/etc/passwd"})
    _assert_clear_4xx(r, 422, "multipart/form-data")


# --------------------------------------------------------------------------- queue, timeout


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the server's queue to fill")
        time.sleep(0.01)


def test_full_queue_gives_503_with_retry_after(session, scene):
    png = _png(scene)
    with TestClient(create_app(ServeConfig(max_queue=1), session=session)) as c:
        worker = c.app.state.worker
        hold = threading.Event()
        held = worker.submit(hold.wait)  # the worker thread is busy until hold is set
        queued: dict = {}
        t = threading.Thread(target=lambda: queued.setdefault("r", _edit(c, png)))
        t.start()
        try:
            _wait_for(lambda: worker.admitted == 2)  # the running job and one real edit waiting
            r = _edit(c, png)
            _assert_clear_4xx(r, 503, "the server is busy")
            assert int(r.headers["retry-after"]) >= 1
            assert c.get("/healthz").json()["refused"] == 1
        finally:
            hold.set()
            t.join(60)
        held.result(5)
        assert queued["r"].status_code == 200, queued["r"].text  # the queued edit still ran
        _wait_for(lambda: worker.admitted == 0)
        assert _edit(c, png).status_code == 200  # slots are given back


def test_request_timeout_gives_504_and_frees_the_slot(session, scene):
    with TestClient(create_app(ServeConfig(max_queue=2, timeout_s=0.3), session=session)) as c:
        worker = c.app.state.worker
        hold = threading.Event()
        held = worker.submit(hold.wait)
        try:
            r = _edit(c, _png(scene))
            _assert_clear_4xx(r, 504, "timed out after 0.3 s while waiting in the queue")
            assert worker.admitted == 1  # the timed-out edit was dropped before it started
        finally:
            hold.set()
        held.result(5)
        _wait_for(lambda: worker.admitted == 0)


# --------------------------------------------------------------------------- CORS, command line


def test_cors_is_closed_by_default(client):
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200
    assert not any(k.lower().startswith("access-control-") for k in r.headers)
    r = client.options("/v1/edit", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers


def test_cors_origin_opens_only_that_origin(session):
    config = ServeConfig(cors_origins=("http://localhost:3000",))
    with TestClient(create_app(config, session=session)) as c:
        ok = c.get("/healthz", headers={"Origin": "http://localhost:3000"})
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-qk-timings" in ok.headers["access-control-expose-headers"].lower()
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("argv, phrase", [
    (["--bundle", "no/such/bundle"], "does not exist"),
    (["--cors-origin", "*"], "would let any web page"),
    (["--max-queue", "-1"], "max_queue=-1"),
    (["--max-upload-bytes", "0"], "max_upload_bytes=0"),
    (["--max-connections", "4"], "below --max-queue + 2"),
])
def test_qk_serve_errors_are_one_line_with_status_2(capsys, argv, phrase):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and phrase in err, err


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_qk_serve_refuses_a_port_out_of_range(capsys, port):
    # before: uvicorn's OverflowError traceback
    with pytest.raises(SystemExit) as exit_:
        main(["--port", port])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --port" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bodies, uploads and fields


def _corrupt_png(scene) -> bytes:
    """IDAT garbage behind a valid CRC: Pillow's first load() fails, a second one passes."""
    good = _png(scene)
    i = good.index(b"IDAT")
    n = struct.unpack(">I", good[i - 4:i])[0]
    body = b"\x78\x9c" + bytes(range(256))[: n - 2]
    return good[:i - 4] + struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body)) + good[i + 8 + n:]


def test_a_corrupt_png_is_400_and_never_queues(client, scene):
    """Before: the orientation step decoded the image inside a broad except, the later load passed,
    and the server edited a half-decoded image (200); truncated uploads took queue slots."""
    worker = client.app.state.worker
    before = worker.completed
    _assert_clear_4xx(_edit(client, _corrupt_png(scene)), 400, "truncated or corrupt")
    png = _png(scene)
    _assert_clear_4xx(_edit(client, png[: len(png) * 3 // 4]), 400, "truncated or corrupt")
    assert worker.completed == before and worker.admitted == 0


@pytest.mark.parametrize("field", ["steps", "seed", "box"])
def test_empty_optional_fields_are_422(client, scene, field):
    """Before: steps="" was read as absent and the edit ran (200)."""
    _assert_clear_4xx(_edit(client, _png(scene), **{field: ""}), 422, f"missing or empty field '{field}'")


def test_form_fields_that_are_not_utf8_are_422(client, scene):
    """Before: the form parser read them as Latin-1 and the edit ran (200)."""
    r = client.post("/v1/edit", files={"image": ("in.png", _png(scene), "image/png"),
                                       "instruction": (None, b"make it \xff\xfe blue"), "steps": (None, b"2")})
    _assert_clear_4xx(r, 422, "field 'instruction' is not UTF-8 text")
    r = client.post("/v1/generate", content=b"prompt=a%FFcircle", headers={"Content-Type": "application/x-www-form-urlencoded"})
    _assert_clear_4xx(r, 422, "not UTF-8 text")
    r = client.post("/v1/edit", files={"image": ("in.png", _png(scene), "image/png"),
                                       "instruction": (None, "\u200b\u200b".encode()), "steps": (None, b"2")})
    _assert_clear_4xx(r, 400, "no visible character")


def _serve_in_thread(session, **limits):
    import socket

    import uvicorn

    app = create_app(ServeConfig(**limits), session=session)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, port


def _read_reply(sock) -> bytes:
    """The whole reply of a server that closes the connection after it (headers and body may
    arrive in separate packets)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_gets_408_and_uploads_in_flight_are_bounded(session):
    """Before: a request announcing 200 KB and sending 150 bytes held its connection for 30 s and more."""
    import socket

    server, thread, port = _serve_in_thread(session, body_timeout_s=1.0, timeout_s=10.0, max_uploads=2)
    head = (b"POST /v1/edit HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 200000\r\n\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(head + b"x" * 150)
            answer = _read_reply(s)
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled after 150 bytes" in answer, answer
        assert waited < 5, waited
        socks = []
        try:
            for _ in range(3):
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                c.sendall(head + b"x" * 10)
                socks.append(c)
                time.sleep(0.2)
            third = _read_reply(socks[-1])
        finally:
            for c in socks:
                c.close()
        assert third.startswith(b"HTTP/1.1 503") and b"--max-uploads 2" in third, third
    finally:
        server.should_exit = True
        thread.join(timeout=10)
