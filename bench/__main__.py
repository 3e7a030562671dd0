"""All benchmarks: `python -m bench [--quick] [--out docs/benchmarks.md] [--only 1,2,3,4]`.

1. renderer forward+backward time and peak memory (bench/render.py)
2. one full training step against grid_size per mode (bench/train_step.py); fits the study's memory model
3. study overhead: smoke study wall time against the time its trials spent training
4. ASHA savings: epochs with early stopping against the full budget, and whether each mode's winner changes
Prints each table and rewrites the output file with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench import render as bench_render
from bench import train_step as bench_step

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import gsplat

    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} (driver/CUDA {torch.version.cuda})"
    return (f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n- CPU: {cpu}, {os.cpu_count()} cores\n"
            f"- GPU: {gpu}\n- torch {torch.__version__}, gsplat {gsplat.__version__}, Python {platform.python_version()}")


def fit_memory_model(rows: list[dict]) -> dict:
    """Per mode, least squares of peak MB against grid_size**3 / 1000 (linear in voxels)."""
    model = {}
    for mode in sorted({r["mode"] for r in rows}):
        pts = [(r["grid_size"] ** 3 / 1000, r["peak_mb"]) for r in rows if r["mode"] == mode]
        x, y = np.array(pts).T
        if len(x) >= 2:
            slope, base = np.polyfit(x, y, 1)
        else:
            slope, base = y[0] / x[0], 0.0
        model[mode] = {"base_mb": float(max(base, 0.0)), "per_kvoxel_mb": float(max(slope, 0.0))}
    return model


def study_runs(dataset: str, quick: bool) -> tuple[str, str]:
    """Tables 3 and 4 from real smoke-sized studies run in subprocesses."""
    import pandas as pd

    from study.analyze import load_study, trial_summary

    space = json.loads((ROOT / "search_spaces" / "smoke.json").read_text())
    space.update(max_epochs=4 if quick else 8, samples_per_cell=2 if quick else 4)
    space["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sched in ("asha", "none"):
            s = dict(space, name=f"bench_{sched}", scheduler=dict(space["scheduler"], type=sched))
            path = Path(tmp) / f"{sched}.json"
            path.write_text(json.dumps(s))
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "study.run", "--space", str(path), "--storage", tmp, "--dataset",
                            dataset, "--no-report", "--max-concurrent", "1"], check=True, capture_output=True)
            wall = time.time() - t0
            metrics, trials, info = load_study(Path(tmp) / f"bench_{sched}")
            per = trial_summary(metrics)
            winners = {}
            for m, r in per.groupby("gaussian_mode"):
                best = r.sort_values("valid_heldout_iou", ascending=False).iloc[0]
                winners[m] = (round(float(best["lr"]), 6), int(best["seed"]))
            out[sched] = dict(wall=wall, tune_wall=info.get("wall_time_s", float("nan")),
                              train=float((metrics.epoch_time_s + metrics.eval_time_s).sum()),
                              epochs=int(len(metrics)), trials=len(trials), winners=winners)
    a, n = out["asha"], out["none"]
    t3 = ("| study | trials | epochs | wall s (command) | wall s (Tuner.fit) | trial train+eval s | overhead |\n"
          "|---|---|---|---|---|---|---|\n")
    for k, r in out.items():
        t3 += (f"| smoke-sized, {k} | {r['trials']} | {r['epochs']} | {r['wall']:.1f} | {r['tune_wall']:.1f} | "
               f"{r['train']:.1f} | {100 * (r['tune_wall'] / r['train'] - 1):.0f}% |\n")
    same = all(a["winners"].get(m) == n["winners"].get(m) for m in n["winners"])
    t4 = ("| epochs with ASHA | epochs, full budget | saved | each mode's best (lr, seed) same |\n|---|---|---|---|\n"
          f"| {a['epochs']} | {n['epochs']} | {100 * (1 - a['epochs'] / n['epochs']):.0f}% | "
          f"{'yes' if same else 'no'}: {a['winners']} vs {n['winners']} |\n")
    return t3, t4


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--dataset", default=str(ROOT / "data" / "synthetic_mouse.zarr"))
    p.add_argument("--only", default="1,2,3,4", help="comma-separated table numbers")
    a = p.parse_args(argv)
    only = {int(x) for x in a.only.split(",")}
    torch.set_num_threads(os.cpu_count() or 1)
    sections = [f"# Benchmarks\n\nWritten by `python -m bench{' --quick' if a.quick else ''}`.\n\n{machine()}\n"]
    if 1 in only:
        rows = bench_render.run(a.quick)
        sections.append("## 1. Renderer: forward + backward\n\n" + bench_render.table(rows) + "\n\nCPU peak memory is "
                        "the resident-set high-water mark of the call (VmHWM reset through /proc/self/clear_refs) "
                        "minus the resident set before it; CUDA is `max_memory_allocated`.\n")
    if 2 in only:
        rows = bench_step.run(a.dataset, a.quick)
        model = fit_memory_model(rows)
        mm = ROOT / "study" / "memory_model.json"
        tmp = mm.with_suffix(".tmp")
        tmp.write_text(json.dumps({"source": "python -m bench, table 2", "device": rows[0]["device"],
                                   "modes": model}, indent=1))
        os.replace(tmp, mm)
        sections.append("## 2. One training step against grid_size\n\n" + bench_step.table(rows) +
                        "\n\nMemory model fitted (peak MB = base + per_kvoxel x grid^3/1000), written to "
                        f"`study/memory_model.json` for the study's GPU fractions:\n\n```\n{json.dumps(model, indent=1)}\n```\n")
    if {3, 4} & only:
        t3, t4 = study_runs(a.dataset, a.quick)
        sections.append("## 3. Study overhead\n\nSmoke-sized study (grid 16, 12 frames), one trial at a time. Overhead "
                        "= Tuner.fit wall time over the time trials spent training and evaluating, minus one.\n\n" + t3)
        sections.append("## 4. ASHA savings\n\nThe same seeded study with stratified ASHA (grace 1, factor 2) and "
                        "without early stopping.\n\n" + t4)
    out = Path(a.out)
    if only != {1, 2, 3, 4} and out.exists():  # keep the tables that were not rerun
        old = out.read_text().split("\n## ")[1:]
        kept = {int(sec[0]): "## " + sec for sec in old if sec[:1].isdigit() and int(sec[0]) not in only}
        new = {int(sec[3]): sec for sec in sections[1:]}
        sections = sections[:1] + [{**kept, **new}[k] for k in sorted({**kept, **new})]
    text = "\n".join(sections)
    print(text)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
