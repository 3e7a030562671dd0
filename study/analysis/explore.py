"""The explore stage's tables: the modes compared per cell and per grid key, paired by (cell, seed).

A cell is one value of every grid key of the study's space (study.analysis.load.cell_keys), the modes are the pair the
space compares (study.analysis.load.compared_modes).

Exploratory only: the explore trials of the two modes ran with different hyperparameters (each mode's own tuning).
Some were stopped early by ASHA, and many groups are compared at once. So these intervals are descriptions, not tests.
The decision comes from the confirm stage (study.analysis.decide). Intervals are 95% percentile bootstraps over seeds
and, where per-frame values exist, test frames (study.analysis.stats)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from posesplat.metrics import PEAK_MEM
from study.analysis.load import FRAME_IDS, FRAME_VALUES, LABELS, SHORT
from study.analysis.stats import NAN, Estimate, diff_ci, diff_rel_ci_frames, mean_ci, mean_ci_frames
from study.base.space import MODE_KEY

Pair = tuple[str, str]  # (challenger, reference): differences are challenger - reference
KEYS = ("test_heldout_iou", "test_heldout_psnr_fg", "test_heldout_psnr", "epoch_time_s", *PEAK_MEM.values())


def pair_units(per_trial: pd.DataFrame, modes: Pair, cell: list[str]) -> list[str]:
    """What makes two trials a pair: same cell (the keys `cell`) and seed, and same study when every study ran both
    modes."""
    core = per_trial[per_trial[MODE_KEY].isin(modes)]
    both = core.groupby("study")[MODE_KEY].nunique()
    return [*cell, "seed"] + (["study"] if len(both) and (both == 2).all() else [])


def paired_values(per_trial: pd.DataFrame, key: str, units: list[str], modes: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(modes[0] values, modes[1] values) of `key` aligned by unit (trials of the same unit averaged)."""
    a = per_trial[per_trial[MODE_KEY] == modes[0]].groupby(units)[key].mean()
    b = per_trial[per_trial[MODE_KEY] == modes[1]].groupby(units)[key].mean()
    j = a.index.intersection(b.index)
    return a[j].to_numpy(float), b[j].to_numpy(float)


def _as_list(v) -> Optional[np.ndarray]:
    """A stored list cell (numpy array, list) as a float array; None for a missing value or an empty list."""
    if v is None or isinstance(v, float) or not hasattr(v, "__len__") or isinstance(v, str) or len(v) == 0:
        return None
    return np.asarray(v, dtype=float)


def frame_values(rows: pd.DataFrame, key: str) -> Optional[tuple[list[np.ndarray], list[Optional[np.ndarray]]]]:
    """(per-frame values, frame indices) of every trial in `rows` with a finite `key`. None when `key` has no
    per-frame column, or when some of those trials have no per-frame values (a study from before they were recorded).
    The caller then falls back to the trial-level bootstrap."""
    col = FRAME_VALUES.get(key)
    if col is None or col not in rows:
        return None
    r = rows[np.isfinite(rows[key].to_numpy(float))]
    vals = [_as_list(v) for v in r[col]]
    if not len(r) or any(v is None for v in vals):
        return None
    ids = [_as_list(v) for v in r[FRAME_IDS]] if FRAME_IDS in r else [None] * len(r)
    ids = [i if i is not None and v is not None and len(i) == len(v) else None for i, v in zip(ids, vals)]
    return vals, ids


def paired_frames(per_trial: pd.DataFrame, key: str, units: list[str], modes: Pair):
    """Per-frame counterpart of paired_values: (values, values, frame indices, frame indices) of the two modes per
    unit (a unit's trials' frames concatenated, by study and trial id), or None without per-frame values."""
    sides = []
    for mode in modes:
        rows = per_trial[(per_trial[MODE_KEY] == mode) & np.isfinite(per_trial[key].to_numpy(float))]
        fv = frame_values(rows, key)
        if fv is None:
            return None
        found: dict[tuple, list[tuple]] = {}
        unit_of = list(rows[units].itertuples(index=False, name=None))
        for pos in np.lexsort((rows["trial_id"].to_numpy(str), rows["study"].to_numpy(str))):
            found.setdefault(unit_of[pos], []).append((fv[0][pos], fv[1][pos]))
        side = {}
        for unit, trials in found.items():
            ids = None if any(i is None for _, i in trials) else np.concatenate([i for _, i in trials])
            side[unit] = (np.concatenate([v for v, _ in trials]), ids)
        sides.append(side)
    common = sorted(u for u in sides[0] if u in sides[1])
    return ([sides[0][u][0] for u in common], [sides[1][u][0] for u in common],
            [sides[0][u][1] for u in common], [sides[1][u][1] for u in common])


