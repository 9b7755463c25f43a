"""The editor page in a real browser: Playwright driving Debian's Chromium (headless) against
qk-serve on a free localhost port, with the shipped INT8 bundle.

The user's path: load the page, load the sample scene, drag a box on the canvas, type an
instruction, press Edit, get the edited image. Then the check a user would make: outside the
box the picture is unchanged. The runtime keeps the source's own pixels outside the CMG's gate,
and the gate is per token (8 x 8 pixels of the 64 px model), so "outside the box" means outside
the box rounded outwards to the 8 px token grid; there the result must equal the source within
1 level of 8 bits (measured: exactly equal). Then "Use as source" and "Undo" walk the history.

Skips only when no Chromium is found (install: `apt-get install -y chromium`). The screenshot
is left in the test's tmp dir (its path is printed).
"""
from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'query-kontext[serve]')")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")

import uvicorn  # noqa: E402

from qk_runtime import EditSession  # noqa: E402
from qk_runtime.serve import ServeConfig, create_app  # noqa: E402
from qk_runtime.session import default_bundle_dir  # noqa: E402

TOKEN_PX = 8  # the default bundle: 64 px images, 8 x 8 tokens (latent 16, patch 2, factor 4)
TOLERANCE = 1  # uint8 levels outside the box
BOX = (45, 31, 60, 46)  # the sample scene's orange circle, x1 and y1 exclusive
INSTRUCTION = "make the orange circle blue"


def _chromium() -> str:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Chromium not found (looked for chromium on PATH and /usr/bin/chromium); "
                "install it with: apt-get install -y chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    _chromium()  # skip before starting anything
    session = EditSession(default_bundle_dir(), backend="ort-cpu", threads=1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(), session=session), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="qk-serve-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"qk-serve did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        session.close()


def _outside_token_box(box, side: int, token: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    X0, Y0 = x0 // token * token, y0 // token * token
    X1, Y1 = -(-x1 // token) * token, -(-y1 // token) * token
    mask = np.ones((side, side), bool)
    mask[Y0:Y1, X0:X1] = False
    return mask


def test_page_edits_inside_the_dragged_box_only(server_url, tmp_path):
    source = np.asarray(Image.open(resources.files("qk_runtime.serve") / "static" / "sample.png").convert("RGB"))
    side = source.shape[0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server_url + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=15_000)
            assert "ort-cpu" in page.inner_text("#server-info")

            page.click("#sample")
            page.wait_for_selector("body[data-state=ready]", timeout=15_000)
            page.click("#clear-box")  # the sample suggests a box; draw our own
            assert page.inner_text("#box-text").startswith("none")

            # drag from the centre of pixel (x0, y0) to the centre of pixel (x1 - 1, y1 - 1)
            canvas = page.locator("#source").bounding_box()
            scale = canvas["width"] / side
            x0, y0, x1, y1 = BOX
            page.mouse.move(canvas["x"] + (x0 + 0.5) * scale, canvas["y"] + (y0 + 0.5) * scale)
            page.mouse.down()
            page.mouse.move(canvas["x"] + (x1 - 0.5) * scale, canvas["y"] + (y1 - 0.5) * scale, steps=8)
            page.mouse.up()
            assert page.inner_text("#box-text") == ",".join(map(str, BOX))

            page.fill("#instruction", INSTRUCTION)
            page.click("#edit")
            page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=120_000)
            assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")

            # the PNG the page received and shows
            png = bytes(page.evaluate(
                "async () => Array.from(new Uint8Array(await (await fetch(document.getElementById('result').src)).arrayBuffer()))"))
            result = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert result.shape == source.shape
            diff = np.abs(result.astype(np.int16) - source.astype(np.int16)).max(axis=-1)
            outside = _outside_token_box(BOX, side, TOKEN_PX)
            assert diff[outside].max() <= TOLERANCE, f"outside the box, up to {diff[outside].max()} levels changed"
            assert (diff[~outside] > 0).any(), "nothing changed: the page shows the source, not an edit"

            # the latency table: every stage, and the page's round trip against the runtime's time
            table = page.inner_text("#timings")
            for stage in ("queue wait", "image encoder", "text encoder", "cross-modal gate", "decoder (20 steps)",
                          "image decoder", "runtime total", "round trip (this page)"):
                assert stage in table, table
            last = page.evaluate("window.qkLast")
            assert last["roundTripMs"] >= last["timings"]["total"] > 0
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}; round trip {last['roundTripMs']:.0f} ms, runtime {last['timings']['total']:.0f} ms")

            # history: the result becomes the source, Undo goes back to the sample
            page.click("#apply")
            page.wait_for_selector("body[data-state=ready]")
            assert page.locator("#history li").count() == 2
            page.click("#undo")
            page.wait_for_selector("body[data-state=ready]")
            assert page.locator("#history li").count() == 1
            assert page.is_disabled("#undo")
            assert not errors, errors
        finally:
            browser.close()
