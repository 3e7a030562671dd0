"""Sequential looks at the confirm stage: how many pairs each look has, the interval level its rule runs at, and whether
a look's verdict is settled so the stage may stop before its last planned pair.

Two boundaries (the space's `confirm.boundaries`). O'Brien-Fleming's: look k of K runs the decision rule with its
intervals at z_k = C(K) sqrt(K/k) (K = 2: 99.48% at half the pairs, 95.2% at all of them). Its early looks are
strict, the last close to the fixed design's 95%. Pocock's: one level at every look (K = 2: 97.06%). It stops a clear
verdict at the first look more often and pays with a wider last look. The shipped comparison space uses it. It does
so because the tuning's error, part of every interval, does not shrink with pairs. So only a boundary that spends
more of the error rate early saves trials (Haybittle-Peto's 99.9% almost never stopped; docs/analysis.md).

An interim look stops the stage only on a verdict that more pairs cannot overturn at that strictness. Such verdicts are:
the challenger worse beyond the margin, or non-inferior and cheaper, or better on every quality metric. "Equivalent" and
"inconclusive" wait for the last look. An equivalence call rests on the absence of a cost difference, which more pairs
could still show. Error rates of the whole procedure with looks: docs/analysis.md (study.analysis.simulate).

    looks = plan_looks(14, 2, "pocock")  # [Look(pairs=7, level=0.9706), Look(pairs=14, level=0.9706)]
    stop = settled(quality, cost, margin, cost_margin, level=looks[0].level)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.optimize import brentq
from scipy.stats import multivariate_normal, norm

from study.analysis.crossed import Crossed

LEVEL = 0.95  # the study's interval level (the fixed design's)
MIN_PAIRS = 3  # fewer pairs decide nothing (study.analysis.decide), so no look comes earlier
# the boundaries for K equally spaced looks at a two-sided 5% (Jennison & Turnbull 2000, tables 2.1 and 2.3):
# O'Brien-Fleming's z_k = C(K) sqrt(K / k), strict early; Pocock's z_k = C(K) at every look, which stops earlier and
# pays with a wider last look
OBF_C = {1: 1.960, 2: 1.977, 3: 2.004, 4: 2.024, 5: 2.040}
POCOCK_C = {1: 1.960, 2: 2.178, 3: 2.289, 4: 2.361, 5: 2.413}
BOUNDARIES = ("obrien-fleming", "pocock")


@dataclass(frozen=True)
class Look:
    pairs: int  # the first `pairs` planned seeds (pairs of trials) are in when the look is taken
    level: float  # the rule's interval level at this look


def plan_looks(n_pairs: int, n_looks: int, boundaries: str = "obrien-fleming", min_pairs: int = MIN_PAIRS,
               common: float = 0.0) -> list[Look]:
    """`n_looks` looks, evenly spaced over `n_pairs` pairs (the first with at least `min_pairs`), at O'Brien-Fleming
    or Pocock levels (one look: LEVEL), for looks whose estimates share `common` of the last look's error variance.

    The tabled constants assume independent increments (common = 0). The tuning's error and the test frames' are
    the same at every look. So the looks' estimates agree more than that, and the tabled levels spend less than 5%.
    With common > 0 the constant is solved for the looks' correlations (`look_correlations`, `boundary_constant`).

    Args:
        n_pairs: the planned pairs (confirm seeds).
        n_looks: looks wanted, the last included (1: the fixed design).
        boundaries: one of BOUNDARIES.
        common: share of the last look's error variance that every look shares (`common_share`), in [0, 1).
    Returns:
        looks: [K] in order, distinct pair counts, the last with n_pairs; fewer than n_looks when n_pairs is small.
    """
    counts = sorted({max(min_pairs, math.ceil(n_pairs * (k + 1) / n_looks)) for k in range(n_looks)})
    counts = [c for c in counts if c < n_pairs] + [n_pairs]
    if len(counts) == 1:
        return [Look(n_pairs, LEVEL)]
    K = len(counts)
    if boundaries not in BOUNDARIES:
        raise ValueError(f"boundaries {boundaries!r}: one of {', '.join(BOUNDARIES)}")
    shape = [math.sqrt(K / (k + 1)) if boundaries == "obrien-fleming" else 1.0 for k in range(K)]
    c = ((OBF_C if boundaries == "obrien-fleming" else POCOCK_C)[K] if common <= 0 else
         boundary_constant(shape, look_correlations(counts, common), 1 - LEVEL))
    return [Look(n, round(float(2 * norm.cdf(c * w) - 1), 6)) for n, w in zip(counts, shape)]


def look_correlations(counts: list[int], common: float) -> np.ndarray:
    """Correlations of the looks' estimates when `common` of the last look's error variance is shared by every look
    and the rest falls as 1 / pairs (nested looks: the covariance of two is the later one's variance).

    Args:
        counts: [K] pairs at each look, ascending.
        common: shared share of the last look's variance, in [0, 1).
    Returns:
        corr: [K, K].
    """
    n = np.asarray(counts, float)
    later = np.maximum.outer(n, n)
    cov = common + (1 - common) * n[-1] / later
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def boundary_constant(shape: list[float], corr: np.ndarray, alpha: float) -> float:
    """C such that P(|Z_k| < C shape_k at every look k) = 1 - alpha, Z ~ N(0, corr) (scipy's multivariate normal
    cdf over the box; Brent's root)."""
    k = len(shape)
    w = np.asarray(shape, float)

    def inside(c: float) -> float:
        return float(multivariate_normal.cdf(c * w, mean=np.zeros(k), cov=corr, lower_limit=-c * w)) - (1 - alpha)

    return float(brentq(inside, 1.0, 6.0, xtol=1e-5))


def common_share(tuning_var: float, var_seed: float, var_frame: float, var_resid: float, pairs: int,
                 frames: int) -> float:
    """The share of the last look's error variance that every look shares: the tuning's error (`tuning_var`, its
    mean square) and the test frames' (the same frames at every look). The seeds' part falls as 1 / pairs. It is 0
    where a component is unknown (the tabled, conservative levels)."""
    common = tuning_var + var_frame / frames
    falling = (var_seed + var_resid / frames) / pairs
    total = common + falling
    return float(common / total) if math.isfinite(total) and total > 0 and falling > 0 else 0.0


def looks_of(plan: dict) -> list[Look]:
    """The looks a confirm plan names; a plan without them (the fixed design, or written before looks) has one."""
    return [Look(int(x["pairs"]), float(x["level"])) for x in plan.get("looks") or []] or \
        [Look(len(plan["seeds"]), LEVEL)]


def looks_json(looks: list[Look]) -> list[dict]:
    return [asdict(x) for x in looks]


def settled(quality: dict[str, Crossed], cost: Optional[Crossed], margin: float, cost_margin: float,
            level: float) -> bool:
    """Whether an interim look's verdict is one more pairs cannot overturn. Every interval is at `level` (the quality
    ones Bonferroni-adjusted as in study.analysis.decide.rule). Such verdicts: some quality metric worse
    beyond -margin. Or every one above -margin and the cost below -cost_margin. Or its mirror (the reference as good
    and cheaper). Or every one significantly better (at superiority(level))."""
    if not quality or not all(e.has_ci for e in quality.values()):
        return False
    per_metric = {k: e.with_level(1 - (1 - level) / len(quality)) for k, e in quality.items()}
    if any(e.hi < -margin for e in per_metric.values()):
        return True
    if cost is not None and cost.has_ci:
        priced = cost.with_level(level)
        if all(e.lo > -margin for e in per_metric.values()) and priced.hi < -cost_margin:
            return True
        if all(e.hi < mirrored(margin) for e in per_metric.values()) and priced.lo > mirrored(cost_margin):
            return True
    return all(e.with_level(superiority(level)).lo > 0 for e in quality.values())


def mirrored(margin: float) -> float:
    """A relative margin seen from the other mode: (r - c) / c > -margin  <=>  (c - r) / r < margin / (1 - margin)."""
    return margin / (1 - margin)


def superiority(level: float) -> float:
    """The level of "significantly better" beside an interval level (95% -> 97.5%): the two directions together
    claim a difference that is not there at most 1 - level of the time."""
    return 1 - (1 - level) / 2
