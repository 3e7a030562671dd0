"""Study directories made by hand for the analysis tests: an explore stage as study.runner.run writes it
(make_study) and a confirm stage with a planted truth (add_confirm)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


CELLS = [(32, 30), (32, 100), (48, 30), (48, 100)]


def make_study(root: Path, name: str = "s", *, effect: float = 0.0, psnr_effect: float | None = None,
               seeds=range(6), cells=CELLS, modes=("2d", "3d"), epochs: int = 5, noise: float = 0.003,
               time_ratio: float = 0.8, status: str = "completed", effect_by_grid: dict | None = None,
               rng_seed: int = 0, checkpoints: dict | None = None, bonus: dict | None = None,
               frames: int | None = None, frame_sd: float = 0.05, extra: tuple[str, dict] | None = None) -> Path:
    """A study directory as study.runner.run writes it: metrics/ parts per (trial, epoch), trials.parquet, study.json.

    Every mode but 3d has 3d's quality times (1 + effect) (per grid size when effect_by_grid is given) and times (1 +
    bonus) of (mode, grid_size, max_frames), and 3d's epoch time times time_ratio. extra: (a third grid key, {value:
    (both modes' quality factor, the effect at that value)}), each cell run at every value. Every (cell, seed) shares a
    random level for both modes, so pairing removes it. frames: also write per-test-frame values of that many test
    frames (the same frames for every trial of a cell): each is the trial's value times (1 + the frame's effect),
    effects of sd frame_sd shared by the cell's trials and centred so that the frames' mean is the trial's value.
    Without it the study has the format from before per-frame values were recorded (and the same trial values)."""
    rng = np.random.default_rng(rng_seed)
    frame_rng = np.random.default_rng(rng_seed + 1000)
    d = root / name
    (d / "metrics").mkdir(parents=True)
    trials = []
    psnr_effect = effect if psnr_effect is None else psnr_effect
    xkey, xvalues = extra or (None, {None: (1.0, None)})
    for (g, f), (xv, (scale, xeffect)) in ((c, x) for c in cells for x in xvalues.items()):
        if frames:
            frame_effect = frame_rng.normal(0, frame_sd, frames)
            frame_effect -= frame_effect.mean()
            frame_ids = list(range(2 * f // 3, 2 * f // 3 + frames))
        for seed in seeds:
            level = rng.normal(0, 0.03)  # this seed's luck, shared by both modes
            for mode in modes:
                cell_effect = (effect_by_grid or {}).get(g, effect if xeffect is None else xeffect)
                e = cell_effect if mode != "3d" else 0.0
                pe = (effect_by_grid or {}).get(g, psnr_effect if xeffect is None else xeffect) if mode != "3d" else 0.0
                b = (bonus or {}).get((mode, g, f), 0.0)
                e, pe = (1 + e) * (1 + b) - 1, (1 + pe) * (1 + b) - 1
                tid = f"{mode}_{g}_{f}_{seed}" + (f"_{xv}" if xkey else "")
                for epoch in range(1, epochs + 1):
                    ramp = 1 - 0.3 * np.exp(-epoch)
                    iou = 0.8 * scale * (1 + level) * (1 + e) * ramp * (1 + rng.normal(0, noise))
                    psnr = 28 * (1 + level) * (1 + pe) * ramp * (1 + rng.normal(0, noise))
                    base = 1.0 * g / 32 * (time_ratio if mode != "3d" else 1.0)
                    row = {
                        "study": name, "trial_id": tid, "gaussian_mode": mode, "grid_size": g, "max_frames": f,
                        "seed": seed, "lr": 1e-3, "ssim_lambda": 0.1, "epoch": epoch, "current_lr": 1e-3,
                        "train_loss": 0.5 / epoch, "valid_heldout_iou": iou, "valid_heldout_psnr": psnr,
                        "valid_heldout_ssim": 0.9, "test_heldout_iou": iou * 1.01, "test_heldout_psnr": psnr,
                        "test_heldout_ssim": 0.9, "gt_iou3d": float("nan"),
                        "epoch_time_s": base * (1 + rng.normal(0, 0.02)), "render_ms": 3.0 * base,
                        "cpu_peak_rss_growth_mb": 100.0 * g / 32, "mem_kind": "cpu_rss_delta",
                        "cuda_peak_allocated_mb": float("nan"), "gaussians_per_frame": 500.0,
                        "params_per_gaussian": {"2d": 13, "3d": 14, "2d_screen": 9}[mode], "model_params": 1000,
                        "checkpoint_bytes": 1_000_000, "device": "cpu", "backend": "torch", "hostname": "h",
                        "timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=epoch),
                    }
                    if xkey:
                        row[xkey] = xv
                    if frames:
                        row.update({f"{k}_frames": list(row[k] * (1 + frame_effect)) for k in
                                    ("test_heldout_iou", "test_heldout_psnr", "test_heldout_ssim")},
                                   test_frames=frame_ids)
                    pq.write_table(pa.Table.from_pylist([row]), d / "metrics" / f"part-{tid}-{epoch:04d}.parquet")
                ck = (checkpoints or {}).get(mode)
                trials.append({"study": name, "trial_id": tid, "status": status, "last_epoch": epochs,
                               "stopped_at_epoch": None, "error": None, "checkpoint_path": str(ck) if ck else None,
                               "gaussian_mode": mode, "grid_size": g, "max_frames": f, "seed": seed,
                               **({xkey: xv} if xkey else {})})
    pq.write_table(pa.Table.from_pylist(trials), d / "trials.parquet")
    space = {"name": name, "modes": list(modes), "grid": {"grid_size": sorted({c[0] for c in cells}),
                                                          "max_frames": sorted({c[1] for c in cells}),
                                                          **({xkey: list(xvalues)} if xkey else {})},
             "samples_per_cell": len(list(seeds)), "max_epochs": epochs}
    (d / "study.json").write_text(json.dumps({"space": space}))
    return d


def add_confirm(study: Path, effect: float, cost: float = 0.0, seeds: int = 6, frames: int = 20,
                checkpoints: dict | None = None, rng_seed: int = 0) -> Path:
    """Give an explore study a confirm stage with a planted truth (study.analysis.simulate's generator)."""
    from study.analysis.simulate import Noise, Truth, generate, make_plan, write_study

    plan = make_plan(seeds, frames)
    per, trials = generate(Truth("t", effect, cost, (), ()), seeds, frames, Noise(), np.random.default_rng(rng_seed))
    return write_study(study.parent, per.assign(study=study.name), trials, plan, study.name, checkpoints)
