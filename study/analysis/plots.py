"""Report figures from the metrics (matplotlib, Agg): curves per epoch, cost bars, quality against cost."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.switch_backend("Agg")  # load the backend now, not at the report's first figure, where a signal could land in
# its extension's import and turn into "ImportError: initialization failed" instead of the interrupt
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from study.analysis.confirm import in_cell  # noqa: E402
from study.analysis.explore import cell_text  # noqa: E402
from posesplat.metrics import PEAK_MEM, label  # noqa: E402
from posesplat.modes import colour  # noqa: E402
from study.analysis.load import DEFAULT_CELL, memory_column, modes_of  # noqa: E402
from study.analysis.stats import mean_ci, pareto_front  # noqa: E402
from study.base.space import MODE_KEY

CURVES = [("train_loss", "training loss"), ("valid_heldout_iou", "held-out IoU (valid frames)"),
          ("valid_heldout_psnr", "held-out PSNR, dB (valid frames)")]
COSTS = [("epoch_time_s", "training time per epoch (s)"), ("render_ms", "render time per view (ms)")]
DPI = 80



def _cells(df: pd.DataFrame, keys: Sequence[str]) -> list[dict[str, int]]:
    """Every cell (one value of each of `keys`) with rows in `df`, in order."""
    return [dict(zip(keys, map(int, c))) for c in sorted(set(df[list(keys)].itertuples(index=False, name=None)))]

def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves(metrics: pd.DataFrame, out: Path, cell: Sequence[str] = DEFAULT_CELL, name: str = "curves.png",
           what: str = "") -> tuple[Path, str]:
    """Loss and held-out IoU/PSNR per epoch, one column per cell (the keys `cell`), modes overlaid: mean line,
    min-max band."""
    cells = _cells(metrics, cell)
    fig, axes = plt.subplots(len(CURVES), len(cells), figsize=(3.6 * len(cells) + 0.5, 2.6 * len(CURVES)),
                             squeeze=False, sharex="col")
    for j, cell in enumerate(cells):
        rows = in_cell(metrics, cell)
        for i, (key, label) in enumerate(CURVES):
            ax = axes[i, j]
            for mode, r in rows.groupby(MODE_KEY):
                g = r[np.isfinite(r[key])].groupby("epoch")[key].agg(["mean", "min", "max", "count"])
                if g.empty:
                    continue
                n = r["trial_id"].nunique()
                ax.plot(g.index, g["mean"], color=colour(mode), marker=".", label=f"{mode} ({n} trials)")
                ax.fill_between(g.index, g["min"], g["max"], color=colour(mode), alpha=0.2, linewidth=0)
            if i == 0:
                ax.set_title(cell_text(cell), fontsize=10)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if i == len(CURVES) - 1:
                ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        if axes[0, j].get_legend_handles_labels()[0]:
            axes[0, j].legend(fontsize=8)
    path = _save(fig, out / name)
    return path, (f"{what}Training loss and held-out IoU/PSNR on validation frames per epoch, per "
                  f"({', '.join(cell)}) cell: mean over the trials still running at that epoch (line) and their "
                  "range (band).")


def cost_bars(per_trial: pd.DataFrame, out: Path, cell: Sequence[str] = DEFAULT_CELL) -> tuple[Path, str]:
    """Time and memory per cell and mode: mean with 95% bootstrap interval over trials."""
    cells = _cells(per_trial, cell)
    modes = modes_of(per_trial)
    costs = [*COSTS, memory(per_trial)]
    fig, axes = plt.subplots(1, len(costs), figsize=(4.2 * len(costs), 3.4), squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for ax, (key, label) in zip(axes[0], costs):
        for k, mode in enumerate(modes):
            est = [mean_ci(in_cell(per_trial[per_trial[MODE_KEY] == mode], c)[key]) for c in cells]
            x = np.arange(len(cells)) + (k - (len(modes) - 1) / 2) * width
            mean = np.array([e.mean for e in est])
            err = np.clip(np.array([[e.mean - e.lo, e.hi - e.mean] if e.has_ci else [0, 0] for e in est]).T, 0, None)
            ax.bar(x, np.nan_to_num(mean), width, yerr=err, capsize=2, color=colour(mode), label=mode)
        ax.set_xticks(np.arange(len(cells)), [cell_text(c).replace(", ", "\n") for c in cells], fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    path = _save(fig, out / "costs.png")
    return path, ("Training time per epoch (median over a trial's epochs), render time per view and peak memory "
                  "(max over a trial's epochs: CUDA allocated on GPUs, resident-set growth on CPUs) per cell: mean "
                  "over trials with a 95% bootstrap interval.")


def memory(per_trial: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the peak memory the trials measured: CUDA's when any trial ran on a GPU."""
    key = memory_column(per_trial) or PEAK_MEM["cpu_rss_delta"]
    return key, label(key)


