"""The deciding tuning: each mode's optimum of a tuned key on a log grid at the confirm cell, and the edge rule.

Pure functions (no Ray, no I/O), shared by the study's tuning rounds (study/runner/run.py), the confirm planner, the
decision, the planted-truth simulation and the brute-force reference (bench/reference.py).

A mode's choice is the grid value with the best mean validation score over the round's seeds; a diverged trial
(NaN score) counts as the worst score. The choice is *bracketed* when a tried value on each side of it scores worse,
or when it sits on a hard limit of the key (an optimum there is an answer). Otherwise it is at an edge. Then the
study widens that end of the grid by `widen_points` values at the grid's own log step and tunes again, at most
`max_widen` times. A choice still at an edge after that makes the decision "inconclusive".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import stats

LOW, HIGH = "low", "high"
BRACKETED = "bracketed"


def log_grid(low: float, high: float, points: int) -> list[float]:
    """`points` values from low to high, evenly spaced in log (rounded to 4 significant digits, so that a value is
    the same number in a plan, a trial's config and a table)."""
    if points < 2 or not 0 < low < high:
        raise ValueError(f"log grid needs 0 < low < high and at least 2 points (got {low}, {high}, {points})")
    return [float(f"{v:.4g}") for v in np.geomspace(low, high, points)]


def log_step(values: Sequence[float]) -> float:
    """The grid's ratio between neighbours (the geometric mean of the ratios)."""
    v = sorted(values)
    return float(math.exp((math.log(v[-1]) - math.log(v[0])) / (len(v) - 1)))


def widened(values: Sequence[float], side: str, points: int, limit: Optional[float] = None) -> list[float]:
    """`points` new values beyond the `side` end of the grid at its log step, stopping at a hard `limit`."""
    v, step = sorted(values), log_step(values)
    new = []
    for i in range(1, points + 1):
        x = v[-1] * step ** i if side == HIGH else v[0] / step ** i
        if limit is not None and (x >= limit if side == HIGH else x <= limit):
            new.append(float(limit))
            break
        new.append(float(f"{x:.4g}"))
    return sorted(set(new) - set(v))


@dataclass
class Curve:
    """One mode's validation score against one tuned key: values ascending, the mean and standard error over seeds
    at each (NaN scores counted as the worst), and the number of finite runs."""

    values: list[float]
    mean: list[float]
    se: list[float]
    runs: list[int]
    diverged: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
                for k, v in asdict(self).items()}


