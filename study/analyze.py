"""The 2D-vs-3D decision table, plots and report: `python -m study.analyze <study-dir-or-parquet>... [--margin 0.02]`.

Every trial is read at its epoch of best validation (held-out views of validation frames: `valid_heldout_iou`, ties
broken by `valid_heldout_psnr`, then the earlier epoch) and reported on held-out views of test frames. Each mode's
best configuration is its (grid_size, max_frames) cell with the highest mean validation score; the table gives each
mode's mean there with a 95% bootstrap interval over its trials (one seed each) and, for held-out test IoU, PSNR and
SSIM, over their test frames too (two-level bootstrap; trials only for studies without per-frame values), and
2d - 3d paired by seed when both modes' best cells coincide. Breakdowns per cell, grid_size and max_frames are
always paired by (cell, seed).
See docs/analysis.md. Writes `<study>/report/`: decision.md, decision.csv, breakdown.csv, trials.csv, PNG plots, renders and a
self-contained report.html.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from study.stats import (MIN_N, NAN, Estimate, Verdict, decide, diff_ci, diff_rel_ci_frames, mean_ci,
                         mean_ci_frames)

MODE_ORDER = ("2d", "3d", "2d_screen")
CELL = ["grid_size", "max_frames"]
SELECT = ["valid_heldout_iou", "valid_heldout_psnr"]
# (key in the per-trial table, label, True when higher is better)
QUALITY = [("test_heldout_iou", "held-out IoU (test frames)", True),
           ("test_heldout_psnr", "held-out PSNR, dB (test frames)", True),
           ("test_heldout_ssim", "held-out SSIM (test frames)", True),
           ("gt_iou3d", "3D IoU vs ground-truth body (test frames)", True)]
COST = [("epoch_time_s", "training time per epoch, s (median over epochs)", False),
        ("render_ms", "render time per frame and view, ms", False),
        ("peak_mem_mb", "peak memory, MB (max over epochs)", False),
        ("params_per_gaussian", "parameters per Gaussian", False),
        ("n_gaussians", "Gaussians per frame", False),
        ("checkpoint_mb", "checkpoint size, MB", False),
        ("epochs_to_threshold", "epochs to reach the IoU threshold (trials that reached it)", False)]
DECISION_QUALITY = {"IoU": "test_heldout_iou", "PSNR": "test_heldout_psnr"}
# measures with per-test-frame values (lists in the metrics, one per evaluated test frame) and the frame indices
FRAME_VALUES = {k: f"{k}_frames" for k in ("test_heldout_iou", "test_heldout_psnr", "test_heldout_ssim")}
FRAME_IDS = "test_frames"
OVER_FRAMES, OVER_TRIALS = "seeds and test frames", "seeds"
DECISION_COST = {"time per epoch": "epoch_time_s", "render time": "render_ms", "peak memory": "peak_mem_mb"}
THRESHOLD_FRACTION = 0.9
TRIAL_COLUMNS = ["study", "trial_id", "gaussian_mode", *CELL, "seed", "lr", "ssim_lambda", "selected_epoch", "epochs_run",
                 *SELECT, *(k for k, _, _ in QUALITY + COST), "iou_threshold", "device", "mem_kind", "status"]
REQUIRED = ("trial_id", "epoch", "gaussian_mode", "valid_heldout_iou")


class AnalysisError(ValueError):
    """Input that cannot be analysed; the message is one line naming the file and the problem."""


# ----------------------------------------------------------------------------------------------- loading


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except Exception as e:  # truncated, foreign or unreadable file
        raise AnalysisError(f"{path}: not a readable parquet file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _study_dir(path: Path) -> Path:
    """The study directory of an input (a study dir, its metrics/ folder, or a parquet file)."""
    if path.is_file():
        return path.parent.parent if path.parent.name == "metrics" else path.parent
    return path.parent if path.name == "metrics" else path


def load_study(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(metrics rows, trials table, study.json) of one study directory, its metrics/ folder or a parquet file."""
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path}: no such study directory or parquet file")
    if path.is_file():
        parts = [path]
    else:
        mdir = path / "metrics" if (path / "metrics").is_dir() else path
        parts = sorted(p for p in mdir.glob("*.parquet") if not p.name.startswith((".", "_")))
        if not parts:
            raise AnalysisError(f"{path}: holds no metrics yet (no parquet files in {mdir})")
    tables = [_read_table(p) for p in tqdm(parts, desc=f"reading {path.name}", leave=False, disable=len(parts) < 500)]
    try:
        metrics = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise AnalysisError(f"{path}: metrics parts have incompatible columns ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in metrics]
    if missing:
        raise AnalysisError(f"{parts[0] if len(parts) == 1 else path}: not a metrics table "
                            f"(no column {', '.join(repr(c) for c in missing)})")
    sdir = _study_dir(path)
    if "study" not in metrics:
        metrics["study"] = sdir.name if path.is_dir() else path.stem
    trials, info = pd.DataFrame(), {}
    if path.is_dir() and (sdir / "trials.parquet").exists():
        trials = _read_table(sdir / "trials.parquet").to_pandas()
    if path.is_dir() and (sdir / "study.json").exists():
        try:
            info = json.loads((sdir / "study.json").read_text())
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{sdir / 'study.json'}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return metrics, trials, info


@dataclass
class Study:
    """Everything read from one or more inputs."""

    metrics: pd.DataFrame  # one row per (study, trial, epoch)
    trials: pd.DataFrame  # one row per (study, trial); may be empty
    infos: dict[str, dict] = field(default_factory=dict)  # study name -> study.json


def load_studies(paths: list[str | Path]) -> Study:
    """Read and combine several inputs; a re-reported (study, trial, epoch) keeps its latest row."""
    ms, ts, infos = [], [], {}
    for p in paths:
        m, t, info = load_study(p)
        ms.append(m)
        if len(t):
            if "study" not in t:
                t["study"] = m["study"].iloc[0]
            ts.append(t)
        for name in set(m["study"]):
            infos[str(name)] = info
    metrics = pd.concat(ms, ignore_index=True)
    if "timestamp" in metrics:
        metrics = metrics.sort_values("timestamp", kind="stable")
    metrics = metrics.drop_duplicates(["study", "trial_id", "epoch"], keep="last")
    metrics = normalise(metrics)
    trials = pd.concat(ts, ignore_index=True).drop_duplicates(["study", "trial_id"], keep="last") if ts else pd.DataFrame()
    return Study(metrics.reset_index(drop=True), trials, infos)


def normalise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Types and defaults the analysis relies on: float metrics, integer cells (max_frames 0 = all frames)."""
    m = metrics.copy()
    m["epoch"] = pd.to_numeric(m["epoch"], errors="coerce")
    m = m[m["epoch"].notna()]
    m["epoch"] = m["epoch"].astype(int)
    for c in ("grid_size", "max_frames", "seed"):
        m[c] = pd.to_numeric(m[c], errors="coerce").fillna(0).astype(int) if c in m else 0
    for c in ["valid_heldout_iou", "valid_heldout_psnr", "train_loss", "checkpoint_bytes", "params_per_gaussian",
              *(k for k, _, _ in QUALITY + COST)]:
        m[c] = pd.to_numeric(m[c], errors="coerce").astype(float) if c in m else np.nan
    m["gaussian_mode"] = m["gaussian_mode"].astype(str)
    m["study"] = m["study"].astype(str)
    m["trial_id"] = m["trial_id"].astype(str)
    return m


# ----------------------------------------------------------------------------------------------- per trial


def trial_summary(metrics: pd.DataFrame, threshold: Optional[float] = None) -> pd.DataFrame:
    """One row per trial with a validation epoch: quality at its best validation epoch, costs over its epochs,
    and epochs to reach the IoU threshold of its cell (see cell_thresholds)."""
    rows = []
    for (study, tid), t in metrics.sort_values("epoch").groupby(["study", "trial_id"], sort=False):
        ev = t[np.isfinite(t["valid_heldout_iou"])]
        if ev.empty:
            continue
        best = ev.sort_values([*SELECT, "epoch"], ascending=[False, False, True], na_position="last").iloc[0]
        row = best.to_dict()
        row.update(
            selected_epoch=int(best["epoch"]), epochs_run=int(t["epoch"].max()),
            epoch_time_s=float(t["epoch_time_s"].median()), render_ms=float(ev["render_ms"].median()),
            peak_mem_mb=float(t["peak_mem_mb"].max()),
            checkpoint_mb=float(t["checkpoint_bytes"].where(t["checkpoint_bytes"] > 0).max()) / 1e6,
            mem_kind=str(t["mem_kind"].iloc[-1]) if "mem_kind" in t else "unknown",
            device=str(t["device"].iloc[-1]) if "device" in t else "unknown",
        )
        rows.append(row)
    per_trial = pd.DataFrame(rows)
    if per_trial.empty:
        return per_trial
    thresholds = cell_thresholds(per_trial, threshold)
    first = {}
    for (study, tid), t in metrics.groupby(["study", "trial_id"]):
        key = (int(t["grid_size"].iloc[0]), int(t["max_frames"].iloc[0]))
        reached = t[t["valid_heldout_iou"] >= thresholds.get(key, np.inf)]
        first[(study, tid)] = float(reached["epoch"].min()) if len(reached) else np.nan
    per_trial["iou_threshold"] = [thresholds[(g, f)] for g, f in zip(per_trial.grid_size, per_trial.max_frames)]
    per_trial["epochs_to_threshold"] = [first[(s, t)] for s, t in zip(per_trial.study, per_trial.trial_id)]
    return per_trial


def cell_thresholds(per_trial: pd.DataFrame, threshold: Optional[float]) -> dict[tuple[int, int], float]:
    """The validation IoU a trial must reach to count as converged, per cell: `threshold` when given, else 90% of
    the lower of the 2d and 3d medians (over trials) of the best validation held-out IoU, so both modes can reach it."""
    out = {}
    for key, c in per_trial.groupby(CELL):
        if threshold is not None:
            out[key] = float(threshold)
            continue
        med = c.groupby("gaussian_mode")["valid_heldout_iou"].median()
        core = med[med.index.isin(["2d", "3d"])]
        out[key] = float(THRESHOLD_FRACTION * (core if len(core) else med).min())
    return out


def modes_of(per_trial: pd.DataFrame) -> list[str]:
    """The modes present, in the order 2d, 3d, 2d_screen, then any other."""
    present = set(per_trial["gaussian_mode"]) if len(per_trial) else set()
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def best_cells(per_trial: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Each mode's (grid_size, max_frames) with the highest mean validation IoU (then PSNR) over its trials."""
    out = {}
    for mode, rows in per_trial.groupby("gaussian_mode"):
        g = rows.groupby(CELL)[SELECT].mean().sort_values(SELECT, ascending=False)
        out[mode] = tuple(int(v) for v in g.index[0])
    return out


def pair_units(per_trial: pd.DataFrame) -> list[str]:
    """What makes a 2d and a 3d trial a pair: same cell and seed, and same study when every study ran both."""
    core = per_trial[per_trial.gaussian_mode.isin(["2d", "3d"])]
    both = core.groupby("study")["gaussian_mode"].nunique()
    return [*CELL, "seed"] + (["study"] if len(both) and (both == 2).all() else [])


def paired_values(per_trial: pd.DataFrame, key: str, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(2d values, 3d values) of `key` aligned by unit (trials of the same unit averaged)."""
    a = per_trial[per_trial.gaussian_mode == "2d"].groupby(units)[key].mean()
    b = per_trial[per_trial.gaussian_mode == "3d"].groupby(units)[key].mean()
    j = a.index.intersection(b.index)
    return a[j].to_numpy(float), b[j].to_numpy(float)


def _as_list(v) -> Optional[np.ndarray]:
    """A stored list cell (numpy array, list) as a float array; None for a missing value or an empty list."""
    if v is None or isinstance(v, float) or not hasattr(v, "__len__") or isinstance(v, str) or len(v) == 0:
        return None
    return np.asarray(v, dtype=float)


def frame_values(rows: pd.DataFrame, key: str) -> Optional[tuple[list[np.ndarray], list[Optional[np.ndarray]]]]:
    """(per-frame values, frame indices) of every trial in `rows` with a finite `key`, or None when `key` has no
    per-frame column or some of those trials have no per-frame values (a study from before they were recorded):
    the caller then falls back to the trial-level bootstrap."""
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


def paired_frames(per_trial: pd.DataFrame, key: str, units: list[str]):
    """Per-frame counterpart of paired_values: (2d values, 3d values, 2d frame indices, 3d frame indices) per unit
    (a unit's trials' frames concatenated, by study and trial id), or None without per-frame values."""
    sides = []
    for mode in ("2d", "3d"):
        rows = per_trial[(per_trial.gaussian_mode == mode) & np.isfinite(per_trial[key].to_numpy(float))]
        fv = frame_values(rows, key)
        if fv is None:
            return None
        found: dict[tuple, list[tuple]] = {}
        for pos in np.lexsort((rows["trial_id"].to_numpy(str), rows["study"].to_numpy(str))):
            unit = tuple(rows[units].iloc[pos])
            found.setdefault(unit, []).append((fv[0][pos], fv[1][pos]))
        side = {}
        for unit, trials in found.items():
            ids = None if any(i is None for _, i in trials) else np.concatenate([i for _, i in trials])
            side[unit] = (np.concatenate([v for v, _ in trials]), ids)
        sides.append(side)
    common = sorted(u for u in sides[0] if u in sides[1])
    return ([sides[0][u][0] for u in common], [sides[1][u][0] for u in common],
            [sides[0][u][1] for u in common], [sides[1][u][1] for u in common])


# ----------------------------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """2d vs 3d on one set of trials: per-measure estimates, relative differences and the verdict."""

    per_mode: dict[str, dict[str, Estimate]]  # mode -> key -> mean [CI]
    diff: dict[str, Estimate]  # key -> 2d - 3d
    rel: dict[str, Estimate]  # key -> (2d - 3d) / 3d
    paired: bool
    verdict: Verdict
    ci_over: dict[str, str] = field(default_factory=dict)  # key -> what its intervals are over (OVER_*, or "mixed")


def compare(a_rows: pd.DataFrame, b_rows: pd.DataFrame, others: dict[str, pd.DataFrame], units: list[str],
            paired: bool, margin: float, keys: Optional[list[str]] = None) -> Comparison:
    """Estimates per mode of `keys` (default: every measure), 2d - 3d differences (paired by `units` or unpaired)
    and the decision rule."""
    keys = keys or [k for k, _, _ in QUALITY + COST]
    keys = list(dict.fromkeys([*keys, *DECISION_QUALITY.values(), *DECISION_COST.values()]))
    levels: dict[str, set[str]] = {k: set() for k in keys}

    def mean_of(rows: pd.DataFrame, k: str) -> Estimate:
        if not np.isfinite(rows[k].to_numpy(float)).any():
            return NAN
        fv = frame_values(rows, k)
        levels[k].add(OVER_TRIALS if fv is None else OVER_FRAMES)
        return mean_ci(rows[k]) if fv is None else mean_ci_frames(*fv)

    per_mode = {m: {k: mean_of(r, k) for k in keys} for m, r in {"2d": a_rows, "3d": b_rows, **others}.items()}
    diff, rel = {}, {}
    for k in keys:
        if not len(a_rows) or not len(b_rows):
            diff[k] = rel[k] = NAN
            continue
        if paired:
            fv = paired_frames(pd.concat([a_rows, b_rows]), k, units) if k in FRAME_VALUES else None
        else:
            fa, fb = frame_values(a_rows, k), frame_values(b_rows, k)
            fv = (fa[0], fb[0], fa[1], fb[1]) if fa is not None and fb is not None else None
        if fv is not None:
            levels[k].add(OVER_FRAMES)
            a, b, ia, ib = fv
            diff[k], rel[k] = diff_rel_ci_frames(a, b, paired=paired, frames_a=ia, frames_b=ib)
            continue
        levels[k].add(OVER_TRIALS)
        if paired:
            a, b = paired_values(pd.concat([a_rows, b_rows]), k, units)
        else:
            a, b = a_rows[k].to_numpy(float), b_rows[k].to_numpy(float)
        diff[k] = diff_ci(a, b, paired=paired)
        rel[k] = diff_ci(a, b, paired=paired, relative=True)
    if not len(a_rows) or not len(b_rows):
        missing = " and ".join(m for m, r in (("2d", a_rows), ("3d", b_rows)) if not len(r))
        verdict = Verdict("inconclusive", f"no evaluated trial of {missing} yet, so there is nothing to compare")
    else:
        verdict = decide({n: rel[k] for n, k in DECISION_QUALITY.items()},
                         {n: rel[k] for n, k in DECISION_COST.items()}, margin)
    ci_over = {k: "mixed" if len(v) > 1 else next(iter(v), OVER_TRIALS) for k, v in levels.items()}
    return Comparison(per_mode, diff, rel, paired, verdict, ci_over)


@dataclass
class Decision:
    """The headline: each mode's best cell, the comparison there and the table rows."""

    cells: dict[str, tuple[int, int]]
    comparison: Comparison
    table: pd.DataFrame  # numeric, one row per measure (decision.csv)
    modes: list[str]


def decision(per_trial: pd.DataFrame, margin: float) -> Decision:
    """Compare each mode at its best configuration (cell chosen on validation), reported on test frames."""
    modes = modes_of(per_trial)
    cells = best_cells(per_trial)

    def at_best(mode: str) -> pd.DataFrame:
        if mode not in cells:
            return per_trial.iloc[0:0]
        g, f = cells[mode]
        return per_trial[(per_trial.gaussian_mode == mode) & (per_trial.grid_size == g) & (per_trial.max_frames == f)]

    paired = "2d" in cells and cells.get("2d") == cells.get("3d")
    others = {m: at_best(m) for m in modes if m not in ("2d", "3d")}
    comp = compare(at_best("2d"), at_best("3d"), others, pair_units(per_trial), paired, margin)
    rows = []
    for key, label, higher in QUALITY + COST:
        if all(not math.isfinite(comp.per_mode[m][key].mean) for m in comp.per_mode):
            continue  # e.g. no ground truth in the dataset
        row = {"measure": label, "key": key, "better": "higher" if higher else "lower"}
        for m in [m for m in MODE_ORDER if m in comp.per_mode] + sorted(set(comp.per_mode) - set(MODE_ORDER)):
            e = comp.per_mode[m][key]
            sel = at_best(m)
            row.update({f"{m}_mean": e.mean, f"{m}_lo": e.lo, f"{m}_hi": e.hi, f"{m}_n": e.n,
                        f"{m}_seeds": int(sel.loc[np.isfinite(sel[key]), ["study", "seed"]].drop_duplicates().shape[0])})
        d, r = comp.diff[key], comp.rel[key]
        row.update(diff_mean=d.mean, diff_lo=d.lo, diff_hi=d.hi, rel_mean=r.mean, rel_lo=r.lo, rel_hi=r.hi,
                   n_pairs=d.n if paired else 0, paired=paired, winner=winner(comp, key, higher),
                   ci_over=comp.ci_over.get(key, OVER_TRIALS))
        rows.append(row)
    return Decision(cells, comp, pd.DataFrame(rows), modes)


def winner(comp: Comparison, key: str, higher: bool) -> str:
    """The mode with the best mean; 'tie' when that is 2d or 3d and the 2d - 3d interval includes 0, 'few seeds'
    when fewer than MIN_N seeds stand behind a varying difference."""
    means = {m: e[key].mean for m, e in comp.per_mode.items() if math.isfinite(e[key].mean)}
    if not means:
        return "n/a"
    best = (max if higher else min)(means, key=means.get)
    d = comp.diff[key]
    if best in ("2d", "3d") and {"2d", "3d"} <= set(means):
        if not d.has_ci:
            return f"{best} (no CI)"
        if d.lo <= 0 <= d.hi:
            return "tie"
        if d.n < MIN_N and d.lo != d.hi:  # a constant difference (parameters per Gaussian) needs no seeds
            return f"{best} (few seeds)"
    return best


def breakdown(per_trial: pd.DataFrame, by: list[str], margin: float) -> pd.DataFrame:
    """One row per group of `by` (plus 'all cells'): paired 2d vs 3d by (cell, seed) and the verdict there."""
    units = pair_units(per_trial)
    groups = [("all cells", per_trial)] + [
        (", ".join(f"{k} {label_value(k, v)}" for k, v in zip(by, key if isinstance(key, tuple) else (key,))), g)
        for key, g in per_trial.groupby(by if len(by) > 1 else by[0])
    ]
    rows = []
    for name, g in groups:
        a, b = g[g.gaussian_mode == "2d"], g[g.gaussian_mode == "3d"]
        others = {m: g[g.gaussian_mode == m] for m in modes_of(g) if m not in ("2d", "3d")}
        c = compare(a, b, others, units, True, margin, keys=["test_heldout_iou"])
        row = {"group": name, "trials": " / ".join(f"{m} {len(g[g.gaussian_mode == m])}" for m in modes_of(g)),
               "pairs": c.rel["test_heldout_iou"].n}
        for m in c.per_mode:
            row[f"IoU {m}"] = c.per_mode[m]["test_heldout_iou"].fmt(digits=3)
        row["IoU 2d vs 3d"] = c.rel["test_heldout_iou"].pct()
        row["PSNR 2d vs 3d"] = c.rel["test_heldout_psnr"].pct()
        row["time/epoch 2d vs 3d"] = c.rel["epoch_time_s"].pct()
        row["memory 2d vs 3d"] = c.rel["peak_mem_mb"].pct()
        row["verdict"] = c.verdict.winner
        rows.append(row)
    return pd.DataFrame(rows)


def label_value(key: str, v) -> str:
    return "all" if key == "max_frames" and int(v) == 0 else str(v)


# ----------------------------------------------------------------------------------------------- study state


def status_notes(study: Study, per_trial: pd.DataFrame) -> list[str]:
    """What the numbers stand on: trial states, running or interrupted studies, modes without trials, devices."""
    notes = []
    m, t = study.metrics, study.trials
    names = sorted(set(m["study"]))
    notes.append(f"{len(per_trial)} evaluated trials from {len(names)} study(ies) ({', '.join(names)}); "
                 f"{m.groupby(['study', 'trial_id']).ngroups - len(per_trial)} trial(s) reported no validation "
                 f"epoch yet.")
    if len(t) and "status" in t:
        for name, rows in t.groupby("study"):
            counts = rows["status"].value_counts()
            notes.append(f"{name}: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in
                                                  ("completed", "stopped", "failed", "running", "pending")
                                                  if counts.get(s, 0)) + " trial(s).")
            unfinished = int(rows["status"].isin(["running", "pending"]).sum())
            if unfinished:
                notes.append(f"{name}: {unfinished} trial(s) still running or interrupted: the numbers use the "
                             f"epochs they reported so far.")
            failed = rows[rows["status"] == "failed"]
            for mode, f in failed.groupby(failed.get("gaussian_mode", pd.Series("?", index=failed.index))):
                errs = sorted(set(str(e).splitlines()[0][:200] for e in f.get("error", pd.Series(dtype=str)).dropna()))
                notes.append(f"{name}: {len(f)} {mode} trial(s) failed" + (f" ({'; '.join(errs[:3])})" if errs else "")
                             + ".")
    else:
        notes.append("No trials.parquet: trial states unknown (the study may still be running or was interrupted).")
    for name in names:
        space = study.infos.get(name, {}).get("space")
        if space:
            planned = len(space.get("modes", [])) * space.get("samples_per_cell", 1) * int(
                np.prod([len(v) for v in space.get("grid", {}).values()] or [1]))
            seen = len(t[t["study"] == name]) if len(t) and "study" in t else m[m["study"] == name]["trial_id"].nunique()
            if seen < planned:
                notes.append(f"{name}: {seen} of {planned} planned trials started: the study is still running or "
                             f"was interrupted.")
    for mode in ("2d", "3d"):
        if mode not in set(per_trial.gaussian_mode):
            notes.append(f"Mode {mode} has no trial with a validation epoch: no comparison is possible yet.")
    for col in ("device", "mem_kind"):
        kinds = sorted(set(per_trial[col]))
        if len(kinds) > 1:
            notes.append(f"Trials ran with different {col} ({', '.join(kinds)}): costs compare across them only "
                         f"roughly.")
    return notes


# ----------------------------------------------------------------------------------------------- writing


def display_table(d: Decision) -> pd.DataFrame:
    """The decision table as text: mean [95% CI] (n trials, seeds) per mode, 2d - 3d, relative, winner."""
    rows = []
    for _, r in d.table.iterrows():
        row = {"measure": r["measure"]}
        for m in d.comparison.per_mode:
            e = Estimate(r[f"{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"], int(r[f"{m}_n"]))
            row[m] = f"{e.fmt()} (n={e.n}, {int(r[f'{m}_seeds'])} seeds)" if e.n else "n/a"
        if {"2d", "3d"} <= set(d.comparison.per_mode):
            de = Estimate(r["diff_mean"], r["diff_lo"], r["diff_hi"], 0)
            re = Estimate(r["rel_mean"], r["rel_lo"], r["rel_hi"], 0)
            row["2d - 3d"] = de.fmt()
            row["2d vs 3d"] = re.pct()
            row["pairs"] = int(r["n_pairs"]) if r["paired"] else "unpaired"
        row["winner"] = r["winner"]
        rows.append(row)
    return pd.DataFrame(rows)


def cell_text(cell: tuple[int, int]) -> str:
    return f"grid {cell[0]}, frames {label_value('max_frames', cell[1])}"


def headline(d: Decision, margin: float) -> list[str]:
    """The recommendation and how it was reached, as Markdown lines."""
    v = d.comparison.verdict
    how = ("paired by seed" if d.comparison.paired else
           "unpaired (the modes' best cells differ)")
    cells = "; ".join(f"{m}: {cell_text(c)}" for m, c in d.cells.items())
    return [f"**Recommendation: {v.winner}** — {v.reason}.", "",
            f"Rule: margin {100 * margin:g}% relative on held-out IoU and PSNR of test frames. Each mode at its best "
            f"configuration chosen on validation frames ({cells}); 2d - 3d {how}; 95% bootstrap intervals "
            f"{interval_text(d)}."]


def interval_text(d: Decision) -> str:
    """What the decision table's intervals are over, in words."""
    if any(d.comparison.ci_over.get(k) == OVER_FRAMES for k in FRAME_VALUES):
        return "over seeds and test frames (held-out test quality) or over seeds (the other rows)"
    return "over seeds"


def interval_notes(d: Decision) -> list[str]:
    """How the held-out test quality rows' intervals were made, and the fallback for studies without per-frame
    values."""
    labels = {k: label for k, label, _ in QUALITY}
    shown = [k for k in FRAME_VALUES if k in set(d.table.get("key", []))]
    framed = [k for k in shown if d.comparison.ci_over.get(k) == OVER_FRAMES]
    fallback = [k for k in shown if k not in framed]
    notes = []
    if framed:
        notes.append(f"Intervals of {', '.join(labels[k] for k in framed)} are two-level bootstraps over seeds and "
                     f"test frames: trials (pairs) are resampled, then test frames within them; trials and modes "
                     f"that evaluated the same test frames share each resample's frame draw. The other rows' "
                     f"intervals are over trials (seeds).")
    if fallback:
        notes.append(f"No per-test-frame values for (some of) the trials of {', '.join(labels[k] for k in fallback)} "
                     f"(metrics written before they were recorded): their intervals fall back to trials (seeds) "
                     f"only, given the test frames each trial evaluated, and are narrower than intervals over seeds "
                     f"and frames would be.")
    return notes


def write_report(paths: list[str | Path], out: Path, margin: float = 0.02, threshold: Optional[float] = None,
                 renders: bool = True) -> Verdict:
    """Analyse the inputs and write the report directory (built aside, then swapped in)."""
    study = load_studies(paths)
    per_trial = trial_summary(study.metrics, threshold)
    if per_trial.empty:
        raise AnalysisError(f"{', '.join(map(str, paths))}: no trial has reached a validation epoch yet")
    if len(study.trials) and "status" in study.trials:
        per_trial = per_trial.merge(study.trials[["study", "trial_id", "status"]], on=["study", "trial_id"], how="left")
    d = decision(per_trial, margin)
    notes = status_notes(study, per_trial) + interval_notes(d)
    thr = per_trial.groupby(CELL)["iou_threshold"].first()
    notes.append("Convergence threshold (validation held-out IoU): " + "; ".join(
        f"{cell_text(k)}: {v:.3f}" for k, v in thr.items()) + ".")
    tables = {"Per cell (paired by seed)": breakdown(per_trial, CELL, margin),
              "Per grid_size (paired by cell and seed)": breakdown(per_trial, ["grid_size"], margin),
              "Per max_frames (paired by cell and seed)": breakdown(per_trial, ["max_frames"], margin)}
    out = Path(out)
    staging = prepare_out(out)
    try:
        figures = make_figures(study, per_trial, d, staging, renders, notes)
        shown = display_table(d)
        md = ["# 2D vs 3D Gaussian splatting: decision", "", *headline(d, margin), "",
              shown.to_markdown(index=False), "", "## Notes", "", *[f"- {n}" for n in notes]]
        for title, tbl in tables.items():
            md += ["", f"## {title}", "", tbl.to_markdown(index=False)]
        md += ["", "## Figures", "", *[f"- `{p.name}`: {cap}" for p, cap in figures]]
        (staging / "decision.md").write_text("\n".join(md) + "\n")
        d.table.to_csv(staging / "decision.csv", index=False)
        pd.concat([t.assign(table=name) for name, t in tables.items()]).to_csv(staging / "breakdown.csv", index=False)
        per_trial[[c for c in TRIAL_COLUMNS if c in per_trial]].to_csv(staging / "trials.csv", index=False)
        (staging / "report.html").write_text(html_page(d, margin, shown, notes, tables, figures))
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return d.comparison.verdict


def make_figures(study: Study, per_trial: pd.DataFrame, d: Decision, out: Path, renders: bool,
                 notes: list[str]) -> list[tuple[Path, str]]:
    """Curves, cost bars, quality against cost; qualitative renders and turntables when checkpoints allow."""
    from study import plots

    figs = plots.all_plots(study.metrics, per_trial, out)
    if renders:
        from study import renders as rd

        made, why = rd.render_figures(per_trial, study.trials, d.cells, out)
        figs += made
        notes.extend(why)
    else:
        notes.append("Renders skipped (--no-renders).")
    return figs


def prepare_out(out: Path) -> Path:
    """A fresh staging directory beside `out`; refuses an `out` that is not a report directory."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "decision.md").exists())):
        raise AnalysisError(f"{out}: exists and is not a report directory (no decision.md); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by the finished staging directory."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def html_page(d: Decision, margin: float, shown: pd.DataFrame, notes: list[str], tables: dict[str, pd.DataFrame],
              figures: list[tuple[Path, str]]) -> str:
    """One self-contained page: tables, notes and every figure embedded as a data URI."""
    v = d.comparison.verdict
    mime = {".png": "image/png", ".gif": "image/gif"}
    figs = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:{mime[p.suffix]};base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for p, cap in figures if p.suffix in mime
    )
    head = headline(d, margin)[2]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>2D vs 3D Gaussian splatting: decision"
        "</title><style>body{font-family:system-ui,sans-serif;max-width:1280px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:3px 6px}"
        "th{background:#eee;text-align:left}img{max-width:100%}figure{margin:1.5em 0}.rec{font-size:120%;padding:.6em;"
        "background:#f4f4d0}</style></head><body>",
        "<h1>2D vs 3D Gaussian splatting: decision</h1>",
        f"<p class='rec'><b>Recommendation: {html.escape(v.winner)}</b> — {html.escape(v.reason)}.</p>",
        f"<p>{html.escape(head.replace('**', ''))}</p>",
        shown.to_html(index=False, border=0),
        "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        *[f"<h2>{html.escape(t)}</h2>{tbl.to_html(index=False, border=0)}" for t, tbl in tables.items()],
        f"<h2>Figures</h2>{figs}</body></html>",
    ]
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- CLI


def default_out(paths: list[str]) -> Path:
    if len(paths) > 1:
        raise AnalysisError("several inputs: give --out DIR for the combined report")
    return _study_dir(Path(paths[0])) / "report"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.analyze", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="STUDY", help="study directories, metrics/ folders or parquet files")
    p.add_argument("--margin", type=float, default=0.02, help="relative quality margin of the decision rule")
    p.add_argument("--out", help="report directory (default <study>/report)")
    p.add_argument("--threshold", type=float, help="validation held-out IoU that counts as converged "
                                                   "(default: 90%% of the lower mode's median best, per cell)")
    p.add_argument("--no-renders", action="store_true", help="skip the qualitative panel and turntables")
    a = p.parse_args(argv)
    try:
        if not 0 <= a.margin < 1:
            raise AnalysisError(f"--margin {a.margin}: must be a fraction in [0, 1), e.g. 0.02 for 2%")
        out = Path(a.out) if a.out else default_out(a.inputs)
        verdict = write_report(a.inputs, out, a.margin, a.threshold, renders=not a.no_renders)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"recommendation: {verdict.winner} — {verdict.reason}\nreport: {out / 'report.html'}  "
          f"table: {out / 'decision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
