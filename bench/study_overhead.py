"""Benchmark tables 3 and 4: what the study machinery costs, and what ASHA saves.

`python -m bench.study_overhead [--quick] [--dataset PATH]` prints both tables.

3. Study overhead. A seeded study is run as the user runs it (`python -m study.run`, a subprocess, one trial at a
   time). The baseline is the same trials' configurations trained one after another in one process with
   `posesplat.train.train` (one thread, as each trial gets one CPU), for the epochs each trial ran. Overhead =
   study wall time / baseline - 1: everything Ray, Tune, the parquet sink, TensorBoard and checkpoint reporting
   add. Two sizes: the smoke space's tiny trials (about 2 s each, where fixed costs dominate) and a cell of the
   CPU-scaled comparison space (the trials `make study` runs).
4. ASHA savings. The same seeded smoke-sized study with stratified ASHA and without early stopping: epochs run,
   and whether each mode's best configuration (by held-out validation IoU) is the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from posesplat.config import Config, make_config
from posesplat.train import train
from study.base.space import MODE_KEY

ROOT = Path(__file__).resolve().parents[1]


def smoke_space(epochs: int, samples: int, scheduler: str) -> dict:
    """The smoke space with a larger budget, so that ASHA has rungs to stop at."""
    space = json.loads((ROOT / "search_spaces" / "smoke.json").read_text())
    space.update(name=f"smoke_{scheduler}", max_epochs=epochs, samples_per_cell=samples)
    space.pop("confirm", None)  # the explore stage's machinery is what is measured
    space["scheduler"] = {"type": scheduler, "grace_period": 1, "reduction_factor": 2}
    return space


def comparison_cell_space(epochs: int, samples: int) -> dict:
    """One (grid 32, 30 frames) cell of the comparison space at its CPU scale, without early stopping."""
    space = json.loads((ROOT / "search_spaces" / "comparison.json").read_text())
    cell = {"grid_size": [32], "max_frames": [30]}
    space.update(name="comparison_cell", grid=cell, max_epochs=epochs, samples_per_cell=samples)
    space["cpu"].update(grid=cell, max_epochs=epochs, samples_per_cell=samples)
    space.pop("confirm", None)
    space["cpu"].pop("confirm", None)
    space["scheduler"] = {"type": "none", "grace_period": 1, "reduction_factor": 2}
    return space


def run_study(space: dict, storage: Path, dataset: str) -> dict:
    """Run `python -m study.run` on `space`; its wall times, metrics and trials."""
    from study.analysis.load import load_study  # deferred: the analysis only once a study has run

    path = storage / f"{space['name']}.json"
    path.write_text(json.dumps(space))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "study.run", "--space", str(path), "--storage", str(storage), "--dataset",
                    dataset, "--no-report", "--max-concurrent", "1", "--cpu"], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    metrics, trials, info = load_study(storage / space["name"])
    return dict(name=space["name"], wall=wall, tune_wall=float(info["wall_time_s"]), metrics=metrics, trials=trials)


def trial_configs(trials: pd.DataFrame, metrics: pd.DataFrame) -> list[tuple[Config, int]]:
    """Each trial's full training config (trials.parquet, lists JSON-encoded) and the epochs it ran."""
    ran = metrics.groupby("trial_id")["epoch"].max()
    out = []
    for row in trials.to_dict("records"):
        values = {k: json.loads(v) if isinstance(v, str) and v.startswith(("[", "{")) else v
                  for k, v in row.items() if k in Config.model_fields and v is not None}
        out.append((make_config(values, f"trial {row['trial_id']}"), int(ran[row["trial_id"]])))
    return out


def sequential_baseline(configs: list[tuple[Config, int]]) -> float:
    """Seconds to train the configs one after another in this process, one thread, with checkpoints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for i, (cfg, epochs) in enumerate(configs):
                train(cfg, ckpt_path=Path(tmp) / f"{i}.pt", epochs=epochs, progress=False)
            return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def best_per_mode(metrics: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """(lr, seed) of each mode's trial with the highest held-out validation IoU at its last epoch."""
    from study.analysis.load import trial_summary  # deferred: as load_study above

    best = {m: r.sort_values("valid_heldout_iou").iloc[-1] for m, r in trial_summary(metrics).groupby(MODE_KEY)}
    return {m: (round(float(b["lr"]), 6), int(b["seed"])) for m, b in best.items()}


