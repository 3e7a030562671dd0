"""The rule's symmetric cases and honest reasons: the reference wins on cost as the challenger does, a reason never
says what its intervals contradict, and the hint for an inconclusive verdict is sized at the level that decides."""

import numpy as np

from study.analysis.decide import EITHER, INCONCLUSIVE, clears, decide, rule
from study.analysis.looks import looks_json, plan_looks, settled
from study.analysis.simulate import Noise, Truth, generate, make_plan
from study.analysis.stats import Crossed

MODES = ["2d", "3d"]


def est(mean: float, half: float, n: int = 10) -> Crossed:
    """A relative-difference estimate with a 95% half-width `half` (se from a t with 20 df)."""
    se = half / 2.086
    return Crossed(mean, mean - half, mean + half, n, se, 20.0, 1e-5, 1e-5, 1e-5, 50)


def test_equal_quality_and_a_cheaper_reference_is_the_reference():
    """Equal within the margin, 2d 40% dearer: the user asked which to use, and 3d is as good and cheaper."""
    q = {"iou": est(0.0, 0.01), "psnr": est(0.0, 0.01)}
    call, reason = rule(q, est(0.40, 0.05), 0.02, 0.05, MODES)
    assert call == "3d", reason
    assert "3d is within the 2% margin" in reason and "cheaper" in reason


def test_a_reference_that_may_be_worse_beyond_the_margin_does_not_win_on_cost():
    """2d possibly better by more than the margin (interval reaching +3%): 3d being cheaper settles nothing."""
    q = {"iou": est(0.015, 0.015), "psnr": est(0.0, 0.01)}
    assert rule(q, est(0.40, 0.05), 0.02, 0.05, MODES)[0] == EITHER


def test_a_cheaper_reference_by_less_than_the_cost_margin_is_either():
    q = {"iou": est(0.0, 0.01), "psnr": est(0.0, 0.01)}
    assert rule(q, est(0.04, 0.01), 0.02, 0.05, MODES)[0] == EITHER


def test_an_interim_look_stops_on_a_cheaper_reference():
    q = {"iou": est(0.0, 0.005), "psnr": est(0.0, 0.005)}
    assert settled(q, est(0.40, 0.05), 0.02, 0.05, level=0.9706)
    assert not settled(q, est(0.0, 0.05), 0.02, 0.05, level=0.9706)


def test_either_names_the_metric_where_one_mode_is_significantly_better():
    """3d significantly better on IoU, tied on foreground PSNR: 'either', and the reason must not claim that
    neither is significantly better."""
    q = {"test_heldout_iou": est(-0.012, 0.004), "test_heldout_psnr_fg": est(0.0, 0.004)}
    call, reason = rule(q, est(0.0, 0.05), 0.02, 0.05, MODES)
    assert call == EITHER
    assert "neither is significantly better" not in reason
    assert "3d is significantly better on IoU" in reason


def test_either_without_any_significant_metric_says_so():
    q = {"test_heldout_iou": est(0.0, 0.004), "test_heldout_psnr_fg": est(0.0, 0.004)}
    call, reason = rule(q, est(0.0, 0.05), 0.02, 0.05, MODES)
    assert call == EITHER and "neither is significantly better on any" in reason


def test_the_resolving_pairs_clear_at_the_level_that_decides():
    """With Pocock's two looks the last look decides at 97.06%: the pairs the hint names must clear the margin at
    that level, not at 95%."""
    rng = np.random.default_rng(3)
    plan = {**make_plan(14, 33), "looks": looks_json(plan_looks(14, 2, "pocock"))}
    truth = Truth("2D 1.5% worse", -0.015, 0.0, (), ())
    checked = 0
    for _ in range(30):
        per, trials = generate(truth, 14, 33, Noise(), rng)
        d = decide(per, trials, plan)
        if d.recommendation != INCONCLUSIVE or d.seeds_to_resolve is None:
            continue
        level = d.design["look"]["level"]
        assert level > 0.96
        for e in d.quality.values():
            if e.lo <= -0.02 <= e.hi:
                assert clears(e, 0.02, d.seeds_to_resolve, np.zeros(0), level), (d.seeds_to_resolve, e)
        checked += 1
    assert checked >= 5
