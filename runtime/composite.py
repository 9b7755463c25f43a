"""Compositing: which pixels of an edit are the decoded image's and which the source's own.

The image decoder smooths what it reconstructs (the codec drops fine texture), so an edit keeps
the source's own pixels wherever the edit does not change them. Two kinds, named by the bundle
manifest's `composite` entry and by `qk_train.pipeline.Pipeline(composite=...)`:

- `gate` (bundles without the entry, formats 1-3): out = pix dec(x) + (1 - pix) src, pix the
  gate at pixel resolution (nearest-upsampled). Inside the gate every pixel is the decoder's.
- `changed` (format 4): the source latent is decoded too, and per pixel
      d = (|a_r - b_r| + |a_g - b_g| + |a_b - b_b|) / 6      a = dec(x), b = dec(src), in [-1, 1]:
                                                             d is the mean RGB difference on a 0-1 scale
      w = clip((d - lo) / (hi - lo), 0, 1), then `widen` passes of a 3 x 3 max filter
      k = pix w
      out = k dec(x) + (1 - k) src
  so inside the gate the pixels the edit leaves as the decoder reconstructs the source are the
  source's own; widening keeps an object's soft edge. lo, hi and widen were chosen on validation
  edits (benchmarks/seam_compositing.py).

Every runtime computes this in float32 in the order written above (the C++ session mirrors it);
this module is the Python one, shared by the torch reference pipeline and `EditSession`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("gate", "changed")
MAX_WIDEN = 8


@dataclass(frozen=True)
class Composite:
    kind: str = "gate"
    lo: float | None = None  # `changed`: the difference (0-1) below which a pixel is the source's
    hi: float | None = None  # `changed`: the difference at and above which it is the decoded image's
    widen: int = 0  # `changed`: 3 x 3 max-filter passes over the weight

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"composite kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "gate":
            if self.lo is not None or self.hi is not None or self.widen:
                raise ValueError("composite kind 'gate' takes no lo, hi or widen (they belong to kind 'changed')")
            return
        for name in ("lo", "hi"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"composite {name}={v!r}; must be a finite number in [0, 1]")
        if not 0.0 <= self.lo < self.hi <= 1.0:
            raise ValueError(f"composite lo={self.lo}, hi={self.hi}; need 0 <= lo < hi <= 1")
        if isinstance(self.widen, bool) or not isinstance(self.widen, int) or not 0 <= self.widen <= MAX_WIDEN:
            raise ValueError(f"composite widen={self.widen!r}; must be an integer from 0 to {MAX_WIDEN}")

    @property
    def decodes_source(self) -> bool:
        """Whether an edit also runs the image decoder on the source latent."""
        return self.kind == "changed"

    def to_dict(self) -> dict:
        """The manifest entry."""
        if self.kind == "gate":
            return {"kind": "gate"}
        return {"kind": self.kind, "lo": float(self.lo), "hi": float(self.hi), "widen": int(self.widen)}

    @classmethod
    def from_dict(cls, raw) -> "Composite":
        """From a manifest entry; ValueError naming what is wrong."""
        if not isinstance(raw, dict) or "kind" not in raw:
            raise ValueError(f"must be an object with a 'kind' ({' or '.join(KINDS)}), got {raw!r}")
        if raw["kind"] not in KINDS:
            raise ValueError(f"kind {raw['kind']!r} is not one this runtime applies; choose one of {KINDS}")
        allowed = {"kind"} if raw["kind"] == "gate" else {"kind", "lo", "hi", "widen"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"has unknown keys {unknown} for kind {raw['kind']!r} (allowed: {sorted(allowed)})")
        if raw["kind"] == "gate":
            return cls("gate")
        missing = sorted({"lo", "hi", "widen"} - set(raw))
        if missing:
            raise ValueError(f"kind {raw['kind']!r} needs {missing}")
        return cls(raw["kind"], raw["lo"], raw["hi"], raw["widen"])


GATE_ONLY = Composite("gate")


def change_weight(decoded: np.ndarray, decoded_source: np.ndarray, c: Composite) -> np.ndarray:
    """(B, 3, S, S) dec(x) and dec(src) -> (B, 1, S, S) float32 weight w in [0, 1] (kind `changed`)."""
    a = decoded.astype(np.float32, copy=False)
    b = decoded_source.astype(np.float32, copy=False)
    d = (np.abs(a[:, 0] - b[:, 0]) + np.abs(a[:, 1] - b[:, 1]) + np.abs(a[:, 2] - b[:, 2])) / np.float32(6.0)
    w = np.clip((d - np.float32(c.lo)) / np.float32(c.hi - c.lo), np.float32(0.0), np.float32(1.0))
    for _ in range(c.widen):
        w = max_filter3(w)
    return w[:, None].astype(np.float32, copy=False)


def max_filter3(w: np.ndarray) -> np.ndarray:
    """3 x 3 maximum over the last two axes (pixels outside the image do not count)."""
    out = w.copy()
    out[..., 1:, :] = np.maximum(out[..., 1:, :], w[..., :-1, :])
    out[..., :-1, :] = np.maximum(out[..., :-1, :], w[..., 1:, :])
    rows = out.copy()
    out[..., :, 1:] = np.maximum(out[..., :, 1:], rows[..., :, :-1])
    out[..., :, :-1] = np.maximum(out[..., :, :-1], rows[..., :, 1:])
    return out


def composite(decoded: np.ndarray, source_px: np.ndarray, pix: np.ndarray, c: Composite,
              decoded_source: np.ndarray | None = None) -> np.ndarray:
    """The edit's output image (B, 3, S, S) in [-1, 1] from the decoded image, the source image
    (both (B, 3, S, S)), the gate at pixel resolution pix (B, 1, S, S) and, for kind `changed`,
    the decoded source latent."""
    if c.kind == "changed":
        if decoded_source is None:
            raise ValueError("composite kind 'changed' needs decoded_source, the image decoder's output for the source latent")
        k = pix * change_weight(decoded, decoded_source, c)
    else:
        k = pix
    return k * decoded + (1.0 - k) * source_px