def quality_vs_cost(per_trial: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Every trial as a point of test quality against cost; each mode's Pareto front as a step line."""
    qual = [("test_heldout_iou", "held-out IoU (test)"), ("test_heldout_psnr", "held-out PSNR, dB (test)")]
    cost = [("epoch_time_s", "training time per epoch (s)"), memory(per_trial)]
    fig, axes = plt.subplots(len(qual), len(cost), figsize=(5.2 * len(cost), 3.6 * len(qual)), squeeze=False)
    for i, (q, ql) in enumerate(qual):
        for j, (c, cl) in enumerate(cost):
            ax = axes[i, j]
            for mode, r in per_trial.groupby(MODE_KEY):
                x, y = r[c].to_numpy(float), r[q].to_numpy(float)
                ax.scatter(x, y, color=colour(mode), alpha=0.7, s=18, label=mode)
                front = pareto_front(x, y)
                if len(front):
                    ax.plot(x[front], y[front], color=colour(mode), drawstyle="steps-post", linewidth=1.5)
            ax.set(xlabel=cl, ylabel=ql)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    path = _save(fig, out / "pareto.png")
    return path, ("Test-frame held-out quality against cost, one point per trial (at its best validation epoch); "
                  "lines: each mode's Pareto front (no other trial of the mode is both cheaper and better).")


def intervals(rows: list[tuple[str, float, float, float]], margin: float, title: str, out: Path,
              level: float = 0.95) -> tuple[Path, str]:
    """The decision at a glance: each measure's relative difference with its `level` interval against the +-margin
    band. rows: (label, estimate, lo, hi) as fractions."""
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    ax.axvspan(-100 * margin, 100 * margin, color="0.85", label=f"±{100 * margin:g}% margin")
    ax.axvline(0, color="0.4", linewidth=0.8)
    for yi, (label, est, lo, hi) in zip(y, rows):
        if np.isfinite(est):
            ax.errorbar(100 * est, yi, xerr=[[100 * max(est - lo, 0)], [100 * max(hi - est, 0)]] if np.isfinite(lo)
                        else None, fmt="o", color="C3", capsize=4)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=9)
    ax.set_xlabel(f"relative difference, % ({100 * level:.3g}% interval)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    path = _save(fig, out / "decision.png")
    return path, (f"{title}: the relative difference of each decision measure with its {100 * level:.3g}% interval over seeds and "
                  f"test frames; the grey band is the equivalence margin.")


def tuning(tuned: dict[str, dict], select: str, out: Path) -> tuple[Path, str]:
    """Each mode's validation score against its tuned key from the deciding tuning (study/analysis/tuning.py): mean and
    standard error over seeds per value tried, the chosen value (star) and the first grid's ends (dotted)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    key = next(iter(tuned.values()))["key"]
    for m, o in tuned.items():
        c = o["curve"]
        se = [0 if s is None else s for s in c["se"]]
        ax.errorbar(c["values"], c["mean"], yerr=se, fmt="-o", color=colour(m), capsize=3, label=f"{m} ({o['edge'] if o['edge'] == 'bracketed' else 'best at the ' + o['edge'] + ' end'})")
        j = c["values"].index(o["chosen"])
        ax.plot([o["chosen"]], [c["mean"][j]], "*", color=colour(m), markersize=16, markeredgecolor="k")
    for end in next(iter(tuned.values()))["first_range"]:
        ax.axvline(end, color="0.5", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"validation {label(select)} (mean ± s.e. over seeds)")
    ax.set_title("Deciding tuning at the confirm cell", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = _save(fig, out / "tuning.png")
    return path, (f"Deciding tuning: each mode's validation score against {key} at the confirm cell (full budget, "
                  f"no early stopping), the chosen value starred, the first grid's ends dotted; a choice is bracketed "
                  f"when a tried value on each side scores worse (docs/analysis.md).")


def all_plots(metrics: pd.DataFrame, per_trial: pd.DataFrame, out: Path,
              cell: Sequence[str] = DEFAULT_CELL) -> list[tuple[Path, str]]:
    """Every metrics figure, as (file, caption), per cell of the keys `cell`."""
    return [curves(metrics, out, cell), cost_bars(per_trial, out, cell), quality_vs_cost(per_trial, out)]
