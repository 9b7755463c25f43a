"""The malformed-input corpus (qk_bench.bad_inputs), its fast cases: every one must end in a clear
error, with no traceback, nothing wrongly accepted, no crash or hang and no input changed.
`python benchmarks/bad_input_corpus.py` runs all of them."""
from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'query-kontext[serve]')")

from qk_bench.bad_input_cases import all_cases, fast_cases  # noqa: E402
from qk_bench.bad_inputs import CLASSES, Result, Workspace, classify_message, run_cases, summary_line  # noqa: E402


def test_the_corpus_covers_every_class_with_300_cases_or_more():
    cases = all_cases(include_train=importlib.util.find_spec("torch") is not None)
    assert len(cases) >= 300
    assert {c.klass for c in cases} == set(CLASSES)
    assert len({c.name for c in cases}) == len(cases)  # names identify cases in the results


def test_the_fast_cases_all_end_in_a_clear_error():
    cases = fast_cases(include_train=importlib.util.find_spec("torch") is not None)
    assert len(cases) >= 80 and {c.klass for c in cases} == set(CLASSES)
    ws = Workspace()
    try:
        results = run_cases(cases, ws)
    finally:
        ws.close()
    bad = [f"{r.outcome}: {r.name}: {r.detail}" for r in results if r.outcome != "clear error"]
    assert not bad, summary_line(results) + "\n" + "\n".join(bad)


@pytest.mark.parametrize("rc, text, outcome", [
    (0, "qk-edit: wrote out.png", "wrongly accepted"),
    (2, "qk-edit: error: --out x is the --image file", "clear error"),
    (2, "qk-edit: error: InvalidProtobuf: [ONNXRuntimeError] : 7", "traceback"),
    (1, "Traceback (most recent call last):\n  File ...", "traceback"),
    (-11, "", "crash or hang"),
    (3, "error: internal: bad_alloc", "traceback"),
])
def test_outcomes_are_classified_as_a_user_would_read_them(rc, text, outcome):
    assert classify_message(rc, text).outcome == outcome


def test_summary_line():
    results = [Result("clear error"), Result("traceback"), Result("clear error")]
    assert summary_line(results) == ("3 cases: clear error 2, traceback 1, wrongly accepted 0, crash or hang 0, "
                                     "lost or damaged output 0")
