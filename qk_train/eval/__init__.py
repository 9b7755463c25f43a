"""Evaluation metrics for ShapeWorld edits and generations (numpy only)."""
from qk_train.eval.metrics import (
    METRICS,
    classify_shape,
    connected_components,
    dilate,
    generation_findings,
    judge_generation,
    judge_generation_v1,
    nearest_palette_colour,
    score_edit,
    seam,
    shape_fit,
    token_mask_to_pixels,
)

__all__ = [
    "METRICS",
    "classify_shape",
    "connected_components",
    "dilate",
    "generation_findings",
    "judge_generation",
    "judge_generation_v1",
    "nearest_palette_colour",
    "score_edit",
    "seam",
    "shape_fit",
    "token_mask_to_pixels",
]
