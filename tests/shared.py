"""Helpers shared by several test modules (fixtures are in conftest.py): the tiny training config, the smoke space
rewritten for a test, a store of format 1, a pid that has exited, the headless Chromium, and a study stage's rows
read back with their checks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(grid_size=16, base_filters=4, num_unets=1, min_n=50, max_n=2000)  # trains in seconds on a CPU
TINY_RUN = dict(image_downsample=1, max_frames=12, eval_frames=2, steps_per_epoch=4, epochs=3, lr=3e-3)

# headless Chromium where installed (Debian's chromium, Ubuntu's chromium-browser or Google's), else None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def tiny_values(dataset, **kw) -> dict:
    """The tiny training config's values on `dataset` (TINY_MODEL, TINY_RUN), `kw` overriding them."""
    return {"dataset": str(dataset), **TINY_MODEL, **TINY_RUN, **kw}


def tiny_config(dataset, **kw):
    """The tiny training config (posesplat.config.Config) on `dataset`, `kw` overriding its values."""
    from posesplat.config import make_config

    return make_config(tiny_values(dataset, **kw))


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: a dict value merges into the dict it replaces, anything else replaces."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def smoke_space(folder: Path, name: str, changes: dict) -> Path:
    """The shipped smoke space named `name` with `changes` merged in (merged), written to folder/<name>.json."""
    space = json.loads((ROOT / "search_spaces" / "smoke.json").read_text())
    path = folder / f"{name}.json"
    path.write_text(json.dumps(merged(space, {**changes, "name": name})))
    return path


def format_1_copy(store: Path, to: Path) -> Path:
    """A copy of a synthetic store as format 1 wrote it: no gt/depth and gt/normal, format_version 1."""
    import zarr

    shutil.copytree(store, to)
    for name in ("depth", "normal"):
        shutil.rmtree(to / "gt" / name)
    zarr.open_group(str(to), mode="r+").attrs["format_version"] = 1
    return to


def dead_pid() -> int:
    """The pid of a process that has exited (a child that printed it)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def key(r: dict) -> tuple:
    """A trial's configuration: what identifies it across runs of the same seeded study."""
    return r["gaussian_mode"], r["max_frames"], r["seed"], round(r["lr"], 12), round(r["ssim_lambda"], 12)


def recorded(stage: Path) -> int:
    """How many epoch rows a stage's metrics folder holds (parts and compacted trial files, each row once), read
    while a driver may be writing it (0 when a file went away between the listing and the read)."""
    from study.base import metrics_folder

    names = metrics_folder.current(sorted(p.name for p in (stage / "metrics").glob("*.parquet")))
    try:
        return sum(pq.read_metadata(stage / "metrics" / n).num_rows for n in names)
    except OSError:
        return 0


def outcome(study: Path) -> tuple[dict, dict]:
    """(rows by (config, epoch), trials by config), asserting no duplicate row and no gap in any trial's epochs,
    and that every ended trial's rows are one compacted file (the whole folder read as one dataset)."""
    rows, trials = {}, {}
    for r in pads.dataset(study / "metrics", format="parquet").to_table().to_pylist():
        assert (key(r), r["epoch"]) not in rows, f"duplicate row {key(r)}, epoch {r['epoch']}"
        rows[key(r), r["epoch"]] = r
    for t in pq.read_table(study / "trials.parquet").to_pylist():
        assert key(t) not in trials, f"two trials with config {key(t)}"
        trials[key(t)] = t
        if t["status"] in ("completed", "stopped", "failed") and t["last_epoch"]:
            assert (study / "metrics" / f"trial-{t['trial_id']}.parquet").exists(), t["trial_id"]
            assert not list((study / "metrics").glob(f"part-{t['trial_id']}-*.parquet")), t["trial_id"]
        epochs = sorted(r["epoch"] for (k, _), r in rows.items() if k == key(t))
        assert epochs == list(range(1, t["last_epoch"] + 1)), (key(t), epochs)
    assert {k for k, _ in rows} == set(trials)
    return rows, trials
