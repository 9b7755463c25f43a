"""A corpus of malformed inputs, run against every consumer that reads them.

Each case hands one malformed thing (a bundle, an image, a number, a path, an upload, a text) to
one consumer: the Python API, `qk-edit` / `qk-generate`, `qk-triton`, `qk-export --check /
--verify`, `qk-train`, `qk-eval`, `qk-serve` (in-process, and over a real socket for slow
bodies) or the C++ `qk_edit_cpp`. A case ends in one of:

- `clear error`: refused by one of the project's errors (exit status 1 or 2 with a one-line
  message, an HTTP 4xx/503 JSON `detail`, a `QKRuntimeError` / `ConfigError` / ...);
- `traceback`: any other exception, a message that is only an exception class, an HTTP 500, or
  the C++ tool's internal error (status 3);
- `wrongly accepted`: the consumer went on (exit 0, HTTP 200), or a file outside the bundle was
  opened because of the manifest (watched with inotify);
- `crash or hang`: a signal, or no answer within the case's time limit;
- `lost or damaged output`: a file of the workspace that existed before the case (an input
  image, a bundle, a checkpoint) was changed, replaced or removed.

Every case is malformed, so the goal is `clear error` for all. This module is the harness:
outcomes, the workspace, `run_cases` (the results) and `summary_line` (the one-line count). The
cases themselves are in `bad_input_cases.py` (`all_cases`; `fast_cases`, the CI subset run by
tests/qk_bench/test_bad_inputs.py); `benchmarks/bad_input_corpus.py` runs them all.

The workspace is a temporary folder: hard links of the shipped bundles and checkpoint (never
written: a case that must change a file writes a new one in its own folder), a few images, and a
"secret" file outside every bundle whose sha256 the path cases put into manifests.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINES = REPO_ROOT / "engines" / "default"
CPP_TOOL = Path(os.environ.get("QK_CPP_BUILD_DIR", REPO_ROOT / "runtime" / "cpp" / "build")) / "qk_edit_cpp"
OUTCOMES = ("clear error", "traceback", "wrongly accepted", "crash or hang", "lost or damaged output")
CLASSES = ("bundle paths", "outputs", "images", "numbers", "server", "errors")
STEPS = "2"  # every edit that runs at all runs 2 steps: the corpus is about refusals, not pixels
CASE_TIMEOUT_S = 60.0


class CaseTimeout(BaseException):
    """Raised by SIGALRM in a case that ran past its limit (a BaseException: no `except Exception`
    in the code under test swallows it)."""


@dataclass
class Case:
    name: str
    klass: str  # one of CLASSES
    consumer: str
    run: Callable[["Workspace", Path], "Result"]
    fast: bool = False
    watch_secret: bool = False  # fail if the workspace's secret file is opened


@dataclass
class Result:
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    name: str = ""
    klass: str = ""
    consumer: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "class": self.klass, "consumer": self.consumer, "outcome": self.outcome,
                "detail": self.detail[:400], "seconds": round(self.seconds, 3)}


def project_errors() -> tuple[type, ...]:
    """The exception classes the project raises on purpose."""
    from qk_runtime.errors import QKRuntimeError

    errors: list[type] = [QKRuntimeError]
    for module, name in (("qk_train.config", "ConfigError"), ("qk_train.checkpoint", "CheckpointError"),
                         ("qk_train.data.manifest", "DataError"), ("qk_export.bundle", "ExportError"),
                         ("qk_export.trt_check", "ReadinessError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:  # the train / export extras are optional
            pass
    return tuple(errors)


# --------------------------------------------------------------------------- outcome of one call

# "error: SomeError: ..." - an exception printed by its class name only, not one of the project's messages
UNWRAPPED = re.compile(r"error: (?:internal: )?(?:[A-Za-z_]+\.)*[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+: ")


def classify_message(rc: int, text: str) -> Result:
    """A command line's exit status and output -> the outcome."""
    if rc == 0:
        return Result("wrongly accepted", text.strip()[-300:])
    if "Traceback (most recent call last)" in text or UNWRAPPED.search(text):
        return Result("traceback", text.strip()[-400:])
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if rc in (1, 2) and lines:
        return Result("clear error", lines[-1][:400] if "error" not in text else
                      next((ln for ln in lines if "error" in ln), lines[-1])[:400])
    if rc < 0:
        return Result("crash or hang", f"killed by signal {-rc}: {text.strip()[-300:]}")
    return Result("traceback", f"exit status {rc}: {text.strip()[-300:]}")


