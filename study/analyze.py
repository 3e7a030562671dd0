"""The 2D-vs-3D decision table, plots and report: `python -m study.analyze <study-dir-or-parquet> [--margin 0.02]`.

Each mode's best configuration is chosen on validation frames (held-out views, `valid_heldout_iou`, then PSNR),
at its best validation epoch, and reported on held-out views of test frames. Uncertainty: 95% bootstrap intervals
over trials (seeds) of that configuration's grid cell; the 2d - 3d difference is paired by (cell, seed).
Writes `<study>/report/`: decision.md, decision.csv, PNG plots and report.html (images embedded).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

QUALITY = [("test_heldout_iou", "held-out IoU", "max"), ("test_heldout_psnr", "held-out PSNR (dB)", "max"),
           ("test_heldout_ssim", "held-out SSIM", "max"), ("gt_iou3d", "3D IoU vs ground truth", "max")]
COST = [("epoch_time_s", "training time per epoch (s)", "min"), ("render_ms", "render time per view (ms)", "min"),
        ("peak_mem_mb", "peak memory (MB)", "min"), ("params_per_gaussian", "parameters per Gaussian", "min"),
        ("n_gaussians", "Gaussians per frame", "min"), ("checkpoint_bytes", "checkpoint size (bytes)", "min"),
        ("epochs_to_threshold", "epochs to held-out IoU >= 0.7", "min")]
THRESHOLD_IOU = 0.7


class AnalysisError(ValueError):
    """Input that cannot be analysed; one line."""


# ----------------------------------------------------------------------------------------------- loading


def load_study(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(metrics rows, trials table, study.json) from a study directory, a metrics folder or a parquet file."""
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path}: no such study directory or parquet file")
    if path.is_file():
        try:
            return pd.read_parquet(path), pd.DataFrame(), {}
        except Exception as e:
            raise AnalysisError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    mdir = path / "metrics" if (path / "metrics").is_dir() else path
    parts = sorted(mdir.glob("*.parquet"))
    if not parts:
        raise AnalysisError(f"{path}: holds no metrics (no parquet files in {mdir})")
    try:
        metrics = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    except Exception as e:
        raise AnalysisError(f"{mdir}: unreadable parquet part ({type(e).__name__}: {e})".splitlines()[0]) from None
    trials = pd.read_parquet(path / "trials.parquet") if (path / "trials.parquet").exists() else pd.DataFrame()
    info = json.loads((path / "study.json").read_text()) if (path / "study.json").exists() else {}
    return metrics, trials, info


# ----------------------------------------------------------------------------------------------- statistics


def bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (NaN with fewer than 2 values)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def trial_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per trial at its best validation epoch, with cost means over epochs and epochs-to-threshold."""
    rows = []
    for tid, t in metrics.sort_values("epoch").groupby("trial_id"):
        ev = t[np.isfinite(t["valid_heldout_iou"].astype(float))]
        if ev.empty:
            continue
        best = ev.sort_values(["valid_heldout_iou", "valid_heldout_psnr"], ascending=False).iloc[0]
        row = best.to_dict()
        for k in ("epoch_time_s", "peak_mem_mb"):
            row[k] = float(t[k].astype(float).median())
        reached = ev[ev["valid_heldout_iou"] >= THRESHOLD_IOU]
        row["epochs_to_threshold"] = float(reached["epoch"].min()) if len(reached) else float("nan")
        row["epochs_run"] = int(t["epoch"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def best_cell(per_trial: pd.DataFrame, mode: str) -> Optional[dict]:
    """The (grid_size, max_frames) cell whose trials of this mode score best on validation (mean)."""
    m = per_trial[per_trial["gaussian_mode"] == mode]
    if m.empty:
        return None
    g = m.groupby(["grid_size", "max_frames"])["valid_heldout_iou"].mean().sort_values(ascending=False)
    grid, frames = g.index[0]
    return {"grid_size": int(grid), "max_frames": int(frames)}


def decide(d_iou: tuple, d_psnr: tuple, ref_iou: float, ref_psnr: float, cheaper: bool, margin: float) -> tuple[str, str]:
    """Apply the decision rule to paired differences (2d - 3d) given as (mean, lo, hi)."""
    rel = [(d / ref if ref else np.nan, lo / ref if ref else np.nan, hi / ref if ref else np.nan)
           for (d, lo, hi), ref in ((d_iou, ref_iou), (d_psnr, ref_psnr))]
    names = ("IoU", "PSNR")
    if any(not np.isfinite(r[0]) for r in rel):
        return "inconclusive", "not enough paired trials of both modes to compare"
    if any(np.isfinite(r[1]) and r[2] < -margin for r in rel) or (all(not np.isfinite(r[1]) for r in rel)
                                                                 and any(r[0] < -margin for r in rel)):
        worse = [f"{n} {100 * r[0]:+.1f}%" for n, r in zip(names, rel) if r[0] < -margin]
        return "3d", f"3D is better by more than the {100 * margin:.0f}% margin ({', '.join(worse)} for 2D)"
    within = all((r[1] >= -margin) if np.isfinite(r[1]) else (r[0] >= -margin) for r in rel)
    if within:
        if cheaper:
            return "2d", (f"2D's quality is within {100 * margin:.0f}% of 3D (IoU {100 * rel[0][0]:+.1f}%, PSNR "
                          f"{100 * rel[1][0]:+.1f}%) and it is faster or lighter")
        return "3d", f"2D's quality is within the margin but it is neither faster nor lighter, so 3D is kept"
    return "inconclusive", ("the interval of the quality difference straddles the "
                            f"{100 * margin:.0f}% margin — run more seeds")


def paired(per_trial: pd.DataFrame, key: str, a: str = "2d", b: str = "3d") -> np.ndarray:
    """Differences a - b of `key`, paired by (grid_size, max_frames, seed)."""
    idx = ["grid_size", "max_frames", "seed"]
    A = per_trial[per_trial.gaussian_mode == a].groupby(idx)[key].mean()
    B = per_trial[per_trial.gaussian_mode == b].groupby(idx)[key].mean()
    j = A.index.intersection(B.index)
    return (A[j] - B[j]).to_numpy(dtype=float)


def decision_table(per_trial: pd.DataFrame, margin: float) -> tuple[pd.DataFrame, str, str, dict]:
    """Rows: measures; columns: each mode's mean [95% CI] in its best cell, 2d - 3d paired difference, winner."""
    modes = [m for m in ("2d", "3d", "2d_screen") if m in set(per_trial.gaussian_mode)]
    cells = {m: best_cell(per_trial, m) for m in modes}
    rows = []
    for key, label, better in QUALITY + COST:
        if key not in per_trial or per_trial[key].astype(float).isna().all():
            continue
        row = {"measure": label, "key": key}
        means = {}
        for m in modes:
            c = cells[m]
            sel = per_trial[(per_trial.gaussian_mode == m) & (per_trial.grid_size == c["grid_size"])
                            & (per_trial.max_frames == c["max_frames"])][key].astype(float)
            lo, hi = bootstrap_ci(sel.to_numpy())
            means[m] = float(sel.mean())
            row[m] = f"{means[m]:.4g} [{lo:.4g}, {hi:.4g}] (n={sel.notna().sum()})"
        if {"2d", "3d"} <= set(modes):
            diff = paired(per_trial, key)
            lo, hi = bootstrap_ci(diff)
            row["2d - 3d (paired)"] = f"{np.mean(diff):.4g} [{lo:.4g}, {hi:.4g}] (n={len(diff)})" if len(diff) else "n/a"
        finite = {m: v for m, v in means.items() if np.isfinite(v)}
        row["winner"] = (max if better == "max" else min)(finite, key=finite.get) if finite else "n/a"
        if {"2d", "3d"} <= set(modes) and len(diff) > 1 and lo <= 0 <= hi and np.ptp(diff) > 0:
            row["winner"] = "tie (paired interval includes 0)"
        rows.append(row)
    table = pd.DataFrame(rows)
    if not {"2d", "3d"} <= set(modes):
        missing = {"2d", "3d"} - set(modes)
        return table, "inconclusive", f"no evaluated trial of mode {', '.join(sorted(missing))} yet", cells

    def stats(key):
        d = paired(per_trial, key)
        lo, hi = bootstrap_ci(d)
        return (float(np.mean(d)) if len(d) else np.nan, lo, hi)

    ref = per_trial[per_trial.gaussian_mode == "3d"]
    cheaper = any(paired(per_trial, k).mean() < 0 for k in ("epoch_time_s", "peak_mem_mb", "render_ms")
                  if len(paired(per_trial, k)))
    winner, reason = decide(stats("test_heldout_iou"), stats("test_heldout_psnr"),
                            float(ref.test_heldout_iou.mean()), float(ref.test_heldout_psnr.mean()), cheaper, margin)
    return table, winner, reason, cells


# ----------------------------------------------------------------------------------------------- plots


