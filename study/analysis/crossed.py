"""The confirm stage's interval (pure numpy/scipy; no study I/O): `crossed_diff`, a t interval for a paired seeds x
test-frames design. It uses the seed, frame and residual variance components of a two-way random-effects model and
Satterthwaite's degrees of freedom. `seeds_for`, `halfwidth` and `detectable` plan such a design, and `with_tuning`
widens an interval by the tuning's error. Its coverage is simulated in tests/test_decide.py and docs/analysis.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from scipy import stats

from study.analysis.stats import SEED, Estimate


@dataclass(frozen=True)
class Crossed(Estimate):
    """A difference estimated from a balanced seeds x test-frames design, with its t interval.

    `var_seed`, `var_frame`, `var_resid` are the variance components of the (linearised) per-(seed, frame) difference
    (seed-to-seed, frame-to-frame, and the rest). `se` and `df` are the standard error of the estimate and its
    Satterthwaite degrees of freedom. `n` is the number of seeds (pairs), `n_frames` the number of test frames."""

    se: float = float("nan")
    df: float = float("nan")
    var_seed: float = float("nan")
    var_frame: float = float("nan")
    var_resid: float = float("nan")
    n_frames: int = 0
    level: float = 0.95

    def turned(self) -> "Crossed":
        """The same estimate with its sign turned (-mean, [-hi, -lo]): a lower-is-better metric's reduction."""
        return Crossed(-self.mean, -self.hi, -self.lo, self.n, self.se, self.df, self.var_seed, self.var_frame,
                       self.var_resid, self.n_frames, self.level)

    def with_level(self, level: float) -> "Crossed":
        """The same estimate with a `level` interval (e.g. 0.975 for a test at half the error rate)."""
        if not (math.isfinite(self.se) and math.isfinite(self.df)):
            return self
        h = float(stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return Crossed(self.mean, self.mean - h, self.mean + h, self.n, self.se, self.df, self.var_seed,
                       self.var_frame, self.var_resid, self.n_frames, level)


def variance_components(z: np.ndarray) -> tuple[float, float, float]:
    """(seed, frame, residual) variance components of a complete [S, F] matrix by two-way ANOVA without replication
    (method of moments, each component clamped at 0). With one frame: (variance over seeds, 0, 0).

    Args:
        z: [S, F] values, seeds x test frames, all finite.
    Returns:
        var_seed: seed-to-seed variance component.
        var_frame: frame-to-frame variance component.
        var_resid: residual (seed x frame) variance, the ANOVA's error mean square.
    """
    z = np.asarray(z, dtype=float)
    s, f = z.shape
    if f == 1:
        return (float(z[:, 0].var(ddof=1)) if s > 1 else float("nan")), 0.0, 0.0
    grand = z.mean()
    ms_s = f * ((z.mean(1) - grand) ** 2).sum() / (s - 1) if s > 1 else float("nan")
    ms_f = s * ((z.mean(0) - grand) ** 2).sum() / (f - 1)
    resid = z - z.mean(1, keepdims=True) - z.mean(0, keepdims=True) + grand
    ms_e = (resid ** 2).sum() / ((s - 1) * (f - 1)) if s > 1 else float("nan")
    return max(0.0, (ms_s - ms_e) / f), max(0.0, (ms_f - ms_e) / s), float(ms_e)


def crossed_se(var_seed: float, var_frame: float, var_resid: float, seeds: int, frames: int) -> tuple[float, float]:
    """(standard error, Satterthwaite df) of the mean of a seeds x frames design with these variance components.

    Var(mean) = var_seed / S + var_frame / F + var_resid / (S F). It is written as (MS_S + MS_F - MS_E) / (S F) with
    expected mean squares. MS_S = F var_seed + var_resid, with S - 1 df. MS_F = S var_frame + var_resid, with F - 1
    df. MS_E = var_resid, with (S - 1)(F - 1) df. The df of that combination comes from Satterthwaite's formula.

    Args:
        var_seed, var_frame, var_resid: the variance components (variance_components); seeds, frames: S and F.
    Returns:
        se, df: NaN with fewer than 2 seeds; df in [1, S F - 1].
    """
    s, f = seeds, frames
    if s < 2:
        return float("nan"), float("nan")
    if f == 1:
        return math.sqrt(var_seed / s), float(s - 1)
    ms = [(f * var_seed + var_resid, s - 1), (s * var_frame + var_resid, f - 1)]
    if var_resid > 0:
        ms.append((-var_resid, (s - 1) * (f - 1)))
    total = sum(m for m, _ in ms)
    var = total / (s * f)
    denom = sum(m * m / d for m, d in ms if d > 0)
    df = total * total / denom if denom > 0 else float(s - 1)
    return math.sqrt(max(var, 0.0)), max(1.0, min(df, float(s * f - 1)))


def crossed_diff(a: np.ndarray, b: np.ndarray, *, relative: bool = True, level: float = 0.95) -> Crossed:
    """mean(a) - mean(b), divided by mean(b) when relative, for paired [S, F] matrices (row s: the pair of seed s;
    column f: test frame f, the same frames for every trial), with a t interval.

    The relative difference r = mean(a) / mean(b) - 1 is linearised (delta method): z = (a - (1 + r) b) / mean(b),
    whose mean is 0 and whose variance is that of the estimate of r. The absolute difference uses z = a - b. The
    variance of mean(z) comes from the two-way random-effects decomposition of z (variance_components), so seeds,
    frames and their interaction each count. One column (no frames, e.g. a cost per trial) is the paired t
    interval over seeds. Rows with a non-finite value are dropped first.

    Args:
        a: [S, F] values of side A (e.g. mode A), seeds x test frames.
        b: [S, F] values of side B, paired with a row by row.
        relative: the relative difference mean(a) / mean(b) - 1 instead of mean(a) - mean(b).
        level: the t interval's coverage.
    Returns:
        estimate: a Crossed with the difference, its interval, se, df and variance components (NaN below 2 seeds).
    Raises:
        ValueError: a and b differ in shape.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired matrices differ in shape: {a.shape} vs {b.shape}")
    keep = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = a[keep], b[keep]
    s, f = a.shape
    if s == 0 or f == 0:
        return Crossed(float("nan"), float("nan"), float("nan"), 0)
    mb = b.mean()
    if relative:
        if not mb:
            return Crossed(float("nan"), float("nan"), float("nan"), s)
        r = a.mean() / mb - 1
        z = (a - (1 + r) * b) / mb
    else:
        r = a.mean() - mb
        z = a - b
    if s < 2:
        return Crossed(float(r), float("nan"), float("nan"), s, n_frames=f, level=level)
    comps = variance_components(z)
    se, df = crossed_se(*comps, s, f)
    h = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Crossed(float(r), float(r - h), float(r + h), s, se, df, *comps, n_frames=f, level=level)


def halfwidth(var_seed: float, var_frame: float, var_resid: float, seeds: int, frames: int,
              level: float = 0.95) -> float:
    """Expected half-width of the `level` interval of a seeds x frames design with these variance components.

    Args:
        var_seed: seed-to-seed variance component.
        var_frame: frame-to-frame variance component.
        var_resid: residual variance component.
        seeds: S, the number of seeds.
        frames: F, the number of test frames.
        level: the interval's coverage.
    Returns:
        halfwidth: t quantile x standard error; inf with fewer than 2 seeds.
    """
    se, df = crossed_se(var_seed, var_frame, var_resid, seeds, frames)
    return float(stats.t.ppf(0.5 + level / 2, df)) * se if math.isfinite(se) else float("inf")


def detectable(var_seed: float, var_frame: float, var_resid: float, seeds: int, frames: int,
               power: float = 0.8, level: float = 0.95) -> float:
    """How far beyond a boundary (the margin) a true difference must lie to be shown beyond it with `power`:
    (t_{level} + t_{power}) x standard error.

    Args:
        var_seed: seed-to-seed variance component.
        var_frame: frame-to-frame variance component.
        var_resid: residual variance component.
        seeds: S, the number of seeds.
        frames: F, the number of test frames.
        power: the chance of showing the difference beyond the boundary.
        level: the interval's coverage.
    Returns:
        distance: the detectable distance beyond the boundary; inf with fewer than 2 seeds.
    """
    se, df = crossed_se(var_seed, var_frame, var_resid, seeds, frames)
    if not math.isfinite(se):
        return float("inf")
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * se)


def seeds_for(var_seed: float, var_frame: float, var_resid: float, frames: int, target: float,
              level: float = 0.95, most: int = 1000) -> Optional[int]:
    """Fewest seeds (at least 2) whose expected interval half-width is at most `target`. None when even `most`
    seeds do not get there: the frame-to-frame variance alone, var_frame / F, sets a floor, and more test frames
    are needed then. Vectorised over the candidate numbers of seeds (halfwidth, one at a time, is the reference).

    Args:
        var_seed: seed-to-seed variance component.
        var_frame: frame-to-frame variance component.
        var_resid: residual variance component.
        frames: F, the number of test frames.
        target: the half-width wanted, in the difference's units.
        level: the interval's coverage.
        most: the most seeds tried.
    Returns:
        seeds: the fewest seeds in [2, most] that reach `target`, or None.
    """
    s = np.arange(2, most + 1, dtype=float)
    f = float(frames)
    if frames == 1:
        var, df = var_seed / s, s - 1
    else:
        terms = [(f * var_seed + var_resid, s - 1), (s * var_frame + var_resid, np.full_like(s, f - 1))]
        if var_resid > 0:
            terms.append((np.full_like(s, -var_resid), (s - 1) * (f - 1)))
        total = sum(m for m, _ in terms)
        var = total / (s * f)
        denom = sum(m * m / d for m, d in terms)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(denom > 0, total * total / denom, s - 1)
        df = np.clip(df, 1.0, s * f - 1)
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(np.maximum(var, 0.0))
    ok = np.nonzero(half <= target)[0]
    return int(s[ok[0]]) if len(ok) else None


@dataclass(frozen=True)
class TunedCrossed(Crossed):
    """A Crossed difference whose error also holds the tuning's: the estimate minus the truth is t(df) x conf_se
    plus a draw of `tuning` (draws of the tuning's contribution). Intervals come from the quantiles of that sum
    (Monte Carlo, fixed seed), so a skewed or heavy-tailed tuning error is covered as it is; `se` is the root mean
    square of the whole error."""

    conf_se: float = float("nan")
    tuning: tuple = ()

    def with_level(self, level: float) -> "TunedCrossed":
        lo, hi = tuned_interval(self.mean, self.conf_se, self.df, np.asarray(self.tuning), level)
        return replace(self, lo=lo, hi=hi, level=level)


def tuned_interval(mean: float, se: float, df: float, tuning: np.ndarray, level: float,
                   samples: int = 40_000) -> tuple[float, float]:
    """The `level` interval for the truth when estimate - truth = t(df) x se + a draw of `tuning` [draws].

    Args:
        mean: the estimate.
        se: standard error of the t part of the error.
        df: degrees of freedom of the t part.
        tuning: [draws] draws of the tuning's contribution to the error.
        level: the interval's coverage.
        samples: Monte Carlo samples of the error (fixed seed).
    Returns:
        lo: the interval's lower bound.
        hi: the interval's upper bound.
    """
    rng = np.random.default_rng(SEED)
    err = stats.t.rvs(df, size=samples, random_state=rng) * se + rng.choice(tuning, samples)
    q_lo, q_hi = np.quantile(err, [(1 - level) / 2, (1 + level) / 2])
    return float(mean - q_hi), float(mean - q_lo)


def with_tuning(e: Crossed, tuning: np.ndarray) -> Crossed:
    """`e` with the tuning's error draws added (TunedCrossed), at its own level; `e` itself without draws or se.

    Args:
        e: the confirm stage's estimate.
        tuning: [draws] draws of the tuning's contribution to the error.
    Returns:
        estimate: a TunedCrossed with se = sqrt(e.se^2 + mean(tuning^2)), or e when it has no finite se or df.
    """
    if not (len(tuning) and math.isfinite(e.se) and math.isfinite(e.df)):
        return e
    lo, hi = tuned_interval(e.mean, e.se, e.df, tuning, e.level)
    se = math.sqrt(e.se ** 2 + float(np.mean(tuning ** 2)))
    return TunedCrossed(e.mean, lo, hi, e.n, se, e.df, e.var_seed, e.var_frame, e.var_resid, e.n_frames, e.level,
                        conf_se=e.se, tuning=tuple(float(x) for x in tuning))
