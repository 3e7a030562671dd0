"""Bootstrap intervals and the 2D-vs-3D decision rule (pure numpy/scipy; no study I/O).

Intervals are 95% percentile bootstraps (`scipy.stats.bootstrap`, 9,999 resamples, fixed seed so a report is
reproducible). With fewer than about 8 values a percentile bootstrap is narrower than a true 95% interval: treat
it as a lower bound on the uncertainty. Fewer than 2 values give no interval (NaN bounds).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

N_RESAMPLES = 9999
SEED = 0
MIN_N = 3  # fewer seeds (pairs) than this never decide: a bootstrap of 2 values is just their range


@dataclass(frozen=True)
class Estimate:
    """A mean (or difference of means) with its 95% interval and the number of values behind it."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def fmt(self, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
        """'mean [lo, hi]' (or 'mean' without an interval, 'n/a' without values)."""
        if not math.isfinite(self.mean):
            return "n/a"
        f = lambda v: f"{v * scale:.{digits}g}{unit}"  # noqa: E731
        return f"{f(self.mean)} [{f(self.lo)}, {f(self.hi)}]" if self.has_ci else f"{f(self.mean)} (no CI)"

    def pct(self) -> str:
        """A relative estimate as '+x.x% [lo%, hi%]' (more decimals for differences below 0.1%)."""
        if not math.isfinite(self.mean):
            return "n/a"
        big = max(abs(v) for v in (self.mean, self.lo, self.hi) if math.isfinite(v))
        d = 1 if 100 * big >= 0.1 else 3
        s = f"{100 * self.mean:+.{d}f}%"
        return s + (f" [{100 * self.lo:+.{d}f}%, {100 * self.hi:+.{d}f}%]" if self.has_ci else " (no CI)")


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _finite(x: Sequence[float]) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def _ci(data: tuple[np.ndarray, ...], statistic, paired: bool) -> tuple[float, float]:
    """Percentile bootstrap interval of a vectorised statistic; NaN when any sample has fewer than 2 values."""
    if min(len(d) for d in data) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # constant samples (e.g. parameters per Gaussian) give a zero-width interval
        warnings.simplefilter("ignore")
        r = stats.bootstrap(data, statistic, n_resamples=N_RESAMPLES, paired=paired, vectorized=True,
                            method="percentile", rng=np.random.default_rng(SEED))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def mean_ci(x: Sequence[float]) -> Estimate:
    """Mean of the finite values of x with its bootstrap interval."""
    x = _finite(x)
    if not len(x):
        return NAN
    lo, hi = _ci((x,), lambda a, axis: a.mean(axis), paired=False)
    return Estimate(float(x.mean()), lo, hi, len(x))


def diff_ci(a: Sequence[float], b: Sequence[float], *, paired: bool, relative: bool = False) -> Estimate:
    """mean(a) - mean(b) (divided by mean(b) when relative) with its bootstrap interval.

    paired: a[i] and b[i] belong together (same cell and seed) and are resampled together; pairs with a non-finite
    member are dropped. Unpaired: each sample is resampled on its own.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
    else:
        a, b = _finite(a), _finite(b)
    if not len(a) or not len(b):
        return NAN

    def stat(x, y, axis=-1):
        d = x.mean(axis) - y.mean(axis)
        return d / y.mean(axis) if relative else d

    mean = float(stat(a, b))
    if not math.isfinite(mean):
        return NAN
    lo, hi = _ci((a, b), stat, paired=paired)
    return Estimate(mean, lo, hi, len(a) if paired else min(len(a), len(b)))


# ----------------------------------------------------------------------------------------------- decision rule


@dataclass(frozen=True)
class Verdict:
    """The recommendation ('2d', '3d' or 'inconclusive') and the reason in words."""

    winner: str
    reason: str


def cheaper(costs: dict[str, Estimate]) -> list[str]:
    """Names of the costs on which 2D is lower than 3D: the whole interval of (2d - 3d) / 3d below 0, or the
    point estimate below -5% where there is no interval."""
    return [name for name, e in costs.items()
            if (e.has_ci and e.hi < 0) or (not e.has_ci and math.isfinite(e.mean) and e.mean < -0.05)]


def decide(quality: dict[str, Estimate], costs: dict[str, Estimate], margin: float) -> Verdict:
    """The original plan's rule on relative differences (2d - 3d) / 3d, per quality measure (IoU, PSNR).

    3D when some quality interval lies wholly below -margin; 2D when every quality interval lies above -margin and
    2D is faster or lighter on some cost, or better by more than the margin; inconclusive when an interval straddles
    -margin or fewer than MIN_N seeds stand behind a difference. Higher quality is better.
    """
    m = 100 * margin
    if not quality or any(not math.isfinite(e.mean) for e in quality.values()):
        return Verdict("inconclusive", "no paired measurements of both 2D and 3D to compare yet")
    few = min(e.n for e in quality.values())
    if few < MIN_N or not all(e.has_ci for e in quality.values()):
        lean = ", ".join(f"{k} {100 * e.mean:+.1f}%" for k, e in quality.items())
        return Verdict("inconclusive", f"only {few} seed(s) behind the 2D vs 3D difference (at least {MIN_N} are "
                                       f"needed for an interval to mean anything; point estimates {lean}) — "
                                       f"run more seeds")
    worse = {k: e for k, e in quality.items() if e.hi < -margin}
    if worse:
        what = ", ".join(f"{k} {e.pct()}" for k, e in worse.items())
        return Verdict("3d", f"3D is better by more than the {m:g}% margin (2D vs 3D: {what})")
    straddle = {k: e for k, e in quality.items() if e.lo < -margin}
    if straddle:
        what = ", ".join(f"{k} {e.pct()}" for k, e in straddle.items())
        return Verdict("inconclusive", f"the interval of 2D vs 3D straddles the -{m:g}% margin ({what}) — "
                                       f"run more seeds")
    q = ", ".join(f"{k} {e.pct()}" for k, e in quality.items())
    lower = cheaper(costs)
    if lower:
        return Verdict("2d", f"2D's quality is within the {m:g}% margin of 3D or better ({q}) and it is lower on "
                             f"{', '.join(f'{k} {costs[k].pct()}' for k in lower)}")
    better = [k for k, e in quality.items() if e.lo > margin]
    if better:
        return Verdict("2d", f"2D is better by more than the {m:g}% margin on {', '.join(better)} ({q}), though it "
                             f"is neither faster nor lighter")
    return Verdict("3d", f"2D's quality is within the {m:g}% margin ({q}) but it is neither faster nor lighter, "
                         f"so nothing speaks for switching from 3D")


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points that no other point beats on both lower cost and higher quality, by rising cost."""
    cost, quality = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    front, best = [], -np.inf
    for i in np.lexsort((-quality, cost)):  # by cost, then the better quality first among equal costs
        if np.isfinite(cost[i]) and np.isfinite(quality[i]) and quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.array(front, dtype=int)
