"""The confirm stage's pairs: both modes' trials on one seed, aligned row by row, and their per-test-frame values
on the frames every trial evaluated. Pure tables and arrays, for the decision (study.analysis.decide) and the
confirm plan's variance (study.analysis.confirm)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.base.space import MODE_KEY


def frame_matrix(vals: list, ids: list) -> tuple[np.ndarray, list[int]]:
    """[trials, frames] from each trial's per-test-frame values and frame indices, over the frames every trial
    evaluated (in frame order); a trial without per-frame values leaves no common frame."""
    if not vals:
        return np.empty((0, 0)), []
    first = ids[0]
    ok = lambda v, i: v is not None and i is not None and not isinstance(v, float) and len(v) == len(i) > 0  # noqa: E731
    if all(ok(v, i) and len(i) == len(first) and np.array_equal(i, first) for v, i in zip(vals, ids)):
        order = np.argsort(np.asarray(first, dtype=int), kind="stable")  # the confirm design: the same frames
        return np.asarray([np.asarray(v, dtype=float) for v in vals])[:, order], \
            [int(f) for f in np.asarray(first, dtype=int)[order]]
    per = [{int(f): float(x) for f, x in zip(i, v)} if ok(v, i) else {} for v, i in zip(vals, ids)]
    common = sorted(set.intersection(*(set(p) for p in per)))
    return np.array([[p[f] for f in common] for p in per], dtype=float).reshape(len(per), len(common)), common


def pair_rows(per_trial: pd.DataFrame, modes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials of the two modes, indexed by seed and aligned row by row: a seed without a trial of both modes is
    left out (a re-reported seed keeps its last row)."""
    a, b = (per_trial[per_trial[MODE_KEY] == m].drop_duplicates("seed", keep="last").set_index("seed") for m in modes)
    seeds = sorted(set(a.index) & set(b.index))
    return a.loc[seeds], b.loc[seeds]


def paired_matrices(a: pd.DataFrame, b: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """([pairs, frames], [pairs, frames]) of `key` per test frame for aligned pair rows (pair_rows), on the frames
    that every trial of both evaluated."""
    col = f"{key}_frames"
    if col not in a or "test_frames" not in a or not len(a):
        return np.empty((len(a), 0)), np.empty((len(b), 0))
    m, _ = frame_matrix(a[col].tolist() + b[col].tolist(), a["test_frames"].tolist() + b["test_frames"].tolist())
    return m[: len(a)], m[len(a):]