def curve(values: Sequence[float], scores: Sequence[float], maximize: bool = True) -> Curve:
    """The curve of a key from one run per (value, score): scores of diverged runs (NaN) count as the worst value
    seen (and are counted in `diverged`), so a value that diverges never wins."""
    values, scores = np.asarray(values, float), np.asarray(scores, float)
    finite = scores[np.isfinite(scores)]
    worst = (finite.min() if maximize else finite.max()) if finite.size else 0.0
    filled = np.where(np.isfinite(scores), scores, worst)
    out = Curve([], [], [], [], [])
    for v in sorted(set(values.tolist())):
        at = values == v
        s, ok = filled[at], np.isfinite(scores[at])
        out.values.append(float(v))
        out.mean.append(float(s.mean()))
        out.se.append(float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan"))
        out.runs.append(int(ok.sum()))
        out.diverged.append(int((~ok).sum()))
    return out


def best_index(c: Curve, maximize: bool = True) -> int:
    """Index of the best mean (ties: the lower value)."""
    m = np.asarray(c.mean, float)
    return int(np.argmax(m) if maximize else np.argmin(m))


def edge(c: Curve, hard_low: Optional[float] = None, hard_high: Optional[float] = None,
         maximize: bool = True) -> str:
    """BRACKETED, or the end (LOW / HIGH) the best value sits at: the first or last value tried, unless that is a
    hard limit of the key (an optimum on a hard limit is an answer, not an edge)."""
    i = best_index(c, maximize)
    if i == 0 and not (hard_low is not None and math.isclose(c.values[0], hard_low)):
        return LOW
    if i == len(c.values) - 1 and not (hard_high is not None and math.isclose(c.values[-1], hard_high)):
        return HIGH
    return BRACKETED


def unbracketed_reason(key: str, mode: str, side: str, c: Curve, widenings: int) -> str:
    """The decision's reason when tuning could not bracket a mode's optimum."""
    end = c.values[0] if side == LOW else c.values[-1]
    return (f"tuning did not bracket the optimum of {key} for {mode}: the best value tried is the {side} end of the "
            f"range ({end:.4g}) after {widenings} widening(s)")


@dataclass
class TuningRun:
    """One tuning trial's outcome: NaN score when it diverged, failed or has no validation score."""

    mode: str
    value: float
    seed: int
    score: float
    round: int = 0  # 0: the first grid; r > 0: the r-th widening round
    others: dict[str, float] = field(default_factory=dict)  # the run's other validation metrics (each deciding
    # quality metric's validation twin), for that metric's own tuning error


def widenings(runs: Sequence[TuningRun], mode: str) -> int:
    """Widening rounds `mode` has had: the rounds it trained in after the first."""
    return max(len({r.round for r in runs if r.mode == mode}) - 1, 0)


def tried(runs: Sequence[TuningRun], mode: str) -> list[float]:
    return sorted({r.value for r in runs if r.mode == mode})


def mode_curve(runs: Sequence[TuningRun], mode: str, maximize: bool = True) -> Curve:
    rows = [r for r in runs if r.mode == mode]
    return curve([r.value for r in rows], [r.score for r in rows], maximize)


def next_values(spec, modes: Sequence[str], runs: Sequence[TuningRun], maximize: bool = True) -> dict[str, list[float]]:
    """The values each mode trains at in the next round: the first grid when nothing ran yet. Then each mode whose
    choice is at an end, and that has widened fewer than `spec.max_widen` times, gets `spec.widen_points` values
    beyond that end (never past a hard limit). An empty dict: tuning is done."""
    if not runs:
        return {m: log_grid(spec.low, spec.high, spec.points) for m in modes}
    out = {}
    for m in modes:
        side = edge(mode_curve(runs, m, maximize), spec.hard_low, spec.hard_high, maximize)
        if side == BRACKETED or widenings(runs, m) >= spec.max_widen:
            continue
        new = widened(tried(runs, m), side, spec.widen_points, spec.hard_high if side == HIGH else spec.hard_low)
        if new:
            out[m] = new
    return out


def summary(spec, modes: Sequence[str], runs: Sequence[TuningRun], maximize: bool = True,
            higher: Optional[dict[str, bool]] = None) -> dict:
    """JSON-ready outcome per mode: the curve, the chosen value, whether it is bracketed and the widenings. Also the
    reason the decision must be inconclusive when it is not bracketed. And `others`: the curve of each other
    validation metric the runs carry, against the same values (`higher`: whether higher is better, per metric;
    default yes)."""
    out = {}
    for m in modes:
        c = mode_curve(runs, m, maximize)
        side = edge(c, spec.hard_low, spec.hard_high, maximize)
        i = best_index(c, maximize)
        w = widenings(runs, m)
        rows = [r for r in runs if r.mode == m]
        keys = sorted({k for r in rows for k, v in r.others.items() if math.isfinite(v)})  # never measured: none
        out[m] = {"key": spec.key, "chosen": c.values[i], "edge": side, "widenings": w,
                  "range": [c.values[0], c.values[-1]], "first_range": [spec.low, spec.high],
                  "curve": c.to_json(),
                  "others": {k: curve([r.value for r in rows], [r.others.get(k, float("nan")) for r in rows],
                                      (higher or {}).get(k, True)).to_json() for k in keys},
                  "reason": None if side == BRACKETED else unbracketed_reason(spec.key, m, side, c, w)}
    return out


NEAR = 5  # values around the choice whose run-to-run noise decides the selection


def near_best(c: dict, maximize: bool = True) -> np.ndarray:
    """Indices of a JSON curve's NEAR best values, best first."""
    m = np.asarray(c["mean"], float)
    return np.argsort(-m if maximize else m)[:NEAR]


def quadratic_residuals(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y minus the least-squares quadratic in x through it. Shapes [values] -> [values]."""
    return y - np.polyval(np.polyfit(x, y, 2), x)


COLLAPSED = 0.10  # a value whose mean score lies this far (relative) below the best one has collapsed: a cliff that
# no selection picks, which a quadratic in log(value) would bend to (the bank of real runs: lr 0.128 and 0.256)


def kept_values(c: dict, maximize: bool = True) -> np.ndarray:
    """Indices (ascending) of a JSON curve's values the stand-in is fitted on: every value but those that collapsed
    (COLLAPSED below the best mean), at least the 4 best."""
    m = np.asarray(c["mean"], float) * (1 if maximize else -1)
    best = m.max()
    keep = m >= best - COLLAPSED * abs(best)
    keep[np.argsort(-m)[:4]] = True
    return np.flatnonzero(keep)


def _curve_arrays(c: dict, maximize: bool, at: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(values), the means signed so that higher is better, and the runs per value (diverged included, at least
    1), at the indices `at` (default: kept_values). Shapes [kept]."""
    i = kept_values(c, maximize) if at is None else at
    x = np.log(np.asarray(c["values"], float))[i]
    y = np.asarray(c["mean"], float)[i] * (1 if maximize else -1)
    runs = np.asarray(c["runs"], float) + np.asarray(c.get("diverged") or [0] * len(c["values"]), float)
    return x, y, np.maximum(runs[i], 1)


def pooled_sd(c: dict, maximize: bool = True) -> float:
    """The run-to-run standard deviation of a curve's scores (JSON curve of `summary`). It is pooled over its NEAR
    best values with replicates (the noise where the selection happens; far values score lower and may vary less).
    Without replicates, it is the residual sd of a quadratic in log(value) (NaN with fewer than 4 values)."""
    pairs = [(c["se"][i] ** 2 * c["runs"][i], c["runs"][i] - 1) for i in near_best(c, maximize)
             if c["se"][i] is not None and c["runs"][i] > 1]
    if pairs:
        return math.sqrt(sum(v * d for v, d in pairs) / sum(d for _, d in pairs))
    x, y, _ = _curve_arrays(c, maximize)
    if len(x) < 4:
        return float("nan")
    return float(np.sqrt((quadratic_residuals(x, y) ** 2).sum() / (len(x) - 3)))


LACK_OF_FIT = 0.05  # level of the F test that switches the draws from the quadratic to the concave fit


def quadratic_residual_f(c: dict, maximize: bool = True) -> float:
    """F statistic of a quadratic in log(value) through a JSON curve's means, against their run-to-run noise: the
    weighted residual mean square (values - 3 degrees of freedom) over pooled_sd^2. NaN with 3 values or fewer."""
    x, y, n = _curve_arrays(c, maximize)
    sd = pooled_sd(c, maximize)
    if len(x) <= 3 or not math.isfinite(sd) or sd <= 0:
        return float("nan")
    return float((quadratic_residuals(x, y) ** 2 * n).sum() / (len(x) - 3)) / sd ** 2


def lacks_fit(c: dict, maximize: bool = True, level: float = LACK_OF_FIT) -> bool:
    """Whether the quadratic misses the curve's shape beyond its noise (F test at `level`): a peaked curve measured
    precisely enough to show it."""
    f = quadratic_residual_f(c, maximize)
    return math.isfinite(f) and f > stats.f.ppf(1 - level, len(kept_values(c, maximize)) - 3, noise_df(c, maximize))


def concave_fits(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The concave piecewise-linear functions with knots at x (ascending) nearest to each row of y in weighted least
    squares (slopes that may only fall), at x. Exact: the fit on each set of knots where the slope may change, the
    feasible one nearest (2^(values-2) sets, every row at once). Keeps a peak that a quadratic flattens.
    Shapes: x, w [values], y [rows, values] -> [rows, values]."""
    k = len(x)
    basis = np.stack([np.ones(k), x - x[0]] + [-np.maximum(x - x[j], 0) for j in range(1, k - 1)], 1)  # [k, k]
    out, best = np.empty(y.shape), np.full(len(y), np.inf)
    for r in range(k - 1):
        for bends in itertools.combinations(range(2, k), r):
            cols = [0, 1, *bends]
            coef = (y * w) @ np.linalg.pinv(basis[:, cols] * w[:, None]).T  # [rows, cols]
            fit = coef @ basis[:, cols].T
            res = (((fit - y) * w) ** 2).sum(1)
            take = (coef[:, 2:] >= 0).all(1) & (res < best)
            out[take], best[take] = fit[take], res[take]
    return out


def peak_bounds(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the peak of each concave row of g near its best knot i. The lower comes from the parabola through i
    and its neighbours (right for a smooth top). The upper is where the secants beyond them cross (the most a concave
    curve can rise; right for a peak). At an end of x, g[i] twice. Shapes: x [values], g [rows, values] -> (low,
    high) [rows] each."""
    rows, k = g.shape
    r = np.arange(rows)
    i = np.argmax(g, 1)
    top = g[r, i]
    inner = (i > 0) & (i < k - 1)
    ic = np.clip(i, 1, k - 2)
    x0, x1, x2 = x[ic - 1], x[ic], x[ic + 1]
    g0, g1, g2 = g[r, ic - 1], g[r, ic], g[r, ic + 1]
    # the parabola through the best knot and its neighbours: a (x - x1)^2 + b (x - x1) + g1
    d0, d2 = x0 - x1, x2 - x1
    a = ((g0 - g1) / d0 - (g2 - g1) / d2) / (d0 - d2)
    b = (g0 - g1) / d0 - a * d0
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.clip(x1 - b / (2 * np.where(a < 0, a, -1.0)), x0, x2)
    low = np.where(inner & (a < 0), a * (vertex - x1) ** 2 + b * (vertex - x1) + g1, top)
    high = low.copy()
    for lo, hi in ((i - 1, i), (i, i + 1)):
        ok = inner & (lo >= 1) & (hi <= k - 2)
        lo_, hi_ = np.clip(lo, 1, k - 2), np.clip(hi, 1, k - 2)
        rise = (g[r, lo_] - g[r, lo_ - 1]) / (x[lo_] - x[lo_ - 1])
        fall = (g[r, hi_ + 1] - g[r, hi_]) / (x[hi_ + 1] - x[hi_])  # hi_ <= k - 2: its right neighbour exists
        ok &= (rise > 0) & (fall < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.clip((g[r, hi_] - g[r, lo_] - fall * x[hi_] + rise * x[lo_]) / (rise - fall), x[lo_], x[hi_])
        high = np.where(ok, np.maximum(high, g[r, lo_] + rise * (t - x[lo_])), high)
    return np.maximum(low, top), np.maximum.reduce([high, low, top])


def regret_draws(c: dict, draws: int, rng: np.random.Generator, maximize: bool = True,
                 concave: Optional[bool] = None, other: Optional[dict] = None, other_maximize: bool = True
                 ) -> np.ndarray:
    """Relative score lost by re-running this mode's tuning (parametric bootstrap). The draws use a smooth stand-in
    for the truth at each value tried. Each draw takes a run-to-run sd from the pooled estimate's sampling
    distribution (sd x sqrt(df / chi2(df))). It adds the selection's noise (that sd / sqrt(runs)) to every value's
    mean and picks the best. It records (optimum - picked) / optimum, so the loss of a grid's coarseness counts too.
    Values that collapsed (`kept_values`) are left out: no selection picks them, and a quadratic would bend to them.
    The stand-in is a quadratic in log(value), its optimum its peak where that lies inside the values tried. It is
    fitted per draw to the means less a draw of their noise. The measured curve is itself a noisy estimate of the
    truth (a lucky value can make it peak in the wrong place). So each draw re-runs the selection on a plausible
    truth. On the bank of real runs this covered 92.7-94.3% of the realised errors, where the measured curve alone
    covered 89.7% (docs/analysis.md). Where the quadratic lacks fit (`lacks_fit`: a peak measured precisely), it is the
    concave fit to the same plausible means instead, its optimum drawn uniformly between `peak_bounds`
    (docs/analysis.md, "Where the tuning's error model holds"); `concave` forces the choice. `other`: another
    metric's JSON curve over the same values; then each draw's loss is that metric's (its quadratic stand-in at the
    selection's optimum minus at the value picked, relative), with the same picks.
    Shape [draws]."""
    x, y, n = _curve_arrays(c, maximize)
    sd, df = pooled_sd(c, maximize), noise_df(c, maximize)
    if len(x) < 3 or not math.isfinite(sd):
        return np.zeros(draws)
    sds = sd * np.sqrt(df / rng.chisquare(df, draws))  # the noise itself is estimated, on df degrees of freedom
    noise = rng.normal(0, 1, (draws, len(x))) * sds[:, None] / np.sqrt(n)[None, :]
    plausible = y[None, :] - rng.normal(0, 1, noise.shape) * sds[:, None] / np.sqrt(n)  # the means less their noise
    if lacks_fit(c, maximize) if concave is None else concave:  # a plausible peaked truth per draw
        truth = concave_fits(x, plausible, np.sqrt(n))  # [draws, values]
        low, high = peak_bounds(x, truth)
        best = low + rng.uniform(0, 1, draws) * (high - low)
        at = x[np.argmax(truth, axis=1)]
    else:  # a plausible smooth truth per draw: the quadratic through the means less a draw of their noise
        coefs = np.polyfit(x, plausible.T, 2)
        truth = coefs[0][:, None] * x ** 2 + coefs[1][:, None] * x + coefs[2][:, None]  # [draws, values]
        peak = np.where(coefs[0] < 0, -coefs[1] / (2 * np.where(coefs[0] < 0, coefs[0], -1)), np.nan)
        inside = (coefs[0] < 0) & (peak >= x[0]) & (peak <= x[-1])  # the optimum between two values tried
        best = np.where(inside, np.polyval(coefs, np.where(inside, peak, x[0])), truth.max(1))
        at = np.where(inside, peak, x[np.argmax(truth, axis=1)])
    pick = np.argmax(truth + noise, axis=1)
    if other is None:
        return (best - truth[np.arange(draws), pick]) / np.abs(best)
    return _other_loss(c, other, maximize, other_maximize, at, x[pick])


def _other_loss(c: dict, other: dict, maximize: bool, other_maximize: bool, at: np.ndarray, picked: np.ndarray
                ) -> np.ndarray:
    """Another metric's relative loss at the values picked (log) against its score at the selection's optimum
    (`at`, log), on its quadratic stand-in over the tuned curve's kept values. Shapes [draws] -> [draws]."""
    xo, yo, _ = _curve_arrays(other, other_maximize, kept_values(c, maximize))
    if not np.isfinite(yo).all():
        raise ValueError("the other metric's curve must have a finite mean at every value of the tuned one")
    g = np.polyfit(xo, yo, 2)
    top = np.polyval(g, at)
    return (top - np.polyval(g, picked)) / np.abs(top)


def noise_df(c: dict, maximize: bool = True) -> int:
    """Degrees of freedom of pooled_sd: (runs - 1) summed over the NEAR best values (with no replicates, values - 3)."""
    df = sum(c["runs"][i] - 1 for i in near_best(c, maximize) if c["runs"][i] > 1)
    return int(df) if df else max(len(c["values"]) - 3, 1)


def seeds_per_value(tuned: dict[str, dict]) -> int:
    """The tuning's seeds per value: the most runs (diverged ones included) any value of any mode had."""
    return int(max(r + d for o in tuned.values() for r, d in zip(o["curve"]["runs"], o["curve"].get("diverged")
                                                                    or [0] * len(o["curve"]["runs"]))))


def _scaled_curve(c: dict, f: float) -> dict:
    """A JSON curve with every value's runs scaled by f and its standard error shrunk to match."""
    return {**c, "runs": [r * f for r in c["runs"]],
            "diverged": [d * f for d in (c.get("diverged") or [0] * len(c["runs"]))],
            "se": [None if se is None else se / math.sqrt(f) for se in c["se"]]}


def with_seeds(tuned: dict[str, dict], seeds: int) -> dict[str, dict]:
    """The tuning's outcome as it would be with `seeds` seeds per value and the same curves: every value's runs
    scaled to it and its standard error shrunk to match (so the run-to-run sd stays). For "how many tuning seeds
    would resolve it"."""
    f = seeds / seeds_per_value(tuned)
    return {m: {**o, "curve": _scaled_curve(o["curve"], f),
                "others": {k: _scaled_curve(c, f) for k, c in (o.get("others") or {}).items()}}
            for m, o in tuned.items()}


def rms(draws: np.ndarray) -> float:
    """Root mean square of the tuning's error draws (0 without draws)."""
    return float(np.sqrt(np.mean(draws ** 2))) if len(draws) else 0.0


def tuning_draws(tuned: dict[str, dict], modes: Sequence[str], draws: int = 4000, seed: int = 0,
                 concave: Optional[dict[str, bool]] = None, metric: Optional[str] = None,
                 maximize: bool = True) -> np.ndarray:
    """Draws of the error the deciding tuning adds to the estimated relative difference modes[0] vs modes[1]: a
    re-run's loss of modes[1] minus that of modes[0] (regret_draws; `concave` per mode: its stand-in, default each
    curve's own `lacks_fit`). `metric`: a validation metric other than the tuned one that every mode's tuning
    recorded (`others`): the loss on that metric, the selection being the tuned metric's (`maximize`: that metric's
    direction). Shape [draws]."""
    rng = np.random.default_rng(seed)
    a, b = (regret_draws(tuned[m]["curve"], draws, rng, concave=None if concave is None else concave[m],
                         other=None if metric is None else tuned[m]["others"][metric], other_maximize=maximize)
            for m in modes)
    return b - a


def has_curve(tuned: dict[str, dict], metric: Optional[str]) -> bool:
    """Whether every mode's tuning recorded a curve of `metric` (a finite mean at every value)."""
    return metric is not None and all(
        metric in (o.get("others") or {}) and all(v is not None and math.isfinite(v)
                                                  for v in o["others"][metric]["mean"]) for o in tuned.values())


def stand_ins(tuned: dict[str, dict], modes: Sequence[str]) -> dict[str, bool]:
    """Per mode, whether its tuning curve's draws use the concave stand-in (`lacks_fit`). A projection to more seeds
    (`with_seeds`) keeps these: the F statistic grows with the runs, so it would switch a quadratic curve too."""
    return {m: lacks_fit(tuned[m]["curve"]) for m in modes}
