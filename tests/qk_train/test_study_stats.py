"""The study's intervals (qk_train.study.stats) and the verdict rule on them (qk_train.study.verdicts), on made-up samples."""
import time

import numpy as np
import pytest

from qk_train.data.shapeworld import EDIT_KINDS
from qk_train.study import stats
from qk_train.study.stats import Interval, compare_interval, mean_interval, seed_interval
from qk_train.study.verdicts import claims, judge


def _bernoulli(rate, shape, seed):
    return (np.random.default_rng(seed).random(shape) < rate).astype(float)


# --------------------------------------------------------------------------- known intervals


def test_a_large_bernoulli_sample_gives_the_normal_approximation():
    x = _bernoulli(0.3, 20_000, seed=1)  # one training seed
    iv = mean_interval(x)
    p = x.mean()
    assert iv.estimate == pytest.approx(p) and iv.lo < 0.3 < iv.hi and iv.lo < p < iv.hi
    normal = 2 * 1.959964 * np.sqrt(p * (1 - p) / x.size)
    assert iv.hi - iv.lo == pytest.approx(normal, rel=0.1)
    assert iv.over == stats.OVER_ITEMS  # one seed: said so


def test_exact_answers_on_tiny_and_degenerate_samples():
    # [0, 1]: resampled means 0, 0.5, 1 with chances 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 1
    iv = mean_interval([0.0, 1.0])
    assert (iv.estimate, iv.lo, iv.hi) == (0.5, 0.0, 1.0)
    assert (mean_interval(np.ones(50)).lo, mean_interval(np.ones(50)).hi) == (1.0, 1.0)
    assert (mean_interval(np.zeros((3, 40))).lo, mean_interval(np.zeros((3, 40))).hi) == (0.0, 0.0)
    x = _bernoulli(0.4, (3, 200), seed=2)
    same = compare_interval(x, x.copy())
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0)  # paired: identical arms differ by exactly nothing
    ratio = compare_interval(x, x.copy(), statistic="ratio")
    assert (ratio.lo, ratio.hi) == (1.0, 1.0)


def test_intervals_are_reproducible_and_the_mean_is_the_samples():
    x = np.random.default_rng(3).uniform(0, 0.1, (2, 300))
    a, b = mean_interval(x), mean_interval(x)
    assert a == b and a.estimate == pytest.approx(x.mean()) and a.lo < a.estimate < a.hi
    assert mean_interval(x, seed=stats.RNG_SEED + 1) != a  # a different RNG seed moves the ends a little
    assert a.to_dict()["over"] == stats.OVER_BOTH and a.resamples == stats.RESAMPLES == 2000


def test_the_two_level_bootstrap_widens_with_seed_to_seed_spread():
    n = 400
    even = np.stack([_bernoulli(0.5, n, seed=s) for s in range(3)])
    spread = np.stack([_bernoulli(r, n, seed=s) for s, r in enumerate((0.2, 0.5, 0.8))])
    w_even, w_spread = (mean_interval(x).hi - mean_interval(x).lo for x in (even, spread))
    assert w_spread > 2 * w_even
    # a seed-level statistic: the wider the seeds disagree, the wider the interval
    assert seed_interval([10.0, 10.5, 11.0]).hi - seed_interval([10.0, 10.5, 11.0]).lo < seed_interval([5.0, 10.5, 16.0]).hi - 5.0


def test_edits_shared_by_the_seeds_are_drawn_once_per_resample():
    """Three seeds with the same outcomes on the same edits carry no more information than one: the
    interval is as wide as the one-seed interval (drawing edits afresh per seed would make it ~1/sqrt(3) as wide)."""
    row = _bernoulli(0.4, 300, seed=4)
    one = mean_interval(row)
    three = mean_interval(np.stack([row, row, row]))
    assert three.hi - three.lo == pytest.approx(one.hi - one.lo, rel=0.12)


def test_pairing_by_edit_narrows_the_difference_of_correlated_arms():
    rng = np.random.default_rng(5)
    a = (rng.random((2, 500)) < 0.5).astype(float)
    b = a.copy()
    flip = rng.random(b.shape) < 0.1  # b: a with a tenth of the edits changed
    b[flip] = 1 - b[flip]
    paired, unpaired = compare_interval(a, b), compare_interval(a, b, paired=False)
    assert paired.estimate == unpaired.estimate
    assert paired.hi - paired.lo < 0.5 * (unpaired.hi - unpaired.lo)


def test_ratio_and_reduction_with_a_zero_baseline():
    iv = compare_interval(np.ones(20), np.zeros(20), statistic="ratio")
    assert iv.estimate == np.inf and iv.lo == np.inf and iv.to_dict()["lo"] == "inf"
    both_zero = compare_interval(np.zeros(20), np.zeros(20), statistic="reduction")
    assert (both_zero.lo, both_zero.hi) == (0.0, 0.0)  # 0 / 0: no difference
    red = compare_interval([0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0], statistic="reduction")
    assert (red.estimate, red.lo, red.hi) == (0.5, 0.5, 0.5)


