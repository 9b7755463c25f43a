"""Clocks and summaries.

CPUs are timed with `time.perf_counter` (monotonic, sub-microsecond). On GPUs `CudaClock` records
CUDA events on the current stream and reads the elapsed time after one synchronisation, so the
host's launch overhead is not mistaken for GPU time. `summarize` gives median, p90, p99, mean,
min and max of a list of samples (percentiles by linear interpolation, numpy's default; with
fewer than 100 samples p99 is close to the maximum, which the report says).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def now_ms() -> float:
    """Monotonic wall clock in milliseconds."""
    return time.perf_counter() * 1000.0


def summarize(samples: Sequence[float]) -> dict:
    """{n, median, p90, p99, mean, min, max} of `samples` (milliseconds); empty -> n 0 and None."""
    values = np.asarray([float(s) for s in samples], dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "median": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, clock=None) -> list[float]:
    """Call `fn` `warmup` times untimed, then `repeats` times; milliseconds per call."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; need at least 1")
    for _ in range(warmup):
        fn()
    if clock is not None:
        return clock.time(fn, repeats)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


class CudaClock:
    """Time callables with CUDA events (torch). One event pair per call, read after one sync."""

    def __init__(self, torch_module):
        self.torch = torch_module

    def time(self, fn: Callable[[], object], repeats: int) -> list[float]:
        cuda = self.torch.cuda
        pairs = [(cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)) for _ in range(repeats)]
        cuda.synchronize()
        for start, stop in pairs:
            start.record()
            fn()
            stop.record()
        cuda.synchronize()
        return [start.elapsed_time(stop) for start, stop in pairs]


class StageClock:
    """Per-stage times of one run: `mark("stage")` at the end of each stage, then `read()`.

    On CUDA (`torch_module` given and `cuda=True`) each mark records an event on the current
    stream and `read()` synchronises once; on CPUs marks read the monotonic clock."""

    def __init__(self, torch_module=None, cuda: bool = False):
        self.torch = torch_module
        self.cuda = bool(cuda)
        self.marks: list[tuple[str, object]] = [("start", self._now())]

    def _now(self):
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        self.marks.append((stage, self._now()))

    def read(self) -> dict:
        """{stage: ms, ..., "total": ms}; a stage marked several times is summed."""
        if self.cuda:
            self.torch.cuda.synchronize()
            elapsed = lambda a, b: a.elapsed_time(b)  # noqa: E731
        else:
            elapsed = lambda a, b: (b - a) * 1000.0  # noqa: E731
        out: dict = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = out.get(name, 0.0) + elapsed(a, b)
        out["total"] = elapsed(self.marks[0][1], self.marks[-1][1])
        return out
