"""study.stats: bootstrap intervals that cover the truth, the decision rule case by case, Pareto fronts."""

import math

import numpy as np
import pytest

from study.stats import Estimate, cheaper, decide, diff_ci, mean_ci, pareto_front


def E(mean, lo, hi, n=6):
    return Estimate(mean, lo, hi, n)


def test_paired_interval_covers_the_planted_difference_most_of_the_time():
    """8 seeds, a shared per-seed level and a planted +5% relative effect: a 95% percentile bootstrap on 8 pairs
    covers the truth in roughly 90% of replications (it is known to be a little narrow at small n)."""
    rng = np.random.default_rng(1)
    covered_abs = covered_rel = 0
    reps = 200
    for _ in range(reps):
        level = 0.8 + rng.normal(0, 0.05, 8)
        b = level * (1 + rng.normal(0, 0.01, 8))
        a = level * 1.05 * (1 + rng.normal(0, 0.01, 8))
        d = diff_ci(a, b, paired=True)
        r = diff_ci(a, b, paired=True, relative=True)
        covered_abs += d.lo <= 0.05 * 0.8 <= d.hi
        covered_rel += r.lo <= 0.05 <= r.hi
        assert d.n == 8 and d.lo < d.mean < d.hi
    assert 0.8 <= covered_rel / reps <= 1.0
    assert 0.7 <= covered_abs / reps <= 1.0  # the absolute truth is 0.05 x mean level, itself random


def test_pairing_removes_the_shared_level():
    rng = np.random.default_rng(0)
    level = rng.normal(0, 1, 10)
    a, b = level + 0.1 + rng.normal(0, 0.01, 10), level + rng.normal(0, 0.01, 10)
    paired, unpaired = diff_ci(a, b, paired=True), diff_ci(a, b, paired=False)
    assert paired.lo > 0  # the effect is clear once seeds are paired
    assert unpaired.lo < 0 < unpaired.hi  # and lost in the seed-to-seed spread otherwise
    assert paired.mean == pytest.approx(unpaired.mean)


def test_small_and_degenerate_samples():
    assert not mean_ci([0.7]).has_ci and mean_ci([0.7]).mean == 0.7 and mean_ci([0.7]).n == 1
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([float("nan")]).mean)
    const = mean_ci([13, 13, 13])
    assert (const.lo, const.mean, const.hi) == (13, 13, 13)
    d = diff_ci([1, 2, float("nan")], [1, 1, 1], paired=True)  # a pair with a NaN member is dropped
    assert d.n == 2 and d.mean == pytest.approx(0.5)
    u = diff_ci([1.0, 2.0], [0.5, 0.5, 0.5, 0.5], paired=False)
    assert u.n == 2 and u.mean == pytest.approx(1.0)
    assert E(0.051, 0.03, 0.07).pct() == "+5.1% [+3.0%, +7.0%]"
    assert E(-0.0004, -0.0005, -0.0003).pct() == "-0.040% [-0.050%, -0.030%]"
    assert E(1.0, float("nan"), float("nan")).fmt() == "1 (no CI)"


FAST = {"time per epoch": E(-0.2, -0.25, -0.15)}
SAME_COST = {"time per epoch": E(0.01, -0.05, 0.06)}


@pytest.mark.parametrize("iou, psnr, costs, winner, words", [
    (E(-0.05, -0.06, -0.04), E(-0.01, -0.015, -0.005), FAST, "3d", "3D is better by more than the 2% margin"),
    (E(0.0, -0.01, 0.01), E(0.0, -0.01, 0.01), FAST, "2d", "within the 2% margin of 3D or better"),
    (E(0.0, -0.01, 0.01), E(0.0, -0.01, 0.01), SAME_COST, "3d", "neither faster nor lighter"),
    (E(0.05, 0.03, 0.07), E(0.04, 0.03, 0.05), SAME_COST, "2d", "better by more than the 2% margin"),
    (E(-0.02, -0.04, 0.0), E(0.0, -0.01, 0.01), FAST, "inconclusive", "straddles the -2% margin"),
    (E(-0.10, -0.11, -0.09, n=2), E(0.0, -0.01, 0.01, n=2), FAST, "inconclusive", "only 2 seed(s)"),
    (E(float("nan"), float("nan"), float("nan"), 0), E(0.0, 0, 0), FAST, "inconclusive", "no paired"),
])
def test_decision_rule(iou, psnr, costs, winner, words):
    v = decide({"IoU": iou, "PSNR": psnr}, costs, 0.02)
    assert v.winner == winner and words in v.reason, v.reason


def test_cheaper_needs_the_whole_interval_below_zero():
    assert cheaper({"t": E(-0.1, -0.2, -0.01), "m": E(-0.1, -0.2, 0.05)}) == ["t"]
    assert cheaper({"t": E(-0.1, float("nan"), float("nan"), 1)}) == ["t"]  # no interval: a clear point estimate
    assert cheaper({"t": E(-0.01, float("nan"), float("nan"), 1)}) == []


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 1.5, 4.0, np.nan, 2.0])
    qual = np.array([0.5, 0.7, 0.6, 0.4, 0.9, 1.0, 0.75])
    assert pareto_front(cost, qual).tolist() == [0, 6, 4]