def test_thousands_of_resamples_take_well_under_a_second():
    a, b = _bernoulli(0.5, (3, 500), seed=6), _bernoulli(0.4, (3, 500), seed=7)
    compare_interval(a, b)  # warm-up
    tic = time.perf_counter()
    compare_interval(a, b, statistic="reduction")
    assert time.perf_counter() - tic < 1.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="empty sample"):
        mean_interval([])
    with pytest.raises(ValueError, match="empty sample"):
        mean_interval(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="same \\(seeds, items\\) shape, got a \\(2, 100\\) and b \\(2, 99\\)"):
        compare_interval(np.zeros((2, 100)), np.zeros((2, 99)))
    with pytest.raises(ValueError, match="2 and 3 training seeds"):
        compare_interval(np.zeros((2, 10)), np.zeros((3, 12)), paired=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mean_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="shape \\(2, 2, 2\\)"):
        mean_interval(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="not a numeric array"):
        mean_interval(["a", "b"])
    with pytest.raises(ValueError, match="statistic 'mean'"):
        compare_interval([1.0], [1.0], statistic="mean")
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_interval([12.0])
    with pytest.raises(ValueError, match="level 95"):
        mean_interval([1.0, 0.0], level=95)


# --------------------------------------------------------------------------- the verdict rule


def test_a_verdict_flips_when_its_interval_crosses_a_line():
    third = 1 / 3
    assert judge(Interval(0.3, 0.10, 0.50, ""), null=0.0, figure=third) == "holds"
    assert judge(Interval(0.2, -0.05, 0.50, ""), null=0.0, figure=third) == "not shown"  # moved across no effect
    assert judge(Interval(0.2, 0.10, 0.30, ""), null=0.0, figure=third) == "contradicted"  # moved below the figure
    assert judge(Interval(-0.2, -0.30, -0.10, ""), null=0.0, figure=third) == "contradicted"
    # a ratio: no effect at 1x; a direction-only claim: figure = no effect
    assert judge(Interval(2.0, 1.2, 3.0, ""), null=1.0, figure=2.1) == "holds"
    assert judge(Interval(2.0, 0.9, 3.0, ""), null=1.0, figure=2.1) == "not shown"
    assert judge(Interval(0.1, 0.01, 0.2, ""), null=0.0, figure=0.0) == "holds"
    assert judge(Interval(0.1, -0.01, 0.2, ""), null=0.0, figure=0.0) == "not shown"
    assert judge(Interval(-0.1, -0.2, -0.01, ""), null=0.0, figure=0.0) == "contradicted"
    # no worse than 5 points below
    assert judge(Interval(0.0, -0.04, 0.05, ""), null=0.0, figure=-0.05, rule="no_worse") == "holds"
    assert judge(Interval(0.0, -0.06, 0.05, ""), null=0.0, figure=-0.05, rule="no_worse") == "not shown"
    assert judge(Interval(-0.1, -0.20, -0.06, ""), null=0.0, figure=-0.05, rule="no_worse") == "contradicted"
    with pytest.raises(ValueError, match="rule 'other'"):
        judge(Interval(0, 0, 0, ""), null=0.0, figure=0.0, rule="other")
    with pytest.raises(ValueError, match="below the no-effect line"):
        judge(Interval(0, 0, 0, ""), null=1.0, figure=0.5)


SCALE = {"preset": "small", "steps": 2000, "seeds": [0, 1],
         "eval": {"n": 200, "gen_n": 200, "stability_n": 100, "stability_seeds": 4, "probe_n": 100}}


def _arms(overrides: dict):
    """Arm entries and (seeds, items) samples for the claims: two seeds, 200 edits, made up."""
    rng = np.random.default_rng(8)
    s, n = 2, 200
    success = _bernoulli(0.6, (s, n), seed=9)
    drift = rng.uniform(0.005, 0.015, (s, n))
    worse = success.copy()
    worse[:, :30] = 0  # dual: full's outcomes with 30 successes per seed taken away
    common = {"edit_success": success, "drift": drift, "gen_accuracy": _bernoulli(0.5, (s, n), seed=10),
              "stable_share": _bernoulli(0.45, (s, 100), seed=11), "fd": np.array([[10.0], [12.0]])}
    samples = {
        "full": {**common, "probe_held_out_pairs": _bernoulli(0.6, (s, 100), 12), "probe_background": _bernoulli(0.6, (s, 100), 13),
                 "probe_held_in": _bernoulli(0.6, (s, 80), 14)},
        "no_cmg": {**common, "drift": drift * 2 + rng.uniform(0, 0.002, (s, n))},  # full's drift ~50 % lower, edit by edit
        "no_gateway": {**common, "edit_success": np.zeros((s, n)), "drift": drift * 1.1,  # ~9 % more drift
                       "stable_share": _bernoulli(0.2, (s, 100), 15)},
        "dual": {**common, "edit_success": worse, "fd": np.array([[20.0], [30.0]])},
        "probe": {**common, "probe_held_in": _bernoulli(0.6, (s, 80), 16), "probe_held_out_pairs": _bernoulli(0.3, (s, 100), 17),
                  "probe_background": _bernoulli(0.6, (s, 100), 18)},
    }
    for arm, figs in overrides.items():
        samples[arm] = {**samples[arm], **figs}
    kinds = np.asarray([EDIT_KINDS[i % len(EDIT_KINDS)] for i in range(n)])
    arms = {}
    for name, sm in samples.items():
        sm["colour_drift"] = sm["drift"][:, kinds == "colour"]
        entry = {k: float(np.mean(v)) for k, v in sm.items()}
        entry.update({"name": name, "seeds": [0, 1], "fd_floor": 2.0, "gate_iou": 0.75, "gate_precision": 0.8, "gate_recall": 0.9,
                      **{f"success_{k}": float(sm["edit_success"][:, kinds == k].mean()) for k in EDIT_KINDS}})
        arms[name] = entry
    return arms, samples


