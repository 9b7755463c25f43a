"""`SessionWorker`: one `EditSession`, one thread, a bounded queue in front of it.

    worker = SessionWorker(session, max_queue=8, timeout_s=60)
    result, queue_ms = await worker.run(session.edit, image, "make the red circle blue")

- At most `max_queue` requests wait behind the one running (`limit = max_queue + 1` admitted in
  all). A request arriving when that many are admitted is refused at once with `QueueFull`,
  which carries a Retry-After estimate (seconds: the admitted jobs times the recent mean job
  time, rounded up, at least 1). Nothing else waits anywhere: there is no unbounded backlog.
- Jobs run one at a time on a single thread (the session serialises calls anyway; one thread
  keeps the backend's per-graph state on one OS thread and its memory bounded).
- `timeout_s` bounds queue wait plus run time. A job still waiting when its time is up is
  dropped before it starts; a job already running cannot be interrupted (the backends have no
  cancel), so it finishes and keeps its slot until then: the bound counts work, not responses.

No web framework here: `submit` is thread-safe and synchronous, `run` is its asyncio wrapper.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

EMA_WEIGHT = 0.2  # weight of the newest job in the mean job time behind Retry-After


class QueueFull(Exception):
    """Every slot is taken; try again after `retry_after_s` seconds."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the server is busy: {limit} requests are already running or queued (--max-queue {limit - 1}); "
            f"retry after {retry_after_s} s"
        )


class JobTimeout(Exception):
    """The job did not finish within the per-request timeout."""

    def __init__(self, timeout_s: float, started: bool):
        self.timeout_s = timeout_s
        where = "while running" if started else "while waiting in the queue"
        super().__init__(
            f"the request timed out after {timeout_s:g} s {where}; retry later, ask for fewer steps, "
            f"or start the server with a larger --timeout"
        )


class SessionWorker:
    """Runs callables one at a time on one thread, with at most `max_queue` waiting."""

    def __init__(self, max_queue: int, timeout_s: float):
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}; must be 0 or more")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s}; must be positive")
        self.max_queue = max_queue
        self.timeout_s = float(timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qk-session")
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_job_s: float | None = None
        self.completed = 0
        self.refused = 0
        self.timed_out = 0

    @property
    def limit(self) -> int:
        """Requests admitted at most: the running one plus `max_queue` waiting."""
        return self.max_queue + 1

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        with self._lock:
            return self._admitted

    def retry_after_s(self) -> int:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        mean = self._mean_job_s if self._mean_job_s is not None else 1.0
        return max(1, math.ceil(self._admitted * mean))

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._admitted -= 1

    def _record(self, seconds: float) -> None:
        with self._lock:
            self.completed += 1
            m = self._mean_job_s
            self._mean_job_s = seconds if m is None else (1 - EMA_WEIGHT) * m + EMA_WEIGHT * seconds

    def submit(self, fn, *args, **kwargs) -> Future:
        """Admit `fn(*args, **kwargs)` or raise `QueueFull`. The future's result is
        `(fn's result, milliseconds spent waiting in the queue)`."""
        with self._lock:
            if self._admitted >= self.limit:
                self.refused += 1
                raise QueueFull(self.limit, self._retry_after_locked())
            self._admitted += 1
        enqueued = time.perf_counter()

        def job():
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs), (started - enqueued) * 1000.0
            finally:
                self._record(time.perf_counter() - started)

        try:
            future = self._executor.submit(job)
        except BaseException:  # executor shut down: give the slot back
            self._release(None)
            raise
        future.add_done_callback(self._release)  # also runs when a waiting job is cancelled
        return future

    async def run(self, fn, *args, **kwargs):
        """`submit`, then wait at most `timeout_s`: -> (result, queue wait in ms)."""
        future = self.submit(fn, *args, **kwargs)
        try:
            # on timeout wait_for cancels the wrapper, which cancels `future` if it has not started
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            dropped = future.cancel()  # True when it was still waiting; a running job finishes
            with self._lock:
                self.timed_out += 1
            raise JobTimeout(self.timeout_s, started=not dropped) from None

    def close(self) -> None:
        """Drop waiting jobs, wait for the running one, stop the thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)
