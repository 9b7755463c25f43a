"""95 % intervals for the study's figures: a two-level bootstrap over training seeds and test items.

A sample is a (seeds, items) array: one row per training seed, one column per test item (an
edit's 0/1 success or its drift, a generation's 0/1 correctness), the same items in every row,
as the study evaluates every seed on the same test edits with the same noise seeds.

Method. Each of `RESAMPLES` (2,000) resamples draws the training seeds with replacement, then the
items with replacement, and takes the mean over the drawn (seed, item) cells. The item draw is
one draw per resample, used for every drawn seed: the seeds share their test edits (a crossed
design), so an edit that is hard for one seed tends to be hard for all, and drawing edits afresh
for each seed would average that away and give too narrow an interval. The interval is the
2.5th and 97.5th percentiles of the resampled statistic (nearest rank, no interpolation), with
a fixed RNG seed (`RNG_SEED`), so the same files always give the same interval.
- One arm: the statistic is the mean (`mean_interval`).
- Two arms (`compare_interval`): the difference `a - b`, the ratio `a / b` or the reduction
  `1 - a / b` of their means. Paired (the default): both arms are resampled with the same seed
  and item draws, so an edit's outcome under one arm is compared with the same edit's under the
  other. Unpaired (`paired=False`, two different item sets of the same models, e.g. held-in
  vs held-out edits): the seed draw is shared, each sample draws its own items. A ratio whose
  resampled denominator is 0 is +inf (numerator > 0) or 1 (numerator 0 as well: no difference).
- One training seed: the seed draw is trivial, so the interval is over items only, and its
  `over` says so; it holds no seed-to-seed spread.
- A set statistic with no per-item outcome (FD-SW): a (seeds, 1) sample, resampled over training
  seeds only (`seed_interval`); with fewer than two seeds there is no interval.
numpy only; resamples are drawn in blocks, so 2,000 resamples of 3 seeds x 500 items take a few
tens of milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
RNG_SEED = 20240917
BLOCK_CELLS = 4_000_000  # cells gathered per block of resamples (memory bound: 32 MB of float64)
STATISTICS = ("difference", "ratio", "reduction")

OVER_BOTH = "training seeds and test items (two-level bootstrap)"
OVER_ITEMS = "test items only (one training seed: no seed-to-seed spread)"
OVER_SEEDS = "training seeds only (a set statistic: no per-item outcomes)"


@dataclass(frozen=True)
class Interval:
    """A point estimate (from the sample itself) and its bootstrap percentile interval."""

    estimate: float
    lo: float
    hi: float
    over: str
    resamples: int = RESAMPLES
    level: float = LEVEL

    def to_dict(self, digits: int = 6) -> dict:
        return {"estimate": _round(self.estimate, digits), "lo": _round(self.lo, digits), "hi": _round(self.hi, digits),
                "over": self.over}


def _round(x: float, digits: int) -> float | str:
    return float(round(x, digits)) if np.isfinite(x) else ("inf" if x > 0 else "-inf")


# --------------------------------------------------------------------------- checks


def as_sample(x, name: str = "sample") -> np.ndarray:
    """`x` as a float (seeds, items) array; a 1-D sample is one seed. Raises ValueError on bad input."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a numeric array ({exc}); give per-item values, one row per training seed") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name}: shape {a.shape}; give a (seeds, items) array or a 1-D sample of one seed")
    if a.size == 0:
        raise ValueError(f"{name}: empty sample of shape {a.shape}; need at least one training seed and one item")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} value(s) are NaN or infinite; every item needs an outcome")
    return a


def _check_level(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level}: must lie strictly between 0 and 1 (0.95 for a 95 % interval)")
    if resamples < 100:
        raise ValueError(f"resamples {resamples}: need at least 100 for a percentile interval (default {RESAMPLES})")


# --------------------------------------------------------------------------- the bootstrap


