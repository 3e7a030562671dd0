"""A study (local or behind a URI) into tables: metrics rows, the trials table, study.json, and one row per trial.

Every trial is summarised by `trial_summary` at its epoch of best validation (`valid_heldout_iou`, ties broken by
`valid_heldout_psnr`, then the earlier epoch). Or it is summarised by `final_summary` at its last evaluated epoch: the
confirm stage scores the epoch its design fixed in advance, never one chosen on test data. The explore stage lives in
the study directory, the confirm stage in its `confirm/` folder (same layout); see docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from posesplat import metrics as schema
from posesplat.messages import parse_json
from posesplat.modes import names as mode_names
from posesplat.progress import Progress
from study.base import metrics_folder
from study.base.storage import StorageError, Store, is_uri, join_uri
from study.base.rows import SELECT
from study.base.space import MODE_KEY

DEFAULT_CELL = ("grid_size", "max_frames")  # the cell keys of an input without a space's grid (a bare parquet file)

# the measures of the analysis (key in the per-trial table, label, True when higher is better): the schema's
# (posesplat.metrics) test-frame quality and costs, whose direction it gives, and two measures of the analysis' own
_LABELS = {
    "test_heldout_iou": "held-out IoU (test frames)",
    "test_heldout_psnr": "held-out PSNR, dB, full image (test frames)",
    "test_heldout_psnr_fg": "held-out foreground PSNR, dB (test frames; pixels where either mask is set)",
    "test_heldout_ssim": "held-out SSIM (test frames)",
    "test_heldout_depth_err": "held-out depth error, m (test frames; true-mask pixels)",
    "test_heldout_depth_err_rel": "held-out depth error relative to the camera distance (test frames)",
    "test_heldout_normal_err": "held-out normal error, degrees (test frames; from the rendered depth)",
    "test_surface_dist": "surface distance to the true body, m (test frames; every view's rendered depth)",
    "gt_iou3d": "3D IoU vs ground-truth body (test frames)",
    "epoch_time_s": "training time per epoch, s (median over epochs)",
    "render_ms": "render time per frame and view, ms (median over evaluated epochs)",
    "cuda_peak_allocated_mb": "peak CUDA memory allocated, MB (max over epochs; GPU trials)",
    "cpu_peak_rss_growth_mb": "peak resident-set growth, MB (max over epochs; CPU trials)",
    "params_per_gaussian": "parameters per Gaussian",
    "gaussians_per_frame": "Gaussians per frame",
}
QUALITY = [(k, _LABELS[k], bool(schema.BY_NAME[k].higher_is_better))
           for k in (*schema.names("quality", per_frame=True), "gt_iou3d")]
COST = [(k, _LABELS[k], bool(schema.BY_NAME[k].higher_is_better)) for k in
        ("epoch_time_s", "render_ms", *schema.PEAK_MEM.values(), "params_per_gaussian", "gaussians_per_frame")] + [
    ("checkpoint_mb", "checkpoint size, MB", False),
    ("epochs_to_threshold", "epochs to reach the IoU threshold (trials that reached it)", False)]
LABELS = {k: label for k, label, _ in QUALITY + COST}
SHORT = {**{k: schema.BY_NAME[k].label or k for k in LABELS if k in schema.BY_NAME},
         "checkpoint_mb": "checkpoint size", "epochs_to_threshold": "epochs to threshold"}
HIGHER = {k: higher for k, _, higher in QUALITY + COST}
# measures with per-test-frame values (lists in the metrics, one per evaluated test frame) and the frame indices
FRAME_VALUES = {k: schema.frame_column(k) for k in schema.names(per_frame=True)}
FRAME_IDS = schema.FRAMES
THRESHOLD_FRACTION = 0.9
REQUIRED = ("trial_id", "epoch", MODE_KEY, "valid_heldout_iou")


def trial_columns(cell: Iterable[str] = DEFAULT_CELL) -> list[str]:
    """The columns of the report's trials.csv, with the analysis' cell keys."""
    return ["study", "trial_id", MODE_KEY, *cell, "seed", "lr", "ssim_lambda", "selected_epoch", "epochs_run",
            *SELECT, *(k for k, _, _ in QUALITY + COST), "iou_threshold", "device", "mem_kind", "status"]


class AnalysisError(ValueError):
    """Input that cannot be analysed; the message is one line naming the file and the problem."""


def _read_table(store: Store, *parts: str) -> pa.Table:
    try:
        return store.read_table(*parts)
    except Exception as e:  # truncated, foreign or unreadable file
        raise AnalysisError(f"{join_uri(store.uri, *parts)}: not a readable parquet file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def locate(path: str | Path) -> tuple[Store, pafs.FileType]:
    """An input as a Store (a local path or a URI: s3://..., any filesystem pyarrow opens) and what lies there."""
    try:
        store = Store(path)
        return store, store.fs.get_file_info(store.root).type
    except (StorageError, OSError) as e:
        raise AnalysisError(f"{path}: cannot be read ({str(e).splitlines()[0]})") from None


def stage_folder(path: str | Path) -> tuple[Store, Optional[tuple[str, ...]]]:
    """The stage folder of an input (a study or confirm/ folder, its metrics/ folder, or one parquet file) and, when
    the input is a file, that file's parts in the folder."""
    store, kind = locate(path)
    if kind == pafs.FileType.NotFound:
        raise AnalysisError(f"{path}: no such study directory or parquet file")
    if kind == pafs.FileType.File:
        folder = store.parent()
        return (folder.parent(), ("metrics", store.name)) if folder.name == "metrics" else (folder, (store.name,))
    if store.name == "metrics" and not store.exists("metrics"):
        return store.parent(), None
    return store, None


def stage_of(path: str | Path) -> tuple[Store, list[tuple[str, ...]], bool]:
    """(the stage folder, the metrics files in it that hold its rows, whether the input was one file) of an input:
    trial files and the parts of running trials (study.base.metrics_folder.current)."""
    store, file = stage_folder(path)
    if file is not None:
        return store, [file], True
    mdir = ("metrics",) if store.exists("metrics") else ()
    parts = [(*mdir, n) for n in metrics_folder.current(store.list("/".join(mdir), "*.parquet"))]
    if not parts:
        raise AnalysisError(f"{path}: holds no metrics yet (no parquet files in {join_uri(store.uri, *mdir)})")
    return store, parts, False


def _study_dir(path: str | Path) -> Path:
    """The study directory of a local input (a study dir, its metrics/ folder, or a parquet file)."""
    return Path(stage_folder(path)[0].root)


def load_study(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(metrics rows, trials table, study.json) of one study directory, its metrics/ folder or a parquet file."""
    store, parts, a_file = stage_of(path)
    metrics = read_rows(store, parts, path).to_pandas()
    missing = [c for c in REQUIRED if c not in metrics]
    if missing:
        raise AnalysisError(f"{join_uri(store.uri, *parts[0]) if len(parts) == 1 else path}: not a metrics table "
                            f"(no column {', '.join(repr(c) for c in missing)})")
    if "study" not in metrics:
        metrics["study"] = Path(parts[0][-1]).stem if a_file else store.name
    trials, info = pd.DataFrame(), {}
    if not a_file and store.exists("trials.parquet"):
        trials = _read_table(store, "trials.parquet").to_pandas()
        if "checkpoint_path" in trials:  # relative to the stage folder since the study may have been moved
            trials["checkpoint_path"] = [join_uri(store.uri, p) if isinstance(p, str) and not is_uri(p)
                                         and not p.startswith("/") else p for p in trials["checkpoint_path"]]
    if not a_file and store.exists("study.json"):
        info = parse_json(store.read_text("study.json"), join_uri(store.uri, "study.json"), AnalysisError)
    return metrics, trials, info


def read_rows(store: Store, parts: list[tuple[str, ...]], path: str | Path) -> pa.Table:
    """The rows of a stage's metrics files (all in one folder, as stage_of lists them), read in bulk
    (study.base.metrics_folder.read). When that fails, the files are read one at a time to name the one that is
    damaged, or the columns that disagree."""
    try:
        return metrics_folder.read(store, [p[-1] for p in parts], "/".join(parts[0][:-1]))
    except (pa.ArrowException, OSError):
        pass  # named below
    tables = [_read_table(store, *p) for p in Progress(parts, desc=f"reading {store.name}", leave=False,
                                                    disable=len(parts) < 500)]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise AnalysisError(f"{path}: metrics parts have incompatible columns ({str(e).splitlines()[0]})") from None


@dataclass
class Tables:
    """Everything read from one or more inputs (a study is its storage, study.base.storage.Store; these are its tables).
    """

    metrics: pd.DataFrame  # one row per (study, trial, epoch)
    trials: pd.DataFrame  # one row per (study, trial); may be empty
    infos: dict[str, dict] = field(default_factory=dict)  # study name -> study.json


def load_studies(paths: list[str | Path], grid: Iterable[str] = ()) -> Tables:
    """Read and combine several inputs; a re-reported (study, trial, epoch) keeps its latest row. The grid keys of
    the inputs' spaces, and `grid` (a stage without study.json: the confirm plan's cell), are cast as cells."""
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
    metrics = normalise(metrics, [*grid_keys(infos), *grid])
    trials = pd.concat(ts, ignore_index=True).drop_duplicates(["study", "trial_id"], keep="last") if ts else pd.DataFrame()
    return Tables(metrics.reset_index(drop=True), trials, infos)


def normalise(metrics: pd.DataFrame, grid: Iterable[str] = ()) -> pd.DataFrame:
    """Types and defaults the analysis relies on: float metrics, integer cells; a grid value null (max_frames: all
    frames) is 0, as study.analysis.confirm.in_cell matches it (no grid key's config field admits 0 with a null
    default)."""
    m = metrics.copy()
    m["epoch"] = pd.to_numeric(m["epoch"], errors="coerce")
    m = m[m["epoch"].notna()]
    m["epoch"] = m["epoch"].astype(int)
    for c in dict.fromkeys([*DEFAULT_CELL, "seed", *grid]):
        if c in m:
            m[c] = pd.to_numeric(m[c], errors="coerce").fillna(0).astype(int)
        elif c in (*DEFAULT_CELL, "seed"):  # an absent extra grid key stays absent: cell_keys names it
            m[c] = 0
    m = migrated(m)
    for c in ["valid_heldout_iou", "valid_heldout_psnr", "train_loss", "checkpoint_bytes", "params_per_gaussian",
              *(k for k, _, _ in QUALITY + COST)]:
        m[c] = pd.to_numeric(m[c], errors="coerce").astype(float) if c in m else np.nan
    m[MODE_KEY] = m[MODE_KEY].astype(str)
    m["study"] = m["study"].astype(str)
    m["trial_id"] = m["trial_id"].astype(str)
    return m


def migrated(m: pd.DataFrame) -> pd.DataFrame:
    """Metrics of a study written before the metrics schema under its names: `n_gaussians` is
    `gaussians_per_frame`, and `peak_mem_mb` either memory column, as its `mem_kind` says."""
    m = m.rename(columns={k: v for k, v in schema.RENAMED.items() if k in m and v not in m})
    if "peak_mem_mb" in m and not any(c in m for c in schema.PEAK_MEM.values()):
        kind = m["mem_kind"] if "mem_kind" in m else pd.Series("cpu_rss_delta", index=m.index)
        for k, col in schema.PEAK_MEM.items():
            m[col] = m["peak_mem_mb"].where(kind == k)
        m = m.drop(columns="peak_mem_mb")
    return m


# ----------------------------------------------------------------------------------------------- the comparison


def _spaces(infos: dict[str, dict]) -> dict[str, dict]:
    """Study name -> its space (from study.json), for the studies that have one."""
    return {name: info["space"] for name, info in infos.items() if isinstance(info.get("space"), dict)}


def grid_keys(infos: dict[str, dict]) -> list[str]:
    """Every grid key some study's space lists (in first-seen order), for normalise."""
    return list(dict.fromkeys(k for space in _spaces(infos).values() for k in space.get("grid") or {}))


def cell_keys(tables: "Tables") -> list[str]:
    """The keys that make a cell: the grid keys of the studies' spaces in the space's order (DEFAULT_CELL without a
    grid). Studies whose grids vary different keys are refused, since pooling them would hide a key's effect."""
    found = {name: tuple(space["grid"]) for name, space in sorted(_spaces(tables.infos).items()) if space.get("grid")}
    if len(set(found.values())) > 1:
        raise AnalysisError(f"studies {', '.join(found)} vary different grid keys ("
                            + "; ".join(f"{n} ({', '.join(k)})" for n, k in found.items())
                            + "): pooling them would hide a key's effect; analyse them apart")
    keys = list(next(iter(found.values()), DEFAULT_CELL))
    for k in keys:
        if k not in tables.metrics:
            raise AnalysisError(f"{', '.join(n for n in found if k in found[n])}: grid key '{k}' of the space has "
                                f"no such column in the metrics")
    return keys


def compared_modes(tables: "Tables") -> tuple[str, str]:
    """(challenger, reference) of the comparison: the spaces' confirm.modes, else the first two modes a space lists,
    else the modes the spaces list and the data hold in posesplat's order (padded by that order: 2d and 3d)."""
    spaces = _spaces(tables.infos)
    for pick in (lambda s: tuple((s.get("confirm") or {}).get("modes") or ()),
                 lambda s: tuple(s.get("modes", [])[:2])):
        found = {name: pick(s) for name, s in sorted(spaces.items()) if len(pick(s)) == 2}
        if len(set(found.values())) > 1:
            raise AnalysisError(f"studies {', '.join(found)} compare different modes ("
                                + "; ".join(f"{n} {' vs '.join(m)}" for n, m in found.items())
                                + "): analyse them apart")
        if found:
            return next(iter(found.values()))
    known = {m for s in spaces.values() for m in s.get("modes", [])} | set(tables.metrics[MODE_KEY])
    pad = [m for m in mode_names() if m not in known][: max(0, 2 - len(known))]
    return tuple(mode_order(known | set(pad))[:2])


# ----------------------------------------------------------------------------------------------- per trial


TRIAL = ["study", "trial_id"]  # a trial's key in the metrics rows


def over_epochs(rows: pd.DataFrame, evaluated: pd.DataFrame, trials: pd.MultiIndex) -> dict[str, np.ndarray]:
    """Each trial's costs that the schema summarises over epochs (median, max), over its evaluated epochs for a
    metric measured only in evaluation; the others are taken at the selected epoch. Values in `trials`' order."""
    out = {}
    for k, _, _ in COST:
        m = schema.BY_NAME.get(k)
        if m is not None and m.over_epochs != "selected" and k in rows:
            by = (evaluated if m.evaluated else rows).groupby(TRIAL, sort=False)[k]
            out[k] = (by.median() if m.over_epochs == "median" else by.max()).reindex(trials).to_numpy(float)
    return out


def trial_summary(metrics: pd.DataFrame, threshold: Optional[float] = None, *, last: bool = False,
                  cell: Iterable[str] = DEFAULT_CELL, modes: Optional[tuple[str, str]] = None) -> pd.DataFrame:
    """One row per trial with a validation epoch. It holds quality at its best validation epoch (at its last
    evaluated epoch when `last`) and costs over its epochs. It also holds epochs to reach the IoU threshold of its
    cell (the cell keys `cell`, the threshold of the two `modes`: see cell_thresholds). Trials in the order they
    first appear in the epoch-sorted rows; work per trial is vectorised, so the time grows with rows, not loops."""
    cell = list(cell)
    m = metrics.sort_values("epoch")
    order = pd.Series(m.groupby(TRIAL, sort=False).ngroup().to_numpy(), index=m.index)
    ev = m[np.isfinite(m["valid_heldout_iou"])]
    if ev.empty:
        return pd.DataFrame()
    chosen = ev if last else ev.sort_values([*SELECT, "epoch"], ascending=[False, False, True], na_position="last")
    best = (chosen.groupby(TRIAL, sort=False).tail(1) if last else chosen.groupby(TRIAL, sort=False).head(1))
    best = best.loc[order[best.index].sort_values(kind="stable").index]
    trials = pd.MultiIndex.from_frame(best[TRIAL])
    every = m.groupby(TRIAL, sort=False)
    at_end = every.tail(1).set_index(TRIAL).reindex(trials)
    per_trial = best.reset_index(drop=True).assign(**over_epochs(m, ev, trials))
    empty = [c for c in per_trial if per_trial[c].isna().all() and not pd.api.types.is_numeric_dtype(per_trial[c])]
    per_trial[empty] = per_trial[empty].astype(float)  # an all-null text column reads as float64, as a row's NaN does
    per_trial = per_trial.assign(
        selected_epoch=best["epoch"].astype(int).to_numpy(),
        epochs_run=every["epoch"].max().reindex(trials).astype(int).to_numpy(),
        checkpoint_mb=m["checkpoint_bytes"].where(m["checkpoint_bytes"] > 0).groupby(
            [m["study"], m["trial_id"]], sort=False).max().reindex(trials).to_numpy(float) / 1e6,
        mem_kind=at_end["mem_kind"].astype(str).to_numpy() if "mem_kind" in m else "unknown",
        device=at_end["device"].astype(str).to_numpy() if "device" in m else "unknown",
    )
    thresholds = cell_thresholds(per_trial, threshold, cell, modes)
    per_trial["iou_threshold"] = [thresholds[tuple(map(int, key))] for key in per_trial[cell].itertuples(index=False)]
    th = pd.Series([thresholds.get(tuple(map(int, key)), np.inf) for key in m[cell].itertuples(index=False)],
                   index=m.index)
    reached = m[m["valid_heldout_iou"] >= th]
    first = reached.groupby(TRIAL, sort=False)["epoch"].min().astype(float).reindex(trials)
    per_trial["epochs_to_threshold"] = first.to_numpy(float)
    return per_trial


def memory_column(df: pd.DataFrame) -> Optional[str]:
    """The peak-memory column the trials measured: CUDA's when any trial ran on a GPU, else the CPU one (None:
    neither was measured)."""
    return next((c for c in schema.PEAK_MEM.values() if c in df and df[c].notna().any()), None)


def stage_summary(stage: Tables, threshold: Optional[float] = None, *, last: bool = False,
                  cell: Iterable[str] = DEFAULT_CELL, modes: Optional[tuple[str, str]] = None) -> pd.DataFrame:
    """trial_summary of a stage's metrics with each trial's `status` from its trials table (how the trial ended:
    planning and the report leave out failed trials), where the table has one."""
    per = trial_summary(stage.metrics, threshold, last=last, cell=cell, modes=modes)
    if len(per) and len(stage.trials) and "status" in stage.trials:
        per = per.merge(stage.trials[["study", "trial_id", "status"]], on=["study", "trial_id"], how="left")
    return per


def cell_thresholds(per_trial: pd.DataFrame, threshold: Optional[float], cell: Iterable[str] = DEFAULT_CELL,
                    modes: Optional[tuple[str, str]] = None) -> dict[tuple[int, ...], float]:
    """The validation IoU a trial must reach to count as converged, per cell (a tuple over the cell keys). It is
    `threshold` when given. Else it is 90% of the lower of the two `modes`' medians (over trials) of the best
    validation held-out IoU, so both compared modes can reach it. Where neither of them ran in the cell, every mode's
    medians count."""
    out = {}
    for key, c in per_trial.groupby(list(cell)):
        key = tuple(map(int, key))
        if threshold is not None:
            out[key] = float(threshold)
            continue
        med = c.groupby(MODE_KEY)["valid_heldout_iou"].median()
        core = med[med.index.isin(modes or ())]
        out[key] = float(THRESHOLD_FRACTION * (core if len(core) else med).min())
    return out


def mode_order(names: Iterable[str]) -> list[str]:
    """Mode names in the registry's order (2d, 3d, 2d_screen), then any other."""
    names, known = set(names), mode_names()
    return [m for m in known if m in names] + sorted(names - set(known))


def modes_of(per_trial: pd.DataFrame) -> list[str]:
    """The modes present, in the registry's order, then any other."""
    return mode_order(per_trial[MODE_KEY] if len(per_trial) else ())