def split_overhead(metrics: pd.DataFrame) -> tuple[float, float]:
    """(seconds per epoch, seconds per trial) that a one-at-a-time study adds, from the metrics' timestamps. Per
    epoch: the spacing of a trial's epochs beyond their training and evaluation time. Per trial: the time from one
    trial's last epoch to the next trial's first, beyond that epoch's work (what starting a trial adds)."""
    m = metrics.sort_values("timestamp").assign(work=lambda d: d.epoch_time_s + d.eval_time_s)
    t = (m.timestamp - m.timestamp.min()).dt.total_seconds()
    same = m.trial_id.eq(m.trial_id.shift())
    gap = t.diff() - m.work
    return float(gap[same].median()), float(gap[~same].iloc[1:].median()) if (~same).sum() > 1 else float("nan")


def overhead_row(label: str, study: dict, baseline: float) -> dict:
    m, n = study["metrics"], len(study["trials"])
    per_epoch, per_trial = split_overhead(m)
    return dict(study=label, trials=n, epochs=len(m), wall=study["wall"], tune_wall=study["tune_wall"],
                baseline=baseline, per_trial=baseline / max(n, 1), overhead=study["wall"] / baseline - 1,
                tune_overhead=study["tune_wall"] / baseline - 1, add_epoch=per_epoch, add_trial=per_trial,
                fixed=study["wall"] - baseline - per_epoch * len(m) - per_trial * n)


def run(dataset: str, quick: bool = False) -> tuple[list[dict], dict]:
    """Table 3 rows and table 4's comparison."""
    epochs, samples = (4, 2) if quick else (8, 4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        asha = run_study(smoke_space(epochs, samples, "asha"), Path(tmp), dataset)
        full = run_study(smoke_space(epochs, samples, "none"), Path(tmp), dataset)
        rows.append(overhead_row("smoke-sized (grid 16, 12 frames)", full,
                                 sequential_baseline(trial_configs(full["trials"], full["metrics"]))))
        cell = run_study(comparison_cell_space(2 if quick else 8, 1 if quick else 4), Path(tmp), dataset)
        rows.append(overhead_row("comparison cell (grid 32, 30 frames, CPU scale)", cell,
                                 sequential_baseline(trial_configs(cell["trials"], cell["metrics"]))))
    savings = dict(asha_epochs=len(asha["metrics"]), full_epochs=len(full["metrics"]),
                   asha_best=best_per_mode(asha["metrics"]), full_best=best_per_mode(full["metrics"]))
    return rows, savings


def overhead_table(rows: list[dict]) -> str:
    lines = ["| study | trials | epochs | baseline s (sequential `train`) | per trial s | wall s (`study.runner.run`) | "
             "overhead | wall s (`Tuner.fit`) | overhead inside Tune | added per epoch ms | added per trial s | "
             "fixed s (the rest) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['study']} | {r['trials']} | {r['epochs']} | {r['baseline']:.1f} | {r['per_trial']:.1f} | "
              f"{r['wall']:.1f} | {100 * r['overhead']:.0f}% | {r['tune_wall']:.1f} | {100 * r['tune_overhead']:.0f}% | "
              f"{1000 * r['add_epoch']:.0f} | {r['add_trial']:.2f} | {r['fixed']:.1f} |" for r in rows]
    return "\n".join(lines)


def savings_table(s: dict) -> str:
    def named(best: dict) -> str:
        return ", ".join(f"{m} lr {lr:g} seed {seed}" for m, (lr, seed) in sorted(best.items()))

    same = s["asha_best"] == s["full_best"]
    return ("| epochs with ASHA | epochs, full budget | saved | each mode's best the same |\n|---|---|---|---|\n"
            f"| {s['asha_epochs']} | {s['full_epochs']} | {100 * (1 - s['asha_epochs'] / s['full_epochs']):.0f}% | "
            f"{'yes' if same else 'no'} (full budget: {named(s['full_best'])}; ASHA: {named(s['asha_best'])}) |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.study_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(ROOT / "data" / "synthetic_mouse.zarr"))
    p.add_argument("--quick", action="store_true", help="fewer epochs and trials")
    a = p.parse_args()
    rows, savings = run(a.dataset, a.quick)
    print(overhead_table(rows) + "\n\n" + savings_table(savings))