def plots(metrics: pd.DataFrame, per_trial: pd.DataFrame, out: Path) -> list[Path]:
    """Curves per epoch (mean and band per mode), cost bars, and quality against cost with Pareto fronts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("train_loss", "valid_heldout_iou", "valid_heldout_psnr")):
        for mode, rows in metrics.groupby("gaussian_mode"):
            g = rows.groupby("epoch")[key].agg(["mean", "min", "max"]).dropna()
            ax.plot(g.index, g["mean"], label=mode)
            ax.fill_between(g.index, g["min"], g["max"], alpha=0.2)
        ax.set(xlabel="epoch", title=key)
        ax.legend()
    files.append(_save(fig, out / "curves.png"))
    costs = [k for k in ("epoch_time_s", "render_ms", "peak_mem_mb") if k in per_trial]
    fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4))
    for ax, key in zip(np.atleast_1d(axes), costs):
        g = per_trial.groupby("gaussian_mode")[key].agg(["mean", "std"])
        ax.bar(g.index, g["mean"], yerr=g["std"].fillna(0), color=["C0", "C1", "C2"][: len(g)])
        ax.set(title=key)
    files.append(_save(fig, out / "costs.png"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, cost in zip(axes, ("epoch_time_s", "peak_mem_mb")):
        for i, (mode, rows) in enumerate(per_trial.groupby("gaussian_mode")):
            ax.scatter(rows[cost], rows["test_heldout_iou"], label=mode, color=f"C{i}", alpha=0.7)
            front = pareto(rows[cost].to_numpy(float), rows["test_heldout_iou"].to_numpy(float))
            ax.plot(rows[cost].to_numpy()[front], rows["test_heldout_iou"].to_numpy()[front], color=f"C{i}")
        ax.set(xlabel=cost, ylabel="held-out test IoU", title=f"quality vs {cost}")
        ax.legend()
    files.append(_save(fig, out / "pareto.png"))
    return files


def pareto(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower cost and higher quality, by cost."""
    order = np.argsort(cost)
    front, best = [], -np.inf
    for i in order:
        if np.isfinite(quality[i]) and quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.array(front, dtype=int)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- report


def write_report(path: Path, out: Path, margin: float) -> tuple[str, str]:
    metrics, trials, info = load_study(path)
    per_trial = trial_summary(metrics)
    if per_trial.empty:
        raise AnalysisError(f"{path}: no trial has reached a validation epoch yet")
    out.mkdir(parents=True, exist_ok=True)
    table, winner, reason, cells = decision_table(per_trial, margin)
    notes = []
    if len(trials):
        running = int((trials.status == "running").sum())
        if running:
            notes.append(f"{running} trial(s) still running or interrupted: the numbers use what is there.")
        counts = trials.status.value_counts().to_dict()
        notes.append("trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    studies = sorted(set(metrics["study"])) if "study" in metrics else []
    notes.append(f"{len(per_trial)} evaluated trials from {len(studies) or 1} study/studies; seeds "
                 f"{sorted(set(per_trial.seed.astype(int)))}; best cells: {cells}")
    breakdown = {}
    for key in ("grid_size", "max_frames"):
        breakdown[key] = per_trial.pivot_table(index=key, columns="gaussian_mode",
                                               values=["test_heldout_iou", "test_heldout_psnr", "epoch_time_s"],
                                               aggfunc="mean")
    md = [f"# 2D vs 3D Gaussian splatting: decision\n", f"**Recommendation: {winner}** — {reason}.\n",
          f"Margin {100 * margin:.0f}% relative on held-out IoU and PSNR. " + " ".join(notes) + "\n",
          table.drop(columns=["key"]).to_markdown(index=False) if _has_tabulate() else table.to_string(index=False)]
    for key, b in breakdown.items():
        md += [f"\n## By {key}\n", b.round(4).to_string()]
    tmp = out / ".decision.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out / "decision.md")
    tmp = out / ".decision.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "decision.csv")
    pngs = plots(metrics, per_trial, out)
    imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem}</figcaption></figure>" for p in pngs
    )
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>2D vs 3D decision</title><style>"
            f"body{{font-family:sans-serif;max-width:1200px;margin:auto}}td,th{{border:1px solid #ccc;padding:4px}}"
            f"table{{border-collapse:collapse}}img{{max-width:100%}}</style></head><body>"
            f"<h1>2D vs 3D Gaussian splatting</h1><p><b>Recommendation: {html.escape(winner)}</b> — "
            f"{html.escape(reason)}.</p><p>{html.escape(' '.join(notes))}</p>"
            f"{table.drop(columns=['key']).to_html(index=False)}"
            + "".join(f"<h2>By {k}</h2>{b.round(4).to_html()}" for k, b in breakdown.items())
            + f"{imgs}</body></html>")
    tmp = out / ".report.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, out / "report.html")
    return winner, reason


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.analyze", description=__doc__.splitlines()[0])
    p.add_argument("study", help="study directory, its metrics/ folder, or a parquet file")
    p.add_argument("--margin", type=float, default=0.02, help="relative quality margin of the decision rule")
    p.add_argument("--out", help="output directory (default <study>/report)")
    a = p.parse_args(argv)
    path = Path(a.study)
    out = Path(a.out) if a.out else (path if path.is_dir() else path.parent) / "report"
    try:
        winner, reason = write_report(path, out, a.margin)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"recommendation: {winner} — {reason}\nreport: {out / 'report.html'}  table: {out / 'decision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
