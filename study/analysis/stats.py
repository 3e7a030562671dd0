"""Intervals (pure numpy/scipy; no study I/O). The confirm stage's interval is study.analysis.crossed.

The explore stage's descriptive tables use 95% percentile bootstraps (9,999 resamples, fixed seed so a report is
reproducible): over trials (`mean_ci`, `diff_ci`: `scipy.stats.bootstrap`) or, where per-test-frame values exist,
over trials and test frames (`mean_ci_frames`, `diff_ci_frames`: a two-level bootstrap). With fewer than about 8
values a percentile bootstrap is narrower than a true 95% interval. Fewer than 2 trials give no interval (NaN bounds).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

N_RESAMPLES = 9999
SEED = 0


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
    """Mean of the finite values of x with its bootstrap interval.

    Args:
        x: [n] values, e.g. one per trial; non-finite ones are dropped.
    Returns:
        estimate: the mean, its 95% percentile interval (NaN bounds below 2 values) and n; NAN without values.
    """
    x = _finite(x)
    if not len(x):
        return NAN
    lo, hi = _ci((x,), lambda a, axis: a.mean(axis), paired=False)
    return Estimate(float(x.mean()), lo, hi, len(x))


def diff_ci(a: Sequence[float], b: Sequence[float], *, paired: bool, relative: bool = False) -> Estimate:
    """mean(a) - mean(b) (divided by mean(b) when relative) with its bootstrap interval.

    paired: a[i] and b[i] belong together (same cell and seed) and are resampled together; pairs with a non-finite
    member are dropped. Unpaired: each sample is resampled on its own.

    Args:
        a: [n_a] values of side A, e.g. per-seed values of mode A.
        b: [n_b] values of side B; n_b = n_a when paired.
        paired: resample (a[i], b[i]) together.
        relative: divide the difference by mean(b).
    Returns:
        estimate: the difference, its 95% interval and n (pairs, or min(n_a, n_b)); NAN if it cannot be computed.
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


# ----------------------------------------------------------------------------------------------- two-level bootstrap


FrameValues = Sequence[Sequence[float]]  # one sequence of per-frame values per trial
FrameIds = Optional[Sequence[Optional[Sequence[int]]]]  # the frame index of each of those values, per trial
CHUNK = 2_000_000  # array elements per vectorised block of resamples (bounds memory for long frame lists)


@dataclass
class _Side:
    """The trials of one side of a resampled block, padded to [n, F] (NaN beyond a trial's frame count)."""

    x: np.ndarray  # [n, F] per-frame values
    count: np.ndarray  # [n] frames per trial
    group: np.ndarray  # [n] index of the trial's frame list in the block set's list of distinct frame lists


def _trial_frames(values, ids) -> tuple[np.ndarray, Optional[tuple]]:
    """A trial's finite per-frame values and their frame indices (None when unknown or not one per value)."""
    v = np.asarray(values if values is not None else [], dtype=float).ravel()
    i = None if ids is None else np.asarray(ids).ravel()
    keep = np.isfinite(v)
    if i is not None and len(i) != len(v):
        i = None
    return v[keep], (tuple(int(k) for k in i[keep]) if i is not None else None)


def _frame_sets(values: FrameValues, ids: FrameIds) -> list[tuple[np.ndarray, Optional[tuple]]]:
    ids = list(ids) if ids is not None else [None] * len(values)
    return [_trial_frames(v, i) for v, i in zip(values, ids)]


