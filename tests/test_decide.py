"""The decision from the confirm stage: the rule branch by branch, the t interval's coverage over seeds x frames,
planted-truth call rates at the shipped design, failures, and the whole path through real parquet files."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist

from study.analysis.decide import EITHER, INCONCLUSIVE, decide, rule
from study.analysis.simulate import TRUTHS, Noise, Truth, generate, make_plan, rates, write_study
from study.analysis.crossed import Crossed, crossed_diff, crossed_se, halfwidth, seeds_for, variance_components


def est(mean: float, half: float, n: int = 10, var_seed: float = 1e-5) -> Crossed:
    """A relative-difference estimate with a 95% half-width `half` (se from a t with 20 df) over 50 test frames."""
    se = half / 2.086
    return Crossed(mean, mean - half, mean + half, n, se, 20.0, var_seed, 1e-5, 1e-5, 50)


MODES = ["2d", "3d"]


@pytest.mark.parametrize("q, cost, call", [
    ({"iou": est(-0.05, 0.01), "psnr": est(0.0, 0.01)}, est(-0.3, 0.05), "3d"),       # worse beyond the margin on one
    ({"iou": est(-0.01, 0.015), "psnr": est(0.0, 0.005)}, est(-0.3, 0.05), INCONCLUSIVE),  # reaches below -2%
    ({"iou": est(-0.005, 0.01), "psnr": est(0.0, 0.01)}, est(-0.3, 0.05), "2d"),      # non-inferior and cheaper
    ({"iou": est(-0.005, 0.01), "psnr": est(0.0, 0.01)}, est(-0.03, 0.01), EITHER),   # cheaper, but under 5%
    ({"iou": est(0.012, 0.004), "psnr": est(0.01, 0.004)}, est(0.0, 0.05), "2d"),     # better on every metric
    ({"iou": est(-0.012, 0.004), "psnr": est(-0.01, 0.004)}, est(0.0, 0.05), "3d"),   # 3D better, within margin
    ({"iou": est(-0.012, 0.004), "psnr": est(0.01, 0.004)}, est(0.0, 0.05), EITHER),  # mixed
    ({"iou": est(0.0, 0.005), "psnr": est(0.0, 0.005)}, est(0.0, 0.05), EITHER),      # equivalent, equal cost
    ({"iou": est(-0.10, 0.01, n=2), "psnr": est(0.0, 0.01, n=2)}, est(-0.3, 0.05, n=2), INCONCLUSIVE),  # 2 pairs
])
def test_rule_branches(q, cost, call):
    got, reason = rule(q, cost, 0.02, 0.05, MODES)
    assert got == call, reason
    if call == EITHER and all(e.hi < 0.02 and e.lo > -0.02 for e in q.values()):
        assert reason.startswith("equivalent")


def test_superiority_needs_the_stricter_interval():
    """A difference just outside 0 at 95% but not at 97.5% is not a claim of superiority: 'either', never 3d."""
    q = {"iou": est(-0.005, 0.0045), "psnr": est(-0.005, 0.0045)}
    assert rule(q, est(0.0, 0.05), 0.02, 0.05, MODES)[0] == EITHER


def test_variance_components_recover_the_planted_ones():
    rng = np.random.default_rng(0)
    vs, vf, ve = [], [], []
    for _ in range(300):
        z = rng.normal(0, 0.01, (12, 1)) + rng.normal(0, 0.02, (1, 40)) + rng.normal(0, 0.03, (12, 40))
        a, b, c = variance_components(z)
        vs.append(a), vf.append(b), ve.append(c)
    assert np.mean(vs) == pytest.approx(1e-4, rel=0.15)
    assert np.mean(vf) == pytest.approx(4e-4, rel=0.1)
    assert np.mean(ve) == pytest.approx(9e-4, rel=0.05)


def coverage(seeds: int, frames: int, n: int = 2000) -> float:
    """Share of n simulated paired seeds x frames studies whose 95% interval covers the planted -3%, with seed,
    frame and residual components in the difference and a shared seed level and frame difficulty."""
    rng = np.random.default_rng(seeds * 1000 + frames)
    hits = []
    for _ in range(n):
        shape = (seeds, frames)
        shared = 1 + rng.normal(0, 0.01, (seeds, 1)) + rng.normal(0, 0.05, (1, frames)) + rng.normal(0, 0.015, shape)
        diff = rng.normal(0, 0.008, (seeds, 1)) + rng.normal(0, 0.01, (1, frames)) + rng.normal(0, 0.015, shape)
        e = crossed_diff(0.82 * 0.97 * (shared + diff), 0.82 * shared)
        hits.append(e.lo <= -0.03 <= e.hi)
    return float(np.mean(hits))


@pytest.mark.parametrize("seeds, frames", [(14, 33), (10, 33), (12, 100), (24, 100)])
def test_interval_coverage_at_the_shipped_designs(seeds, frames):
    """95% intervals cover the planted difference 93-97% of the time (2000 studies each) at the CPU comparison
    design (14 seeds x 33 test frames), with fewer seeds, and at the GPU comparison's minimum and cap."""
    assert 0.93 <= coverage(seeds, frames) <= 0.97