def _resampled_means(samples: list[np.ndarray], paired: bool, resamples: int, seed: int) -> list[np.ndarray]:
    """Each sample's mean under the same `resamples` two-level draws: (resamples,) per sample."""
    rng = np.random.default_rng(seed)
    n_seeds = samples[0].shape[0]
    cells = n_seeds * sum(s.shape[1] for s in samples)
    block = max(1, BLOCK_CELLS // cells)
    out = [np.empty(resamples) for _ in samples]
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        seeds = rng.integers(n_seeds, size=(b, n_seeds))[:, :, None]  # (b, S, 1)
        shared = rng.integers(samples[0].shape[1], size=(b, samples[0].shape[1])) if paired else None
        for k, x in enumerate(samples):
            items = shared if paired else rng.integers(x.shape[1], size=(b, x.shape[1]))  # (b, N)
            out[k][start:start + b] = x[seeds, items[:, None, :]].mean(axis=(1, 2))  # (b, S, N) -> (b,)
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The nearest-rank percentile interval of `level`; +-inf values sort to the ends."""
    v = np.sort(values)
    n = len(v)
    lo = int(np.floor((1.0 - level) / 2.0 * n))
    hi = int(np.ceil((1.0 + level) / 2.0 * n)) - 1
    return float(v[lo]), float(v[min(hi, n - 1)])


def _over(x: np.ndarray) -> str:
    return OVER_ITEMS if x.shape[0] == 1 else OVER_BOTH


def mean_interval(x, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = RNG_SEED) -> Interval:
    """The mean of a (seeds, items) sample with its two-level bootstrap interval."""
    _check_level(level, resamples)
    a = as_sample(x)
    (means,) = _resampled_means([a], True, resamples, seed)
    return Interval(float(a.mean()), *_percentiles(means, level), _over(a), resamples, level)


def _statistic(name: str, a, b):
    if name == "difference":
        return a - b
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b != 0, a / np.where(b != 0, b, 1.0), np.where(a > 0, np.inf, np.where(a < 0, -np.inf, 1.0)))
    return ratio if name == "ratio" else 1.0 - ratio


def compare_interval(a, b, *, statistic: str = "difference", paired: bool = True, resamples: int = RESAMPLES,
                     level: float = LEVEL, seed: int = RNG_SEED) -> Interval:
    """`statistic` ("difference" a - b, "ratio" a / b, "reduction" 1 - a / b) of two samples' means, with its
    interval. Paired: the same (seeds, items) cells in both (the same edits under the same noise seeds)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r}; choose one of {list(STATISTICS)}")
    _check_level(level, resamples)
    xa, xb = as_sample(a, "a"), as_sample(b, "b")
    if paired and xa.shape != xb.shape:
        raise ValueError(f"paired samples must have the same (seeds, items) shape, got a {xa.shape} and b {xb.shape}; "
                         "pair the same test edits under the same training seeds, or pass paired=False for different items")
    if xa.shape[0] != xb.shape[0]:
        raise ValueError(f"the two samples have {xa.shape[0]} and {xb.shape[0]} training seeds; both need the same seeds")
    ma, mb = _resampled_means([xa, xb], paired, resamples, seed)
    estimate = float(_statistic(statistic, np.float64(xa.mean()), np.float64(xb.mean())))
    return Interval(estimate, *_percentiles(_statistic(statistic, ma, mb), level), _over(xa), resamples, level)


def seed_interval(values, other=None, *, statistic: str | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = RNG_SEED) -> Interval:
    """A set statistic's (one value per training seed, e.g. FD-SW) mean, or `statistic` of two arms' per-seed
    values (paired by seed), bootstrapped over training seeds only. Needs at least two seeds."""
    a = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if a.shape[0] < 2:
        raise ValueError(f"{a.shape[0]} training seed(s): a set statistic has no interval without at least two seeds")
    if other is None:
        if statistic is not None:
            raise ValueError(f"statistic {statistic!r} needs a second arm's values (other=...)")
        iv = mean_interval(a, resamples=resamples, level=level, seed=seed)
    else:
        iv = compare_interval(a, np.asarray(other, dtype=np.float64).reshape(-1, 1), statistic=statistic or "difference",
                              resamples=resamples, level=level, seed=seed)
    return Interval(iv.estimate, iv.lo, iv.hi, OVER_SEEDS, resamples, level)


def method_note() -> dict:
    """What the study's JSON says about how its intervals were made."""
    return {"level": LEVEL, "resamples": RESAMPLES, "rng_seed": RNG_SEED, "interval": "percentile (nearest rank)",
            "method": "two-level bootstrap: training seeds with replacement, then test items with replacement (one item draw "
                      "per resample, shared by every drawn seed, as every seed is scored on the same test edits); comparisons "
                      "between arms are paired by seed and edit. One training seed: over items only. FD-SW (a set "
                      "statistic): over training seeds only, none with one seed."}