def _verdict(rows, prefix):
    return next(c for c in rows if c["claim"].startswith(prefix))


def test_claim_verdicts_follow_the_stated_rule_on_their_intervals():
    arms, samples = _arms({})
    rows = claims(arms, samples, smoke=False, scale=SCALE)
    cmg = _verdict(rows, "CMG cuts")
    assert cmg["verdict"] == "holds"
    e = cmg["effects"][0]
    assert 1 / 3 <= e["hi"] and 0 < e["lo"] < e["estimate"] < e["hi"] and e["figure"] == pytest.approx(1 / 3)
    assert f"95 % CI {100 * e['lo']:+.0f} % to {100 * e['hi']:+.0f} %" in cmg["ours"]
    assert cmg["scale"] == "preset small, 2000 steps, 2 seed(s), 200 edits"
    assert _verdict(rows, "Attribute edits")["verdict"] == "contradicted"  # ~9 % lower, interval well below 45 %
    assert "an effect is shown, but the whole interval lies below" in _verdict(rows, "Attribute edits")["why"]
    assert _verdict(rows, "Unified beats")["verdict"] == "holds"  # dual lost 30 edits per seed, no_gateway all
    assert _verdict(rows, "Joint training")["verdict"] == "holds"  # FD-SW 50 % and 60 % lower, over seeds
    assert "over training seeds only" in _verdict(rows, "Joint training")["ours"]
    assert _verdict(rows, "Query gateway")["verdict"] == "holds"  # ~2.25x
    assert _verdict(rows, "Generalizes")["verdict"] == "contradicted"  # 0.3 on held-out pairs vs 0.6 held-in
    for prefix in ("Edit success per task", "Users prefer", "LPIPS"):
        assert _verdict(rows, prefix)["verdict"] == "cannot be tested here" and _verdict(rows, prefix)["why"]

    # move the CMG effect's interval across its lines: below the article's third, then across no effect
    drift = samples["full"]["drift"]
    rows = claims(*_arms({"no_cmg": {"drift": drift * 1.1}}), smoke=False, scale=SCALE)
    assert _verdict(rows, "CMG cuts")["verdict"] == "contradicted"
    few = {"drift": np.full((2, 6), 0.010)}  # six edits; no_cmg's drift 25 % higher on average, but erratic
    noisy = {"drift": np.tile([0.005, 0.030, 0.006, 0.028, 0.004, 0.007], (2, 1))}
    arms, samples = _arms({})
    samples["full"], samples["no_cmg"] = {**samples["full"], **few}, {**samples["no_cmg"], **noisy}
    row = _verdict(claims(arms, samples, smoke=False, scale=SCALE), "CMG cuts")
    assert row["effects"][0]["lo"] <= 0 <= 1 / 3 <= row["effects"][0]["hi"] and row["verdict"] == "not shown"
    # held-out edits as good as held-in ones: generalization holds with many edits, is not shown with few
    big = {"probe_held_in": _bernoulli(0.6, (2, 3000), 20), "probe_held_out_pairs": _bernoulli(0.6, (2, 3000), 21),
           "probe_background": _bernoulli(0.6, (2, 3000), 22)}
    row = _verdict(claims(*_arms({"probe": big}), smoke=False, scale=SCALE), "Generalizes")
    assert row["verdict"] == "holds" and all(e["lo"] >= -0.05 for e in row["effects"])
    small = {k: v[:, :60] for k, v in big.items()}
    assert _verdict(claims(*_arms({"probe": small}), smoke=False, scale=SCALE), "Generalizes")["verdict"] == "not shown"


def test_fd_with_one_seed_has_no_interval_and_no_verdict_beyond_not_shown():
    arms, samples = _arms({})
    for name in samples:
        samples[name] = {k: v[:1] for k, v in samples[name].items()}
        arms[name]["seeds"] = [0]
    rows = claims(arms, samples, smoke=True, scale={**SCALE, "seeds": [0]})
    fd = _verdict(rows, "Joint training")
    assert fd["verdict"] == "not shown (SMOKE RUN: NOT EVIDENCE)" and "no interval" in fd["ours"]
    assert "one training seed" in fd["why"]
