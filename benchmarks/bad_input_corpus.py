"""Run the malformed-input corpus (`qk_bench.bad_inputs`) against every consumer and save the results.

    python benchmarks/bad_input_corpus.py                         # all cases
    python benchmarks/bad_input_corpus.py --fast                  # the CI subset
    python benchmarks/bad_input_corpus.py --only 'server' --show  # cases whose name or class matches

Prints one line per case that did not end in a clear error (all of them with --show) and the
summary line `N cases: clear error a, traceback b, wrongly accepted c, crash or hang d, lost or
damaged output e`; writes every case's outcome to --json (default
benchmarks/results/cpu-2core/bad_input_corpus.json) with the machine, the date and the wall time.
Exit status 1 when any case ended in anything but a clear error.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import time
from pathlib import Path

from qk_bench.bad_input_cases import all_cases, fast_cases
from qk_bench.bad_inputs import CLASSES, OUTCOMES, Workspace, run_cases, summary_line
from qk_bench.machine import describe

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "cpu-2core" / "bad_input_corpus.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="only the CI subset")
    p.add_argument("--only", default=None, help="only cases whose name, class or consumer contains this text")
    p.add_argument("--show", action="store_true", help="print every case, not only the failures")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--machine", default="cpu-2core", help="machine label recorded with the results")
    args = p.parse_args(argv)
    with_train = importlib.util.find_spec("torch") is not None
    cases = fast_cases(with_train) if args.fast else all_cases(with_train)
    if args.only:
        cases = [c for c in cases if args.only in c.name or args.only in c.klass or args.only in c.consumer]

    def progress(r):
        if args.show or r.outcome != "clear error":
            print(f"{r.outcome:24s} {r.seconds:6.2f} s  [{r.klass}] {r.name}: {r.detail[:300]}", flush=True)

    ws = Workspace()
    t0 = time.perf_counter()
    try:
        results = run_cases(cases, ws, progress)
    finally:
        ws.close()
    wall = time.perf_counter() - t0
    line = summary_line(results)
    by_class = {k: {o: sum(r.outcome == o for r in results if r.klass == k) for o in OUTCOMES} for k in CLASSES}
    doc = {"summary": line, "wall_s": round(wall, 1), "cases": len(results), "fast_only": args.fast,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": describe(args.machine), "by_class": by_class,
           "consumers": sorted({r.consumer for r in results}), "results": [r.to_dict() for r in results]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{line} ({wall:.0f} s; {args.json})")
    return 0 if all(r.outcome == "clear error" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
