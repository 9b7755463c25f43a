"""Quality of a configuration: `qk-eval`'s edit success and drift, through the configuration's own
engine (any object with `side` and `edit_many`, the Editor protocol of `qk_train.eval.evaluate`).

Edits `i = 0..n-1` of the ShapeWorld test split (kind `i mod 5`, so every kind has the same share),
with their boxes, seeds `seed + i`, scored by `qk_train.eval.metrics.score_edit`. Only the
with-box setting is run (half the time of qk-eval's default two settings).
"""
from __future__ import annotations


def edit_quality(engine, n: int, *, seed: int = 0, split: str = "test") -> dict:
    from qk_train.eval.evaluate import edit_metrics

    if n < 1:
        raise ValueError(f"quality n={n}; need at least 1 edit")
    r = edit_metrics(engine, split, n, ["box"], seed, lambda it, desc=None: it)
    table = r["edit_success"]["box"]
    return {
        "edit_success": table["overall"],
        "edit_success_by_kind": {k: v for k, v in table.items() if k != "overall"},
        "drift": r["drift"]["box"],
        "inside_error": r["inside_error"]["box"],
        "quality_n": n,
        "quality_split": split,
    }