def call_api(fn: Callable[[], object]) -> Result:
    """A Python API call that should raise one of the project's errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except CaseTimeout:
        raise
    except project_errors() as exc:
        return Result("clear error", f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # noqa: BLE001 - this is what the corpus counts
        return Result("traceback", f"{type(exc).__name__}: {str(exc)[:300]}")
    return Result("wrongly accepted", "returned normally")


def call_cli(main: Callable[[list[str]], int], argv: list[str]) -> Result:
    """A command's `main(argv)` in this process, its stdout and stderr captured."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's own refusals
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CaseTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - an exception out of main() is a traceback
        return Result("traceback", f"{type(exc).__name__}: {str(exc)[:300]}")
    return classify_message(int(rc or 0), out.getvalue())


def call_process(argv: list[str], timeout_s: float = 60.0, stdin: bytes | None = None) -> Result:
    try:
        run = subprocess.run(argv, capture_output=True, timeout=timeout_s, input=stdin)
    except subprocess.TimeoutExpired:
        return Result("crash or hang", f"no exit within {timeout_s:g} s")
    text = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    if run.returncode == 3:  # qk_edit_cpp's "error: internal"
        return Result("traceback", text.strip()[-400:])
    return classify_message(run.returncode, text)


def call_module(module: str, argv: list[str], timeout_s: float = CASE_TIMEOUT_S - 10) -> Result:
    """`python -m module argv` in a process of its own: the torch commands (qk-train, qk-eval,
    qk-export) can crash natively (a thread count torch's OpenMP cannot start), and a crash there
    must be counted, not end the corpus."""
    return call_process([sys.executable, "-m", module, *argv], timeout_s=timeout_s)


def classify_http(response) -> Result:
    status = response.status_code
    body = response.text
    if status == 200:
        return Result("wrongly accepted", f"HTTP 200 ({len(response.content)} bytes)")
    if "Traceback" in body or status >= 500 and status not in (503, 504):
        return Result("traceback", f"HTTP {status}: {body[:300]}")
    try:
        detail = response.json()["detail"]
    except Exception:  # noqa: BLE001
        return Result("traceback", f"HTTP {status} without a JSON detail: {body[:300]}")
    return Result("clear error", f"HTTP {status}: {detail}"[:400])


# --------------------------------------------------------------------------- watching a file


class OpenWatch:
    """inotify on one file: did anything open or read it since `start`? (Linux; elsewhere the
    watch reports nothing.)"""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        try:
            self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            self.libc = None

    def __enter__(self):
        if self.libc is not None:
            self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
            if self.fd >= 0:
                self.libc.inotify_add_watch(self.fd, str(self.path).encode(), self.IN_ACCESS | self.IN_OPEN)
        return self

    def opened(self) -> bool:
        if self.fd < 0:
            return False
        try:
            return len(os.read(self.fd, 4096)) > 0
        except BlockingIOError:
            return False

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)


# --------------------------------------------------------------------------- files


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def put(path: Path, data: bytes | str) -> Path:
    """Write a new file (unlinking first, so a hard link to a shipped file is never written through)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def link_tree(src: Path, dst: Path) -> Path:
    """A copy of a folder made of hard links (no bytes copied; files are never written through)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file():
            os.link(p, dst / p.name)
    return dst


