"""Evaluation metrics for ShapeWorld edits and generations (numpy only)."""
from qk_train.eval.metrics import (
    METRICS,
    classify_shape,
    connected_components,
    dilate,
    judge_generation,
    nearest_palette_colour,
    score_edit,
)

__all__ = [
    "METRICS",
    "classify_shape",
    "connected_components",
    "dilate",
    "judge_generation",
    "nearest_palette_colour",
    "score_edit",
]
