"""Sequential looks at the confirm stage: how many pairs each look has, the interval level its rule runs at, and whether
a look's verdict is settled so the stage may stop before its last planned pair.

Two boundaries (the space's `confirm.boundaries`). O'Brien-Fleming's: look k of K runs the decision rule with its
intervals at z_k = C(K) sqrt(K/k) (K = 2: 99.48% at half the pairs, 95.2% at all of them): strict early looks, the
last close to the fixed design's 95%. Pocock's: one level at every look (K = 2: 97.06%), which stops a clear verdict
at the first look more often and pays with a wider last look; the shipped comparison space uses it, because the
tuning's error, part of every interval, does not shrink with pairs, so only a boundary that spends more of the error
rate early saves trials (Haybittle-Peto's 99.9% almost never stopped; docs/analysis.md). An interim look stops the
stage only on a verdict that more pairs cannot overturn at that strictness: the challenger worse beyond the margin,
or non-inferior and cheaper, or better on every quality metric. "Equivalent" and "inconclusive" wait for the last
look (an equivalence call rests on the absence of a cost difference, which more pairs could still show). Error
rates of the whole procedure with looks: docs/analysis.md (study.analysis.simulate).

    looks = plan_looks(14, 2, "pocock")  # [Look(pairs=7, level=0.9706), Look(pairs=14, level=0.9706)]
    stop = settled(quality, cost, margin, cost_margin, level=looks[0].level)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from scipy.stats import norm

from study.analysis.stats import Crossed

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


def plan_looks(n_pairs: int, n_looks: int, boundaries: str = "obrien-fleming", min_pairs: int = MIN_PAIRS
               ) -> list[Look]:
    """`n_looks` looks, evenly spaced over `n_pairs` pairs (the first with at least `min_pairs`), at O'Brien-Fleming
    or Pocock levels (one look: LEVEL).

    Args:
        n_pairs: the planned pairs (confirm seeds).
        n_looks: looks wanted, the last included (1: the fixed design).
        boundaries: one of BOUNDARIES.
    Returns:
        looks: [K] in order, distinct pair counts, the last with n_pairs; fewer than n_looks when n_pairs is small.
    """
    counts = sorted({max(min_pairs, math.ceil(n_pairs * (k + 1) / n_looks)) for k in range(n_looks)})
    counts = [c for c in counts if c < n_pairs] + [n_pairs]
    if len(counts) == 1:
        return [Look(n_pairs, LEVEL)]
    K = len(counts)
    z = ([OBF_C[K] * math.sqrt(K / (k + 1)) for k in range(K)] if boundaries == "obrien-fleming" else
         [POCOCK_C[K]] * K if boundaries == "pocock" else None)
    if z is None:
        raise ValueError(f"boundaries {boundaries!r}: one of {', '.join(BOUNDARIES)}")
    return [Look(c, round(float(2 * norm.cdf(zk) - 1), 6)) for c, zk in zip(counts, z)]


def looks_of(plan: dict) -> list[Look]:
    """The looks a confirm plan names; a plan without them (the fixed design, or written before looks) has one."""
    return [Look(int(x["pairs"]), float(x["level"])) for x in plan.get("looks") or []] or \
        [Look(len(plan["seeds"]), LEVEL)]


def looks_json(looks: list[Look]) -> list[dict]:
    return [asdict(x) for x in looks]


def settled(quality: dict[str, Crossed], cost: Optional[Crossed], margin: float, cost_margin: float,
            level: float) -> bool:
    """Whether an interim look's verdict, with every interval at `level` (the quality ones Bonferroni-adjusted as in
    study.analysis.decide.rule), is one more pairs cannot overturn: some quality metric worse beyond -margin; or every
    one above -margin and the cost below -cost_margin; or its mirror (the reference as good and cheaper); or every one
    significantly better (at superiority(level))."""
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
