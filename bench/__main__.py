"""All benchmarks: `python -m bench [--quick] [--out docs/benchmarks.md] [--only 1,2,3,4]`.

1. renderer forward+backward time and peak memory (bench/render.py)
2. one full training step against grid_size per mode (bench/train_step.py); fits the study's memory model
3. study overhead: a study's wall time against the same trials trained one after another without Ray
4. ASHA savings: epochs with early stopping against the full budget, and whether each mode's winner changes
   (bench/study_overhead.py)
Prints each table and rewrites the output file with the machine and the date.
Tables 5 and up come from their own commands and are kept here: 5-6 `python -m bench.reference`, 7 `python -m
bench.trial_time`, 9 `python -m bench.prep_speed` (import throughput of posesplat.prep against recording length and
image size, old and new code side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench import render as bench_render
from bench import study_overhead as bench_study
from bench import train_step as bench_step
from posesplat.io import atomic_write
from study.runner.resources import write_model

ROOT = Path(__file__).resolve().parents[1]
STUDY_NOTE = ("Each study runs as a user runs it (`python -m study.run`, one trial at a time, one CPU per trial). The "
              "baseline trains the same trials' configurations one after another in one process with "
              "`posesplat.train.train` (one thread, checkpoints written), each for the epochs it ran in the study. "
              "Overhead = wall time / baseline - 1: what Ray start-up, Tune, the parquet sink, TensorBoard and "
              "checkpoint reporting add. The last three columns split it: the spacing of a trial's epochs beyond their "
              "work, the gap between one trial's last epoch and the next one's first beyond that epoch's work "
              "(both medians from the metrics' timestamps), and the rest, a fixed cost per command (Ray start-up, "
              "the first worker process, Tune's start and end). The fixed part dominates, so the overhead is large "
              "for the smoke space's tiny trials and falls below 15% once a study trains for a few minutes.")


def machine(date: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import gsplat  # deferred: its version for the machine line only

    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} (driver {nvidia_driver()}, torch's CUDA {torch.version.cuda})"
    return (f"- date: {date} (of this file; each table says when it was measured)\n- CPU: {cpu}, {os.cpu_count()} cores\n"
            f"- GPU: {gpu}\n- torch {torch.__version__}, gsplat {gsplat.__version__}, Python {platform.python_version()}")


def measured(section: str, date: str) -> str:
    """A table's section with the line saying when it was measured (kept as it is when it has one)."""
    title, _, body = section.partition("\n\n")
    return section if body.startswith("Measured ") else f"{title}\n\nMeasured {date}.\n\n{body}"


def nvidia_driver() -> str:
    """The NVIDIA driver version from nvidia-smi, or 'unknown'."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out[0] if out else "unknown"


def fit_memory_model(rows: list[dict]) -> dict:
    """Per mode, least squares of peak MB against grid_size**3 / 1000 and image pixels / 1000
    (study/runner/resources.py).

    With a single image size the pixel term cannot be told from the base and is left at 0."""
    model = {}
    for mode in sorted({r["mode"] for r in rows}):
        rs = [r for r in rows if r["mode"] == mode]
        y = np.array([r["peak_mb"] for r in rs])
        cols = [np.ones(len(rs)), np.array([r["grid_size"] ** 3 / 1000 for r in rs])]
        if len({r["pixels"] for r in rs}) > 1:
            cols.append(np.array([r["pixels"] / 1000 for r in rs]))
        coef = np.linalg.lstsq(np.stack(cols, 1), y, rcond=None)[0]
        coef = np.append(coef, [0.0] * (3 - len(coef)))
        model[mode] = {"base_mb": float(max(coef[0], 0.0)), "per_kvoxel_mb": float(max(coef[1], 0.0)),
                       "per_kpixel_mb": float(max(coef[2], 0.0))}
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                   help="markdown file the tables are written to (tables not rerun are kept)")
    p.add_argument("--dataset", default=str(ROOT / "data" / "synthetic_mouse.zarr"), help="dataset the timings use")
    p.add_argument("--only", default="1,2,3,4", help="comma-separated table numbers: 1 render forward/backward per "
                                                     "mode and backend, 2 one training step against grid_size (fits "
                                                     "the memory model), 3 study overhead, 4 ASHA savings")
    a = p.parse_args(argv)
    only = {int(x) for x in a.only.split(",")}
    now = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"
    torch.set_num_threads(os.cpu_count() or 1)
    sections = [f"# Benchmarks\n\nWritten by `python -m bench{' --quick' if a.quick else ''}`.\n\n{machine(now)}\n"]
    if 1 in only:
        rows = bench_render.run(a.quick)
        ratios = bench_render.ratio_table(rows)
        sections.append("## 1. Renderer: forward + backward\n\n" + bench_render.table(rows) + "\n\nCPU peak memory is "
                        "the resident-set high-water mark of the call (VmHWM reset through /proc/self/clear_refs) "
                        "minus the resident set before it; CUDA is `max_memory_allocated`.\n"
                        + (f"\nThe torch backend against gsplat on the same GPU:\n\n{ratios}\n" if ratios else
                           "\nNo GPU here: the torch backend against gsplat (a ratio on one GPU) is not measured.\n"))
    if 2 in only:
        rows = bench_step.run(a.dataset, a.quick)
        model = fit_memory_model(rows)
        write_model(model, rows[0]["device"], "python -m bench, table 2")
        sections.append("## 2. One training step against grid_size\n\n" + bench_step.table(rows) + "\n\n"
                        + bench_step.growth(rows) + "\n\n" + bench_step.target(rows) +
                        "\n\nMemory model fitted (peak MB = base + per_kvoxel x grid^3/1000 + per_kpixel x pixels/1000), written to "
                        f"`study/runner/memory_model.json` for the study's GPU fractions:\n\n```\n{json.dumps(model, indent=1)}\n```\n")
    if {3, 4} & only:
        rows, savings = bench_study.run(a.dataset, a.quick)
        sections.append("## 3. Study overhead\n\n" + STUDY_NOTE + "\n\n" + bench_study.overhead_table(rows) + "\n")
        sections.append("## 4. ASHA savings\n\nThe smoke-sized study of table 3 with stratified ASHA (grace 1, "
                        "factor 2) against the full budget, same seed and trials.\n\n"
                        + bench_study.savings_table(savings) + "\n")
    sections[1:] = [measured(sec, now) for sec in sections[1:]]
    out = Path(a.out)
    if out.exists():  # keep the tables not rerun (5: bench.reference), each with its own date
        text = out.read_text()
        dates = [line[len("- date: "):].split(" (")[0] for line in text.splitlines() if line.startswith("- date: ")]
        before = dates[0] if dates else "unknown"  # of a file whose tables do not say it themselves
        kept = {int(sec[0]): measured("## " + sec, before) for sec in text.split("\n## ")[1:]
                if sec[:1].isdigit() and int(sec[0]) not in only}
        new = {int(sec[3]): sec for sec in sections[1:]}
        sections = sections[:1] + [{**kept, **new}[k] for k in sorted({**kept, **new})]
    text = "\n".join(sections)
    print(text)
    atomic_write(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