@pytest.mark.parametrize("seeds, frames", [(4, 8), (3, 4)])
def test_interval_is_conservative_not_liberal_in_tiny_designs(seeds, frames):
    """With a handful of seeds and frames the variance components are clamped at 0 and the Satterthwaite degrees
    of freedom are few: the interval errs wide (measured 97.6% at 4 x 8, 99.8% at 3 x 4), never narrow."""
    assert coverage(seeds, frames) >= 0.95


def test_cost_interval_coverage():
    """One value per trial (a cost): the paired t interval over seeds covers a planted -30% 93-97% of the time."""
    rng = np.random.default_rng(11)
    hits = []
    for _ in range(3000):
        load = 2.0 * np.exp(rng.normal(0, 0.1, 10))
        e = crossed_diff((load * 0.7 * (1 + rng.normal(0, 0.1, 10)))[:, None], (load * (1 + rng.normal(0, 0.1, 10)))[:, None])
        hits.append(e.lo <= -0.3 <= e.hi)
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_planning_functions_agree():
    comps = (6e-5, 1e-4, 2e-4)
    n = seeds_for(*comps, frames=100, target=0.005)
    assert halfwidth(*comps, n, 100) <= 0.005 < halfwidth(*comps, n - 1, 100)
    assert seeds_for(0.0, 1e-2, 0.0, frames=4, target=0.01) is None  # the frame variance alone is too large


# ----------------------------------------------------------------------------------------------- planted truths

CLEAR = [t for t in TRUTHS if t.name in ("2D 5% worse", "2D 0.5% worse, 30% faster", "identical quality, 2D 30% faster")]
BORDER = [t for t in TRUTHS if "border" in t.name or "null" in t.name]


@pytest.mark.parametrize("truth", CLEAR, ids=lambda t: t.name)
def test_clear_truths_are_called_right(truth):
    """At the shipped CPU design (14 seeds x 33 test frames) with noise at least that of the real confirm stage."""
    r = rates(truth, 14, 33, n=200, seed=1)
    assert r["right"] >= 0.95, r


@pytest.mark.parametrize("truth", BORDER, ids=lambda t: t.name)
def test_border_and_null_truths_are_rarely_called_the_wrong_way(truth):
    r = rates(truth, 14, 33, n=200, seed=2)
    assert r["wrong"] <= 0.025, r


def test_a_broken_rule_would_fail_these_tests():
    """The same simulation with a rule that ignores the margin's uncertainty (point estimates only) calls the
    border truth the wrong way far more often: the rate tests can fail."""
    truth = next(t for t in TRUTHS if t.name.startswith("2D 2.1% worse"))
    rng = np.random.default_rng(3)
    plan = make_plan(14, 33)
    wrong = 0
    for _ in range(100):
        per, trials = generate(truth, 14, 33, Noise(), rng)
        d = decide(per, trials, plan, report_all=False)
        naive = "2d" if all(e.mean > -0.02 for e in d.quality.values()) else "3d"
        wrong += naive == "2d"
    assert wrong / 100 > 0.1