def _two_level(blocks: list[list[list[tuple[np.ndarray, Optional[tuple]]]]], share_sides: bool, nested: bool,
               n_resamples: int) -> list[list[np.ndarray]]:
    """Resampled means: for each block (a set of units resampled together) and each side of it, [n_resamples]
    means over resampled units of the mean over that unit's resampled frames.

    `blocks[b][s][u]` is (per-frame values, frame indices or None) of unit u on side s of block b. The sides of a
    block share the unit draw (pairs). Frames are drawn as positions within a frame list. Every unit that evaluated
    the same frame list (same indices, in the same order) gets the same positions in a resample. So a frame's effect
    is shared as it is in the data: in the crossed design the trials of a cell see the same test frames, and a
    pair's two modes too. Units with unknown or different frame lists get independent draws. `share_sides=False`
    never shares between the sides of a block (independent frame resampling of a pair's members). `nested=True` draws
    frames afresh for every resampled unit (the textbook hierarchical bootstrap, frames nested in trials), still
    shared by the sides of a pair with the same frame list when `share_sides`.
    """
    keys: dict = {}
    sides: list[list[_Side]] = []
    for b, block in enumerate(blocks):
        sb = []
        for s, units in enumerate(block):
            fmax = max(len(v) for v, _ in units)
            x = np.full((len(units), fmax), np.nan)
            group = np.empty(len(units), dtype=int)
            for u, (v, ids) in enumerate(units):
                x[u, :len(v)] = v
                key = ("ids", ids, None if share_sides else s) if ids is not None else ("unit", b, s, u)
                group[u] = keys.setdefault(key, len(keys))
            sb.append(_Side(x, np.array([len(v) for v, _ in units], dtype=float), group))
        sides.append(sb)
    n_groups = len(keys)
    fmax = max(side.x.shape[1] for sb in sides for side in sb)
    width = max(sum(side.x.size for side in sb) for sb in sides) + n_groups * fmax
    step = max(1, CHUNK // max(width, 1))
    rng = np.random.default_rng(SEED)
    out: list[list[list[np.ndarray]]] = [[[] for _ in sb] for sb in sides]
    for start in range(0, n_resamples, step):
        m = min(step, n_resamples - start)
        shared = None if nested else rng.random((m, n_groups, fmax))
        rows = np.arange(m)[:, None]
        for b, sb in enumerate(sides):
            n = len(sb[0].count)
            unit = rng.integers(0, n, size=(m, n))
            fresh = rng.random((m, n, fmax)) if nested else None
            for s, side in enumerate(sb):
                g = side.group[unit]  # [m, n]
                if nested:
                    same = g == sb[0].group[unit]  # this side has the frame list of side 0: same positions
                    u = fresh if s == 0 else np.where(same[..., None], fresh, rng.random((m, n, fmax)))
                elif len(np.unique(side.group)) * 4 <= len(side.group):  # few frame lists: means by counts
                    out[b][s].append(_shared_means(side, shared)[rows, unit].mean(-1))
                    continue
                else:
                    u = shared[rows, g]  # [m, n, fmax]
                cnt = side.count[unit]  # [m, n]
                pos = (u[..., :side.x.shape[1]] * cnt[..., None]).astype(int)
                vals = side.x[unit[..., None], pos]
                vals = np.where(np.arange(side.x.shape[1]) < cnt[..., None], vals, 0.0)
                out[b][s].append((vals.sum(-1) / cnt).mean(-1))
    return [[np.concatenate(x) for x in sb] for sb in out]


def _shared_means(side: _Side, shared: np.ndarray) -> np.ndarray:
    """Each unit's mean over its resampled frames, [m, n], for frame draws shared by the units of a frame list
    (shared: [m, groups, F] uniform draws). Equal to _two_level's gather up to the order of summation, but it counts
    how often each frame was drawn per frame list and takes a product with the values, which costs m x frames per
    frame list instead of m x frames per unit."""
    m = shared.shape[0]
    means = np.empty((m, len(side.group)))
    for g in np.unique(side.group):
        units = np.flatnonzero(side.group == g)
        cnt = int(side.count[units[0]])  # a frame list: the same count for each of its units
        pos = (shared[:, g, :cnt] * cnt).astype(int)  # [m, cnt]
        draws = np.bincount((np.arange(m)[:, None] * cnt + pos).ravel(), minlength=m * cnt).reshape(m, cnt)
        means[:, units] = draws @ side.x[units, :cnt].T / cnt
    return means


def _percentile(boot: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = np.percentile(boot[np.isfinite(boot)], [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return float(lo), float(hi)


def mean_ci_frames(values: FrameValues, frames: FrameIds = None, *, nested: bool = False,
                   n_resamples: int = N_RESAMPLES) -> Estimate:
    """Mean over trials of each trial's mean over its test frames, with a two-level bootstrap interval.

    values[i]: trial i's per-frame values; frames[i]: their frame indices (trials with the same frame list share
    the frame draw of a resample, see _two_level). Non-finite frame values are dropped; a trial without any finite
    value is dropped. n is the number of trials.

    Args:
        values: [trials][frames] per-frame values of each trial (frame counts may differ).
        frames: [trials][frames] frame indices of those values; None (or None for a trial): unknown.
        nested: draw frames afresh for every resampled trial (frames nested in trials).
        n_resamples: bootstrap resamples.
    Returns:
        estimate: the mean, its 95% interval (NaN bounds below 2 trials) and n; NAN without finite values.
    """
    units = [t for t in _frame_sets(values, frames) if len(t[0])]
    if not units:
        return NAN
    mean = float(np.mean([v.mean() for v, _ in units]))
    if len(units) < 2:
        return Estimate(mean, float("nan"), float("nan"), len(units))
    (boot,), = _two_level([[units]], True, nested, n_resamples)
    return Estimate(mean, *_percentile(boot), len(units))


def diff_ci_frames(a: FrameValues, b: FrameValues, *, paired: bool, relative: bool = False,
                   frames_a: FrameIds = None, frames_b: FrameIds = None, share_pair_frames: bool = True,
                   nested: bool = False, n_resamples: int = N_RESAMPLES) -> Estimate:
    """mean(a) - mean(b) (divided by mean(b) when relative: a ratio of means) of per-frame data, two-level interval.

    Each mean is over trials of the trial's mean over its frames. paired: a[i] and b[i] are a pair (same cell and
    seed), resampled together; when both members evaluated the same frames (frames_a[i] == frames_b[i]) they get
    the same resampled frame positions (share_pair_frames), otherwise independent ones. Unpaired: each side's trials
    are resampled on their own (frames still shared where the frame lists match). A pair with a member without
    finite values is dropped.

    Args:
        a: [trials][frames] per-frame values of side A, e.g. mode A's trials.
        b: [trials][frames] per-frame values of side B; b[i] pairs with a[i] when paired.
        paired: resample the pairs (a[i], b[i]) together.
        relative: divide the difference by mean(b).
        frames_a: [trials][frames] frame indices of a's values, or None (unknown).
        frames_b: [trials][frames] frame indices of b's values, or None (unknown).
        share_pair_frames: a pair's members with the same frame list get the same frame draws.
        nested: draw frames afresh for every resampled trial (frames nested in trials).
        n_resamples: bootstrap resamples.
    Returns:
        estimate: the difference, its 95% interval (NaN bounds below 2 trials a side) and n; NAN without values.
    """
    d, r = diff_rel_ci_frames(a, b, paired=paired, frames_a=frames_a, frames_b=frames_b,
                              share_pair_frames=share_pair_frames, nested=nested, n_resamples=n_resamples)
    return r if relative else d


def diff_rel_ci_frames(a: FrameValues, b: FrameValues, *, paired: bool, frames_a: FrameIds = None,
                       frames_b: FrameIds = None, share_pair_frames: bool = True, nested: bool = False,
                       n_resamples: int = N_RESAMPLES) -> tuple[Estimate, Estimate]:
    """(difference, relative difference) of diff_ci_frames from one set of resamples.

    Args:
        a: [trials][frames] per-frame values of side A.
        b: [trials][frames] per-frame values of side B; b[i] pairs with a[i] when paired.
        paired: resample the pairs (a[i], b[i]) together.
        frames_a: [trials][frames] frame indices of a's values, or None (unknown).
        frames_b: [trials][frames] frame indices of b's values, or None (unknown).
        share_pair_frames: a pair's members with the same frame list get the same frame draws.
        nested: draw frames afresh for every resampled trial (frames nested in trials).
        n_resamples: bootstrap resamples.
    Returns:
        difference: Estimate of mean(a) - mean(b).
        relative: Estimate of (mean(a) - mean(b)) / mean(b).
    """
    sa, sb = _frame_sets(a, frames_a), _frame_sets(b, frames_b)
    if paired:
        keep = [i for i in range(min(len(sa), len(sb))) if len(sa[i][0]) and len(sb[i][0])]
        sa, sb = [sa[i] for i in keep], [sb[i] for i in keep]
    else:
        sa, sb = [t for t in sa if len(t[0])], [t for t in sb if len(t[0])]
    if not sa or not sb:
        return NAN, NAN

    def stats_of(ma, mb):
        with np.errstate(divide="ignore", invalid="ignore"):
            return ma - mb, (ma - mb) / mb

    ma, mb = np.mean([v.mean() for v, _ in sa]), np.mean([v.mean() for v, _ in sb])
    means = [float(m) for m in stats_of(ma, mb)]
    n = len(sa) if paired else min(len(sa), len(sb))
    if min(len(sa), len(sb)) < 2:
        return tuple(Estimate(m, float("nan"), float("nan"), n) if math.isfinite(m) else NAN for m in means)
    res = _two_level([[sa, sb]] if paired else [[sa], [sb]], share_pair_frames, nested, n_resamples)
    boot = stats_of(*((res[0][0], res[0][1]) if paired else (res[0][0], res[1][0])))
    return tuple(Estimate(m, *_percentile(bt), n) if math.isfinite(m) else NAN for m, bt in zip(means, boot))


# ----------------------------------------------------------------------------------------------- plots


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points that no other point beats on both lower cost and higher quality, by rising cost.

    Args:
        cost, quality: [n] per point; points with a non-finite value are left out.
    Returns:
        front: [k] int indices into cost and quality.
    """
    cost, quality = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    front, best = [], -np.inf
    for i in np.lexsort((-quality, cost)):  # by cost, then the better quality first among equal costs
        if np.isfinite(cost[i]) and np.isfinite(quality[i]) and quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.array(front, dtype=int)