def snapshot(folders) -> dict[str, tuple]:
    """path -> (size, mtime_ns, inode) of every file under `folders`."""
    out = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for n in names:
                p = os.path.join(root, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(arr: np.ndarray, **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def scene() -> np.ndarray:
    """48 x 40 slate scene with a red square (not the model's side: the resize is exercised)."""
    img = np.empty((40, 48, 3), np.uint8)
    img[:] = (112, 112, 120)
    img[10:28, 12:30] = (220, 40, 40)
    img[::3, ::5] = (100, 104, 111)  # some texture, so the PNG has more than one IDAT byte run
    return img


def bad_images() -> dict[str, bytes]:
    """Malformed image files by name (each refused by the runtimes)."""
    from PIL import Image

    good = png_bytes(scene())
    i = good.index(b"IDAT")
    n = struct.unpack(">I", good[i - 4:i])[0]
    out: dict[str, bytes] = {}
    for frac in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97):
        out[f"png_truncated_{int(frac * 100)}pct"] = good[: int(len(good) * frac)]
    out["png_signature_only"] = good[:8]
    out["png_header_only"] = good[:33]
    out["png_no_iend"] = good[:-12]
    bad = bytearray(good)
    bad[i + 12] ^= 0xFF
    out["png_idat_bad_crc"] = bytes(bad)
    out["png_idat_garbage"] = good[:i - 4] + _chunk(b"IDAT", b"\x78\x9c" + bytes(range(256))[: max(n - 2, 8)]) + good[i + 8 + n:]
    out["png_broken_exif"] = good[:i - 4] + _chunk(b"eXIf", b"\x00\x00\x00garbage" * 4) + good[i - 4:]
    ihdr = good.index(b"IHDR")
    for name, (w, h) in {"png_zero_width": (0, 40), "png_bomb_100k": (100_000, 100_000), "png_bomb_20k": (20_000, 20_000)}.items():
        body = struct.pack(">II", w, h) + good[ihdr + 12: ihdr + 17]
        out[name] = good[:ihdr - 4] + _chunk(b"IHDR", body) + good[ihdr + 21:]
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, format="JPEG", quality=90)
    jpg = buf.getvalue()
    out["jpeg_truncated_half"] = jpg[: len(jpg) // 2]
    out["jpeg_soi_only"] = jpg[:2]
    out["jpeg_garbage_after_header"] = jpg[:200] + bytes(range(256)) * 4
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, format="GIF")
    out["gif_truncated"] = buf.getvalue()[: len(buf.getvalue()) // 2]
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, format="BMP")
    out["bmp_truncated"] = buf.getvalue()[: len(buf.getvalue()) // 2]
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, format="WEBP", lossless=True)
    out["webp_truncated"] = buf.getvalue()[: len(buf.getvalue()) // 2]
    out["text_file"] = b"this is not an image\n"
    out["empty_file"] = b""
    out["random_bytes"] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return out


# --------------------------------------------------------------------------- workspace


class Workspace:
    """Temporary folders, shared inputs and lazily opened shared consumers (one session, one app)."""

    def __init__(self, root: Path | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="qk-bad-inputs-", dir=root))
        self.shared = self.tmp / "shared"
        self.int8 = link_tree(ENGINES / "int8", self.shared / "bundles" / "int8")
        self.fp32 = link_tree(ENGINES / "fp32", self.shared / "bundles" / "fp32")
        self.checkpoint = link_tree(ENGINES / "checkpoint", self.shared / "checkpoint")
        self.image = put(self.shared / "in.png", png_bytes(scene()))
        self.secret = put(self.tmp / "outside" / "secret.txt", "a file no bundle may make a tool open\n" * 8)
        self.secret_sha = sha256(self.secret)
        self.bad = {name: put(self.shared / "images" / f"{name}.{name.split('_')[0] if name.split('_')[0] in ('png', 'jpeg', 'gif', 'bmp', 'webp') else 'png'}", data)
                    for name, data in bad_images().items()}
        self._session = None
        self._client = None
        self._server = None
        self._count = 0

    # -- per case
    def case_dir(self) -> Path:
        self._count += 1
        d = self.tmp / "cases" / f"{self._count:04d}"
        d.mkdir(parents=True)
        return d

    def bundle_copy(self, d: Path, which: str = "int8", sibling: bool = False) -> Path:
        """A hard-linked copy of a shipped bundle in the case folder (with its int8 sibling for fp32)."""
        src = self.int8 if which == "int8" else self.fp32
        out = link_tree(src, d / which)
        if which == "fp32" or sibling:
            link_tree(self.int8, d / "int8") if which != "int8" else None
        return out

    # -- shared consumers
    @property
    def session(self):
        if self._session is None:
            from qk_runtime import EditSession

            self._session = EditSession(self.int8, backend="ort-cpu", threads=1)
        return self._session

    @property
    def client(self):
        if self._client is None:
            from fastapi.testclient import TestClient
            from qk_runtime.serve import create_app

            app = create_app(_serve_config(body_timeout_s=1.0, timeout_s=20.0), session=self.session)
            self._client = TestClient(app, raise_server_exceptions=False)  # a 500 is counted, not raised
            self._client.__enter__()
        return self._client

    def server(self) -> tuple[str, int]:
        """A real uvicorn server (a thread) for cases that need a socket: slow or short bodies."""
        if self._server is None:
            import uvicorn
            from qk_runtime.serve import create_app

            app = create_app(_serve_config(body_timeout_s=1.0, timeout_s=5.0, max_uploads=2), session=self.session)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                                   access_log=False, lifespan="off"))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            for _ in range(200):
                if server.started:
                    break
                time.sleep(0.05)
            self._server = (server, thread, port)
        return "127.0.0.1", self._server[2]

    def close(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
        if self._server is not None:
            self._server[0].should_exit = True
            self._server[1].join(timeout=10)
        if self._session is not None:
            self._session.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _serve_config(**limits):
    """ServeConfig with these limits; a version without a limit gets the rest (the corpus also
    measures releases that predate some limits)."""
    from qk_runtime.serve import ServeConfig

    known = set(ServeConfig.__dataclass_fields__)
    return ServeConfig(**{k: v for k, v in limits.items() if k in known})


def run_case(ws: Workspace, case: Case, timeout_s: float = CASE_TIMEOUT_S) -> Result:
    d = ws.case_dir()
    watched = [ws.shared, d, ENGINES]
    t0 = time.perf_counter()
    before = None
    watch = OpenWatch(ws.secret) if case.watch_secret else contextlib.nullcontext()

    def on_alarm(signum, frame):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm) if threading.current_thread() is threading.main_thread() else None
    try:
        with watch as w:
            # the case builds its inputs first (not timed, not watched for damage), then runs
            runner = case.run(ws, d)
            before = snapshot(watched)
            if old is not None:
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                result = runner() if callable(runner) else runner
            finally:
                if old is not None:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            if case.watch_secret and w.opened():
                result = Result("wrongly accepted", f"opened {ws.secret}, outside the bundle; then: {result.outcome}: "
                                                    f"{result.detail}")
    except CaseTimeout:
        result = Result("crash or hang", f"no answer within {timeout_s:g} s")
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    if before is not None:
        after = snapshot(watched)
        damaged = sorted(p for p, st in before.items() if after.get(p) != st)
        if damaged:
            result = Result("lost or damaged output", f"changed or removed: {damaged[:3]}; the call: {result.outcome}: "
                                                      f"{result.detail}")
    result.seconds = time.perf_counter() - t0
    result.name, result.klass, result.consumer = case.name, case.klass, case.consumer
    return result


def summary_line(results: list[Result]) -> str:
    counts = {o: sum(r.outcome == o for r in results) for o in OUTCOMES}
    return (f"{len(results)} cases: clear error {counts['clear error']}, traceback {counts['traceback']}, "
            f"wrongly accepted {counts['wrongly accepted']}, crash or hang {counts['crash or hang']}, "
            f"lost or damaged output {counts['lost or damaged output']}")


def run_cases(cases: list[Case], ws: Workspace, progress: Callable[[Result], None] | None = None) -> list[Result]:
    results = []
    for case in cases:
        r = run_case(ws, case)
        results.append(r)
        if progress is not None:
            progress(r)
    return results


# =========================================================================== the cases
# Each builder returns Case objects; `run(ws, d)` prepares inputs in the case folder `d` and
# returns a zero-argument callable that makes the one call whose outcome counts.