def test_failed_trials_are_excluded_and_their_pairs_counted():
    rng = np.random.default_rng(4)
    truth = Truth("x", -0.05, 0.0, ("3d",), ())
    per, trials = generate(truth, 8, 20, Noise(), rng, fail={"2d": 2, "3d": 1})
    d = decide(per, trials, make_plan(8, 20))
    assert d.n_pairs == 6 and d.dropped_pairs == 2  # seeds 0-1 lose their 2d member (seed 0 its 3d too)
    assert d.failures == {"2d": {"failed": 2, "trials": 8}, "3d": {"failed": 1, "trials": 8}}
    assert d.recommendation == "3d"
    assert all(e.n == 6 for e in d.quality.values())


def test_inconclusive_says_how_many_seeds_would_resolve_it():
    rng = np.random.default_rng(5)
    truth = Truth("x", -0.012, -0.3, (), ())
    noisy = Noise(seed=0.03)
    per, trials = generate(truth, 4, 20, noisy, rng)
    d = decide(per, trials, make_plan(4, 20))
    assert d.recommendation == INCONCLUSIVE
    assert d.seeds_to_resolve is not None and d.seeds_to_resolve > 4
    assert f"about {d.seeds_to_resolve} seeds" in d.reason


def interval_at(e: Crossed, pairs: int, level: float) -> tuple[float, float]:
    """e's t interval at `level` were it measured on `pairs` pairs with its variance components (crossed.crossed_se)."""
    se, df = crossed_se(e.var_seed, e.var_frame, e.var_resid, pairs, e.n_frames)
    h = float(t_dist.ppf(0.5 + level / 2, df)) * se
    return e.mean - h, e.mean + h


def clear_of(margin: float, interval: tuple[float, float]) -> bool:
    """Whether the interval lies wholly on one side of -margin."""
    return interval[0] > -margin or interval[1] < -margin


@pytest.mark.parametrize("quality, deciding, level", [
    ({"iou": est(-0.03, 0.015, var_seed=1e-3), "psnr": est(-0.01, 0.015, var_seed=1e-3)}, ["iou"], 0.975),
    ({"iou": est(-0.012, 0.015, var_seed=1e-3), "psnr": est(-0.01, 0.015, var_seed=2e-3)}, ["iou", "psnr"], 0.95),
], ids=["worse on some metric", "no worse"])
def test_pairs_that_would_resolve_clear_the_margin_and_one_fewer_does_not(quality, deciding, level):
    """Seed variance 1e-3 (the seeds dominate). The pairs pairs_needed returns put the deciding intervals (the metric below -margin, at the rule's level
    for "worse on some metric"; else every interval that reaches -margin) wholly on one side of -margin, and one
    pair fewer leaves one of them across it."""
    from study.analysis.decide import pairs_needed

    n = pairs_needed(quality, 0.02)
    assert n is not None and n > 3
    assert all(clear_of(0.02, interval_at(quality[k], n, level)) for k in deciding)
    assert not all(clear_of(0.02, interval_at(quality[k], n - 1, level)) for k in deciding)


def test_no_number_of_pairs_resolves_an_estimate_on_the_margin():
    """An estimate at -margin: even 1000 pairs leave its interval across it, and pairs_needed says None."""
    from study.analysis.decide import pairs_needed

    e = est(-0.02, 0.015)
    assert not clear_of(0.02, interval_at(e, 1000, 0.95))
    assert pairs_needed({"iou": e}, 0.02) is None


