"""Load test of qk-serve: a bounded burst of edits, latency percentiles, errors, memory, overhead.

    python benchmarks/serve_load.py [--bundle engines/default/int8] [--requests 200] [--concurrency 16]
                                    [--max-queue 8] [--sequential 20] [--page-edits 10]
                                    [--json benchmarks/results/cpu-2core/serve_load.json]
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--server-pid PID] ...   # a running server

Phases, one run:
1. start `qk-serve` (`python -m qk_runtime.serve.app`, access log off) on a free localhost
   port, unless --url names a running one; 3 warm-up edits; the server's RSS (VmRSS of
   /proc/<pid>/status);
2. overhead: `--sequential` edits one at a time: the client's HTTP round trip against the
   runtime's own `total` (from X-QK-Timings, measured inside the server around
   `EditSession.edit`) and the server's `server_total`; HTTP overhead = (round trip - runtime
   total) / runtime total, per edit, median reported;
3. page: `--page-edits` edits through the editor page in headless Chromium (Playwright),
   the page's round trip (fetch to decoded image) against the runtime's total; skipped with the
   reason when Playwright or Chromium is missing;
4. burst: `--requests` edits from `--concurrency` client threads. A 503 is the queue bound doing
   its job (deliberate when --max-queue + 1 < --concurrency): it is counted apart, and the
   client waits Retry-After (at most --max-retry-wait s) before its next request, as a
   well-behaved client does (--no-retry-after: at once). Every other non-200 is an error;
   latency percentiles are over the 200s; throughput = 200s per second of the burst;
5. the server's RSS after, its growth and peak (VmHWM), then the server is stopped.
Every edit is the sample scene with its instruction and box, seed = request number, the bundle's
default steps unless --steps. Prints a summary and writes the JSON.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cpu-2core" / "serve_load.json"


# --------------------------------------------------------------------------- HTTP client


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, media) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {media}\r\n\r\n").encode()
        parts.append(head + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, url: str, png: bytes, instruction: str, box: str, steps: int | None):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.png, self.instruction, self.box, self.steps = png, instruction, box, steps

    def get_json(self, path: str) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def edit(self, seed: int) -> dict:
        """One edit -> {status, ms (client round trip), timings (if 200), retry_after, detail}."""
        fields = {"instruction": self.instruction, "box": self.box, "seed": str(seed)}
        if self.steps is not None:
            fields["steps"] = str(self.steps)
        body, ctype = multipart(fields, {"image": ("scene.png", self.png, "image/png")})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/edit", body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            data = resp.read()
            ms = (time.perf_counter() - t0) * 1000.0
            out = {"status": resp.status, "ms": ms, "retry_after": resp.getheader("Retry-After")}
            if resp.status == 200:
                out["timings"] = json.loads(resp.getheader("X-QK-Timings"))
            else:
                try:
                    out["detail"] = json.loads(data).get("detail")
                except ValueError:
                    out["detail"] = data[:200].decode("latin-1")
            return out
        except OSError as exc:  # refused or reset connection: no HTTP status
            return {"status": f"connection error: {type(exc).__name__}", "ms": (time.perf_counter() - t0) * 1000.0}
        finally:
            conn.close()


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int | None) -> dict | None:
    if pid is None:
        return None
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
    return fields


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "qk_runtime.serve.app", "--port", str(port), "--max-queue", str(args.max_queue),
           "--backend", args.backend, "--no-access-log", "--log-level", "warning"]
    if args.bundle is not None:
        cmd += ["--bundle", str(args.bundle)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve_load: qk-serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("serve_load: qk-serve did not open its port within 120 s")
            time.sleep(0.2)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- phases


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "mean": statistics.fmean(values) if values else None, "max": max(values) if values else None}


def overhead_phase(client: Client, n: int, seed0: int) -> dict:
    rows = []
    for i in range(n):
        r = client.edit(seed0 + i)
        if r["status"] != 200:
            raise SystemExit(f"serve_load: sequential edit {i} got {r['status']}: {r.get('detail')}")
        t = r["timings"]
        rows.append({"round_trip": r["ms"], "runtime_total": t["total"], "server_total": t["server_total"]})
    over = [100.0 * (x["round_trip"] - x["runtime_total"]) / x["runtime_total"] for x in rows]
    return {
        "edits": n,
        "round_trip_ms": summary([x["round_trip"] for x in rows]),
        "runtime_total_ms": summary([x["runtime_total"] for x in rows]),
        "server_total_ms": summary([x["server_total"] for x in rows]),
        "http_overhead_ms": summary([x["round_trip"] - x["runtime_total"] for x in rows]),
        "http_overhead_percent": summary(over),
    }


def page_phase(url: str, n: int, instruction: str, box: tuple[int, ...]) -> dict:
    if n <= 0:
        return {"skipped": "--page-edits 0"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed (pip install 'query-kontext[dev]')"}
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if chromium is None:
        return {"skipped": "chromium not found (apt-get install -y chromium)"}
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            page.click("#sample")  # the sample's own instruction and box are filled in
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            page.fill("#instruction", instruction)
            if page.inner_text("#box-text") != ",".join(map(str, box)):
                raise SystemExit(f"serve_load: the page's sample box is {page.inner_text('#box-text')}, expected {box}")
            for i in range(n + 1):  # the first is a warm-up of the page itself
                page.fill("#seed", str(5000 + i))
                page.click("#edit")
                page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=300_000)
                if page.get_attribute("body", "data-state") != "done":
                    raise SystemExit(f"serve_load: page edit failed: {page.inner_text('#status')}")
                last = page.evaluate("window.qkLast")
                if i:
                    rows.append({"round_trip": last["roundTripMs"], "runtime_total": last["timings"]["total"]})
                page.evaluate("document.body.dataset.state = 'ready'")
        finally:
            browser.close()
    over = [100.0 * (x["round_trip"] - x["runtime_total"]) / x["runtime_total"] for x in rows]
    return {"edits": n, "browser": chromium,
            "round_trip_ms": summary([x["round_trip"] for x in rows]),
            "runtime_total_ms": summary([x["runtime_total"] for x in rows]),
            "page_overhead_percent": summary(over)}


def burst_phase(client: Client, n: int, concurrency: int, honour_retry_after: bool, max_wait: float) -> dict:
    lock = threading.Lock()
    next_index = [0]
    results: list[dict] = []

    def worker():
        while True:
            with lock:
                i = next_index[0]
                if i >= n:
                    return
                next_index[0] += 1
            r = client.edit(10_000 + i)
            with lock:
                results.append(r)
            if r["status"] == 503 and honour_retry_after:
                time.sleep(min(float(r.get("retry_after") or 1), max_wait))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    by_status = Counter(str(r["status"]) for r in results)
    refused = [r for r in results if r["status"] == 503]
    other_errors = {k: v for k, v in by_status.items() if k not in ("200", "503")}
    details = sorted({str(r.get("detail")) for r in results if r["status"] != 200})[:5]
    return {
        "requests": n, "concurrency": concurrency, "honour_retry_after": honour_retry_after,
        "wall_s": wall, "status_counts": dict(by_status),
        "ok": len(ok), "refused_503_queue_full": len(refused), "other_errors": other_errors,
        "other_5xx": sum(v for k, v in other_errors.items() if k.isdigit() and k.startswith("5")),
        "error_details": details,
        "latency_ms_200": summary([r["ms"] for r in ok]),
        "queue_wait_ms_200": summary([r["timings"]["queue_wait"] for r in ok]),
        "runtime_total_ms_200": summary([r["timings"]["total"] for r in ok]),
        "latency_ms_503": summary([r["ms"] for r in refused]),
        "retry_after_s": sorted(Counter(r.get("retry_after") for r in refused).items(), key=lambda kv: str(kv[0])),
        "throughput_ok_per_s": len(ok) / wall,
        "throughput_all_per_s": len(results) / wall,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_load", description="Load test of qk-serve (see the module doc).")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--backend", default="auto", help="the server's --backend (default auto)")
    p.add_argument("--threads", type=int, default=None, help="the server's --threads (default: all cores)")
    p.add_argument("--url", default=None, help="test a running server instead of starting one")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for its RSS")
    p.add_argument("--max-queue", type=int, default=8, help="the started server's --max-queue (default 8)")
    p.add_argument("--requests", type=int, default=200, help="edits in the burst (default 200)")
    p.add_argument("--concurrency", type=int, default=16, help="client threads in the burst (default 16)")
    p.add_argument("--sequential", type=int, default=20, help="one-at-a-time edits for the overhead (default 20)")
    p.add_argument("--page-edits", type=int, default=10, help="edits through the page in Chromium (default 10; 0: skip)")
    p.add_argument("--steps", type=int, default=None, help="steps per edit (default: the bundle's)")
    p.add_argument("--no-retry-after", dest="retry_after", action="store_false",
                   help="after a 503, send the next request at once instead of waiting Retry-After")
    p.add_argument("--max-retry-wait", type=float, default=5.0, help="longest Retry-After wait honoured, s (default 5)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.sequential < 1:
        p.error("--requests, --concurrency and --sequential must be at least 1")

    static = resources.files("qk_runtime.serve") / "static"
    png = (static / "sample.png").read_bytes()
    meta = json.loads((static / "sample.json").read_text())
    box = ",".join(map(str, meta["box"]))

    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        proc, url = start_server(args)
        pid = proc.pid
    load_before = os.getloadavg()
    try:
        client = Client(url, png, meta["instruction"], box, args.steps)
        health = client.get_json("/healthz")
        for i in range(3):  # warm-up: first-call allocations, the empty-text encoding
            client.edit(i)
        rss_before = rss_mb(pid)
        overhead = overhead_phase(client, args.sequential, 100)
        page = page_phase(url, args.page_edits, meta["instruction"], tuple(meta["box"]))
        burst = burst_phase(client, args.requests, args.concurrency, args.retry_after, args.max_retry_wait)
        time.sleep(1.0)  # let the last responses be freed
        rss_after = rss_mb(pid)
        health_after = client.get_json("/healthz")
    finally:
        if proc is not None:
            stop_server(proc)
    load_after = os.getloadavg()

    growth = None if rss_before is None else rss_after["VmRSS"] - rss_before["VmRSS"]
    result = {
        "benchmark": "serve_load",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": load_after,
                    "note": "shared 2-core CPU; a training job ran alongside (see loadavg)"},
        "server": {"url": "started by this script" if proc is not None else url, "backend": health["backend"],
                   "bundle": health["bundle"], "precision": health.get("precision"), "limits": health["limits"],
                   "threads": args.threads},
        "edit": {"instruction": meta["instruction"], "box": meta["box"], "image": "qk_runtime/serve/static/sample.png (64x64)",
                 "steps": args.steps or health["default_steps"]},
        "overhead_sequential": overhead,
        "page": page,
        "burst": burst,
        "memory_mib": {"rss_before": rss_before, "rss_after": rss_after, "rss_growth": growth},
        "server_counters_after": {k: health_after[k] for k in ("completed", "refused", "timed_out")},
        "requests_served_total": health_after["completed"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    o, b = overhead, burst
    print(f"serve_load: {health['bundle']} ({health.get('precision')}) on {health['backend']}, {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.1f}")
    print(f"  sequential {o['edits']}: HTTP round trip p50 {o['round_trip_ms']['p50']:.0f} ms vs runtime {o['runtime_total_ms']['p50']:.0f} ms "
          f"-> overhead p50 {o['http_overhead_ms']['p50']:.1f} ms ({o['http_overhead_percent']['p50']:.1f} %)")
    if "skipped" in page:
        print(f"  page: skipped ({page['skipped']})")
    else:
        print(f"  page {page['edits']}: round trip p50 {page['round_trip_ms']['p50']:.0f} ms vs runtime "
              f"{page['runtime_total_ms']['p50']:.0f} ms -> overhead p50 {page['page_overhead_percent']['p50']:.1f} %")
    lat = b["latency_ms_200"]
    print(f"  burst {b['requests']} x {b['concurrency']} clients in {b['wall_s']:.1f} s: {b['ok']} ok, "
          f"{b['refused_503_queue_full']} 503 (queue full, deliberate), other errors {b['other_errors'] or 'none'}")
    if lat["n"]:
        print(f"  latency of 200s p50/p90/p99 {lat['p50']:.0f}/{lat['p90']:.0f}/{lat['p99']:.0f} ms, "
              f"throughput {b['throughput_ok_per_s']:.2f} edits/s")
    if growth is not None:
        print(f"  server RSS {rss_before['VmRSS']:.0f} -> {rss_after['VmRSS']:.0f} MiB (growth {growth:+.1f} MiB, "
              f"peak {rss_after['VmHWM']:.0f} MiB) after {health_after['completed']} edits")
    print(f"  wrote {args.json}")
    return 0 if b["other_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
