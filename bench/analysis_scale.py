"""The analysis at cluster scale: `python -m bench.analysis_scale [--rows 1000,10000,20000,50000] [--old DIR] [--write]`.

A generator writes a study folder of a chosen size: an explore stage and a confirm stage, every trial's epoch rows
in the real schema (posesplat.metrics, the training config's columns, per-test-frame lists on evaluated epochs),
written through the sink's own types and the metrics folder's names. Each size is written in both layouts: parts
(one file per epoch, as before compaction) and compacted (one file per trial,
study.base.metrics_folder.compact). A fresh process then times loading the study's tables and the whole report
without renders (load, decide, tables, HTML), on local disk and behind a local S3 server (moto, the test extra),
with the current code and, on the parts, with an older worktree's (--old).
Table 8 of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from bench.reference import write_doc
from posesplat import metrics as schema
from study.analysis.simulate import make_plan
from study.base import metrics_folder
from study.base.storage import Store
from study.runner.sink import full_config, list_type, null_types

ROOT = Path(__file__).resolve().parents[1]
MODES = ("2d", "3d")
EVAL_EVERY = 5  # an evaluated epoch (test metrics, per-frame lists) every 5 epochs and at the last
TEST_FRAMES = 100  # the GPU design's test frames
CONFIRM_SHARE = 0.5  # of the rows, in the confirm stage
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def epoch_row(name: str, tid: str, config: dict, epoch: int, last: int, level: float,
              rng: np.random.Generator) -> dict:
    """One epoch's metrics row as the sink writes it: every schema metric with a plausible value."""
    ramp = 1 - 0.3 * np.exp(-epoch / 5)
    evaluated = epoch % EVAL_EVERY == 0 or epoch == last
    row = {"study": name, "trial_id": tid, **config}
    for m in schema.METRICS:
        if m.kind == "text":
            row[m.name] = {"device": "cuda:0", "backend": "gsplat"}.get(m.name, "cuda_max_allocated")
        elif m.kind == "int":
            row[m.name] = epoch if m.name == "epoch" else 1000
        elif m.evaluated and not evaluated:
            row[m.name] = float("nan")
        else:
            scale = {"dB": 28.0, "deg": 20.0, "m": 0.002}.get(m.unit, 0.8)
            row[m.name] = scale * level * ramp * (1 + rng.normal(0, 0.01))
        if m.per_frame and evaluated:
            row[schema.frame_column(m.name)] = list(row[m.name] * (1 + rng.normal(0, 0.05, TEST_FRAMES)))
    if evaluated:
        row[schema.FRAMES] = list(range(400, 400 + TEST_FRAMES))
    row.update(hostname="node-1", timestamp=pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=epoch))
    return row


def write_stage(store, name: str, trials: list[tuple[str, dict, int]], base: dict, rng: np.random.Generator) -> None:
    """A stage's metrics folder and trials.parquet: `trials` as (trial id, keys, epochs run)."""
    rows_of_trials = []
    for tid, keys, epochs in trials:
        config = full_config(base, keys)
        level = 1 + rng.normal(0, 0.03)
        for epoch in range(1, epochs + 1):
            row = epoch_row(name, tid, config, epoch, epochs, level, rng)
            lists = {k: list_type(k) for k, v in row.items() if isinstance(v, list)}
            store.write_table([row], metrics_folder.FOLDER, metrics_folder.part_name(tid, epoch),
                              types={**null_types([row]), **lists})
        rows_of_trials.append({"study": name, "trial_id": tid, "status": "completed", **config, "last_epoch": epochs,
                               "stopped_at_epoch": None, "error": None, "checkpoint_path": None})
    store.write_table(rows_of_trials, "trials.parquet", types=null_types(rows_of_trials))


def plan(seeds: list[int], epochs: int) -> dict:
    """The confirm plan of the generated stage (study.analysis.simulate.make_plan at these seeds and epochs)."""
    p = make_plan(len(seeds), TEST_FRAMES)
    p.update(seeds=seeds, epochs=epochs, cell={"grid_size": 32, "max_frames": 300},
             trials=[{"grid_size": 32, "max_frames": 300, "gaussian_mode": m, "seed": s, "lr": 1e-3}
                     for s in seeds for m in MODES])
    return p