def test_worse_on_some_metric_is_tested_at_the_per_metric_level():
    """Two metrics: "worse on some metric" is a union over both, so each is tested at 97.5% (Bonferroni). An IoU
    whose 95% interval lies below -2% but whose 97.5% interval reaches above it is inconclusive, not 3d."""
    iou = est(-0.03, 0.0095)
    assert iou.hi < -0.02 < iou.with_level(0.975).hi
    q = {"iou": iou, "psnr": est(0.0, 0.01)}
    assert rule(q, est(-0.3, 0.05), 0.02, 0.05, MODES)[0] == INCONCLUSIVE
    assert rule({"iou": iou}, est(-0.3, 0.05), 0.02, 0.05, MODES)[0] == "3d"  # one metric: 95% is its level


# ----------------------------------------------------------------------------------------------- through parquet


def test_study_folder_through_the_cli_matches_the_decision(tmp_path, capsys):
    """A simulated confirm stage written as parquet parts, trials.parquet and plan.json, analysed by the CLI:
    decision.json (strict JSON) holds the same call and intervals as study.analysis.decide on the same rows."""
    from study.analysis.analyze import main

    rng = np.random.default_rng(6)
    truth = TRUTHS[1]  # 0.5% worse, 30% faster
    plan = make_plan(10, 30)
    per, trials = generate(truth, 10, 30, Noise(), rng)
    study = write_study(tmp_path, per, trials, plan)
    assert main([str(study), "--no-renders"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    got = json.loads((study / "report" / "decision.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    mem = decide(per, trials, plan)
    assert got["recommendation"] == mem.recommendation == "2d" and "recommendation: 2d" in out
    for k, e in mem.quality.items():
        assert got["quality"][k]["lo"] == pytest.approx(e.lo) and got["quality"][k]["hi"] == pytest.approx(e.hi)
    assert got["n_pairs"] == 10 and got["design"]["seeds"] == plan["seeds"]
    md = (study / "report" / "decision.md").read_text()
    assert "**Recommendation: 2d**" in md and "10 pairs of 10 planned seeds" in md and "margin" in md
    assert "failed trials of 2d" in md and "No explore-stage records" in md
    csv = pd.read_csv(study / "report" / "decision.csv").set_index("key")
    assert csv.loc["test_heldout_iou", "role"] == "decides (quality)"
    assert csv.loc["epoch_time_s", "role"] == "decides (primary cost)"
    assert "cpu_peak_rss_growth_mb" not in csv.index  # the same in both modes: no information, no row
    assert "cuda_peak_allocated_mb" not in csv.index  # not measured (CPU trials)
    assert math.isfinite(got["cost"]["hi"]) and got["cost"]["hi"] < -0.05


def test_a_growing_error_is_a_deficit():
    """A plan that lists a lower-is-better metric (depth error) among its quality metrics decides on it: the
    challenger, as good and cheaper on the image metrics, with a depth error 30% larger loses; 30% smaller, it
    stays the choice; the decision's quality estimate is the error's reduction, the measure the plain difference."""
    rng = np.random.default_rng(7)
    per, trials = generate(Truth("x", 0.0, -0.3, ("2d",), ()), 8, 20, Noise(), rng)
    plan = make_plan(8, 20)
    assert decide(per, trials, plan).recommendation == "2d"
    plan["quality"] = [*plan["quality"], "test_heldout_depth_err"]
    frames = np.random.default_rng(8).uniform(0.004, 0.006, (1, 20))
    for factor, call in ((1.3, "3d"), (0.7, "2d")):
        err = {"3d": frames * 1.0, "2d": frames * factor}
        per["test_heldout_depth_err_frames"] = [
            (err[m][0] * (1 + 0.01 * np.random.default_rng(i).normal(size=20))).tolist()
            for i, m in enumerate(per["gaussian_mode"])]
        per["test_heldout_depth_err"] = [float(np.mean(v)) for v in per["test_heldout_depth_err_frames"]]
        d = decide(per, trials, plan)
        assert d.recommendation == call, (factor, d.reason)
        assert d.measures["test_heldout_depth_err"].mean == pytest.approx(factor - 1, abs=0.01)
        assert d.quality["test_heldout_depth_err"].mean == pytest.approx(1 - factor, abs=0.01)