def rel_estimate(rows: pd.DataFrame, key: str, units: list[str], modes: Pair) -> Estimate:
    """(modes[0] - modes[1]) / modes[1] of `key` over the pairs in `rows`: over seeds and test frames where per-frame
    values exist, over seeds otherwise."""
    fv = paired_frames(rows, key, units, modes) if key in FRAME_VALUES else None
    if fv is not None and len(fv[0]):
        return diff_rel_ci_frames(fv[0], fv[1], paired=True, frames_a=fv[2], frames_b=fv[3])[1]
    a, b = paired_values(rows, key, units, modes)
    return diff_ci(a, b, paired=True, relative=True) if len(a) else NAN


def mode_estimate(rows: pd.DataFrame, key: str) -> Estimate:
    """Mean of `key` over the trials in `rows` (over trials and their test frames where per-frame values exist)."""
    if not np.isfinite(rows[key].to_numpy(float)).any():
        return NAN
    fv = frame_values(rows, key)
    return mean_ci(rows[key]) if fv is None else mean_ci_frames(*fv)


def label_value(key: str, v) -> str:
    return "all" if key == "max_frames" and int(v) == 0 else str(v)


def cell_text(cell: dict) -> str:
    """'grid 48, frames 100' for a cell given as {grid key: value}."""
    return ", ".join(f"{'grid' if k == 'grid_size' else 'frames' if k == 'max_frames' else k} "
                     f"{label_value(k, 0 if v is None else v)}" for k, v in cell.items())


def breakdown(per_trial: pd.DataFrame, by: list[str], modes: Pair, cell: list[str]) -> pd.DataFrame:
    """One row per group of `by` (plus 'all cells'): trials per mode, each mode's IoU, and the relative
    differences of KEYS, paired by (cell, seed)."""
    units = pair_units(per_trial, modes, cell)
    groups = [("all cells", per_trial)] + [
        (", ".join(f"{k} {label_value(k, v)}" for k, v in zip(by, key if isinstance(key, tuple) else (key,))), g)
        for key, g in per_trial.groupby(by if len(by) > 1 else by[0])
    ]
    rows = []
    vs = f"{modes[0]} vs {modes[1]}"
    for name, g in groups:
        row = {"group": name, "trials": " / ".join(f"{m} {int((g[MODE_KEY] == m).sum())}" for m in modes)}
        for m in modes:
            row[f"IoU {m}"] = mode_estimate(g[g[MODE_KEY] == m], "test_heldout_iou").fmt(digits=3)
        for key in KEYS:
            if key in g and np.isfinite(g[key].to_numpy(float)).any():
                e = rel_estimate(g, key, units, modes)
                row[f"{SHORT[key]} {vs}"] = e.pct()
                if key == "test_heldout_iou":
                    row["pairs"] = e.n
        rows.append(row)
    return pd.DataFrame(rows)


def cell_dependence(per_trial: pd.DataFrame, modes: Pair, cell: list[str]) -> Optional[str]:
    """A sentence when the explore stage suggests that the IoU difference depends on the cell (two cells whose 95%
    intervals do not overlap), else None. A hint for the next study, not a test."""
    units = pair_units(per_trial, modes, cell)
    est = {cell_text(dict(zip(cell, key))): rel_estimate(g, "test_heldout_iou", units, modes)
           for key, g in per_trial.groupby(cell)}
    est = {k: e for k, e in est.items() if e.has_ci}
    if len(est) < 2:
        return None
    lo = min(est, key=lambda k: est[k].hi)
    hi = max(est, key=lambda k: est[k].lo)
    if est[lo].hi < est[hi].lo:
        return (f"The explore stage suggests the answer may depend on the cell: {LABELS['test_heldout_iou']} "
                f"{modes[0]} vs {modes[1]} is {est[lo].pct()} at {lo} but {est[hi].pct()} at {hi} (exploratory: "
                f"tuned hyperparameters differ; confirm another cell to test it).")
    return None