def write_study(root: Path, rows: int, epochs: int, seed: int = 0) -> Path:
    """A study of about `rows` epoch rows (half explore, half confirm) with trials of `epochs` epochs (explore
    trials stopped early by ASHA run a third of them)."""
    rng = np.random.default_rng(seed)
    name = "scale"
    d = root / name
    base = {"dataset": "data/synthetic_mouse.zarr", "epochs": epochs, "device": "cuda"}
    explore, total, i = [], 0, 0
    while total < rows * (1 - CONFIRM_SHARE):
        mode, grid = MODES[i % 2], (32, 48)[i // 2 % 2]
        ran = epochs if i % 3 == 0 else max(1, epochs // 3)
        explore.append((f"e{i:05d}", {"gaussian_mode": mode, "grid_size": grid, "max_frames": 300, "seed": i,
                                      "lr": float(10 ** rng.uniform(-3.5, -2))}, ran))
        total += ran
        i += 1
    pairs = max(1, round(rows * CONFIRM_SHARE / (2 * epochs)))
    seeds = [10_000 + k for k in range(pairs)]
    confirm = [(f"c{m}{s}", {"gaussian_mode": m, "grid_size": 32, "max_frames": 300, "seed": s, "lr": 1e-3}, epochs)
               for s in seeds for m in MODES]
    write_stage(Store(d), name, explore, base, rng)
    write_stage(Store(d / "confirm"), name, confirm, base, rng)
    (d / "confirm" / "plan.json").write_text(json.dumps(plan(seeds, epochs)))
    space = {"name": name, "modes": list(MODES), "grid": {"grid_size": [32, 48], "max_frames": [300]},
             "confirm": {"modes": list(MODES)}}
    (d / "study.json").write_text(json.dumps({"space": space}))
    return d


WORKER = """
import json, sys, time
from study.analysis.analyze import report
from study.analysis.load import load_studies
from study.base.storage import join_uri
study, out = sys.argv[1:3]
t0 = time.perf_counter()
rows = len(load_studies([study, join_uri(study, "confirm")]).metrics)
load = time.perf_counter() - t0
t0 = time.perf_counter()
rc = report([study], out, renders=False)
print(json.dumps({"load_s": load, "report_s": time.perf_counter() - t0, "rc": rc, "rows": rows}))
"""  # one analysis in a fresh process, in the tree it runs in (old or new code): the API both have


def s3_server():
    """A local S3 server (moto, the test extra) and the URI of a fresh bucket on it; None without moto."""
    try:
        from moto.server import ThreadedMotoServer  # deferred: moto comes with the test extra only
    except ImportError:
        return None, None
    os.environ.update(S3_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://bench?{query}&allow_bucket_creation=true")
    fs.create_dir("bench")
    return server, query


def upload(local: Path, query: str, key: str) -> str:
    """Copy a study folder into the bucket; its URI."""
    fs, _ = pafs.FileSystem.from_uri(f"s3://bench?{query}")
    pafs.copy_files(str(local), f"bench/{key}/scale", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return f"s3://bench/{key}/scale?{query}"


def measure(study: str, out: Path, repeats: int, tree: Path) -> dict:
    """Median times of `repeats` fresh processes of `tree`'s code (each imports, loads and reports once)."""
    runs = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", WORKER, study, str(out)], capture_output=True, text=True, cwd=tree,
                           env={**os.environ, **S3_ENV, "PYTHONPATH": str(tree)})
        if r.returncode != 0:
            raise RuntimeError(f"analysis of {study} failed: {r.stderr[-2000:]}")
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if runs[-1]["rc"] != 0:
            raise RuntimeError(f"the report of {study} exited {runs[-1]['rc']}")
    return {k: statistics.median(r[k] for r in runs) for k in ("load_s", "report_s", "rows")}


def compacted_copy(study: Path, to: Path) -> Path:
    """A copy of a study in parts with every trial compacted (study.base.metrics_folder.compact)."""
    shutil.copytree(study.parent, to)
    for stage in (to / study.name, to / study.name / "confirm"):
        store = Store(stage)
        for tid in metrics_folder.parts_by_trial(store.list(metrics_folder.FOLDER)):
            metrics_folder.compact(store, tid)
    return to / study.name


def run(sizes: list[tuple[int, int]], s3_files: int, repeats: int, old: Optional[Path]) -> list[dict]:
    """Rows of table 8: per (rows, epochs per trial), layout, code and storage: the files, load and report seconds.
    The parts layout is read by the old code too (`old`: a worktree of the commit before compaction)."""
    server, query = s3_server() if s3_files else (None, None)
    out = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rows, epochs in sizes:
                t0 = time.perf_counter()
                parts = write_study(Path(tmp) / f"{rows}-{epochs}-parts", rows, epochs)
                layouts = {"parts": parts, "compacted": compacted_copy(parts, Path(tmp) / f"{rows}-{epochs}-compacted")}
                print(f"wrote {rows} rows of {epochs}-epoch trials in both layouts ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
                trials = sum(len(metrics_folder.parts_by_trial(Store(s).list(metrics_folder.FOLDER)))
                             for s in (parts, parts / "confirm"))
                for layout, study in layouts.items():
                    files = sum(1 for _ in study.rglob("*.parquet"))
                    where = {"local disk": str(study)}
                    if query and files <= s3_files:
                        where["S3 (local moto)"] = upload(study, query, study.parent.name)
                    codes = {"new": ROOT, **({"old": old} if old and layout == "parts" else {})}
                    for storage, uri in where.items():
                        for code, tree in codes.items():
                            m = measure(uri, Path(tmp) / "report", repeats, tree)
                            out.append({"rows": int(m["rows"]), "trials": trials, "epochs": epochs, "layout": layout,
                                        "code": code,
                                        "files": files, "storage": storage, "load_s": m["load_s"],
                                        "report_s": m["report_s"]})
                            print(f"  {layout}, {storage}, {code} code: load {m['load_s']:.2f} s, report "
                                  f"{m['report_s']:.2f} s", flush=True)
    finally:
        if server is not None:
            server.stop()
    return out


def table(rows: list[dict]) -> str:
    lines = ["| epoch rows | trials | storage | layout | code | files | load, s | whole report, s | "
             "report vs old code on parts |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["rows"], r["epochs"], r["storage"], r["layout"], r["code"]): r for r in rows}
    for r in rows:
        base = by.get((r["rows"], r["epochs"], r["storage"], "parts", "old"))
        ratio = f"{base['report_s'] / r['report_s']:.1f}x" if base and r is not base else ""
        lines.append(f"| {r['rows']:,} | {r['trials']:,} of up to {r['epochs']} epochs | {r['storage']} | "
                     f"{r['layout']} | {r['code']} | {r['files']:,} | {r['load_s']:.2f} | {r['report_s']:.2f} | "
                     f"{ratio} |")
    return "\n".join(lines)


TITLE = "## 8. The analysis at cluster scale"
TABLE_NOTE = (
    "`python -m bench.analysis_scale {cmd}`. A generated study (half its epoch rows in "
    "the explore stage, half in a confirm stage of paired 2d/3d trials; the real schema, an evaluation every "
    f"{EVAL_EVERY} epochs with {TEST_FRAMES} test frames' lists) in both layouts: parts (a file per (trial, "
    "epoch), every study before compaction) and compacted (a file per ended trial); the parts also read by the "
    "code before compaction (old: one file after another). Load: the explore and confirm "
    "tables (study.analysis.load.load_studies); whole report: `python -m study.analyze --no-renders` in-process "
    "(loading again, the decision, the tables, the figures and report.html). Each a fresh process, median of "
    "the repeats; the S3 rows read through pyarrow's S3 filesystem from a local moto server (no network latency: "
    "a real object store adds a round trip per file).")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.analysis_scale", description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1000,10000,20000,50000",
                   help="epoch rows of each study; ROWS:EPOCHS for trials of other than 50 epochs")
    p.add_argument("--s3-files", type=int, default=1500, help="behind the S3 server only study folders of at most "
                   "this many files (each costs 20-40 ms there; 0: local disk only)")
    p.add_argument("--old", type=Path, help="a worktree of the code before compaction, to read the parts layout too")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per measurement (the median)")
    p.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md (table 8)")
    a = p.parse_args(argv)
    if a.old is not None and not (a.old / "study" / "analysis").is_dir():
        print(f"error: --old {a.old}: not a checkout of this project (no study/analysis/)", file=sys.stderr)
        return 2
    sizes = [(int(s.split(":")[0]), int(s.split(":")[1]) if ":" in s else 50) for s in a.rows.split(",")]
    rows = run(sizes, a.s3_files, a.repeats, a.old.resolve() if a.old else None)
    text = table(rows)
    print(text)
    if a.write:
        cmd = f"--rows {a.rows} --s3-files {a.s3_files} --repeats {a.repeats}" + (f" --old {a.old}" if a.old else "")
        write_doc(text, f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} with " +
                  TABLE_NOTE.format(cmd=cmd), title=TITLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
