"""A study whose driver is killed with SIGKILL mid-run and then resumed ends exactly like an uninterrupted one:
the same trials, one row per (trial, epoch), and on CPU the same losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.slow

SPACE = {
    "name": "resume", "base_config": {"image_downsample": 2, "valid_every": 1, "eval_frames": 2, "steps_per_epoch": 3,
                                      "base_filters": 4, "min_n": 50, "max_n": 3000},
    "modes": ["2d", "3d"], "grid": {"grid_size": [16], "max_frames": [12]},
    "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3}},
    "samples_per_cell": 2, "max_epochs": 4, "scheduler": {"type": "none"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def command(space, storage, dataset):
    return [sys.executable, "-m", "study.run", "--space", str(space), "--storage", str(storage), "--dataset",
            str(dataset), "--search", "random", "--max-concurrent", "1", "--no-report"]


def rows_by_config(study: Path) -> dict:
    rows = pads.dataset(study / "metrics", format="parquet").to_table().to_pylist()
    out = {}
    for r in rows:
        key = (r["gaussian_mode"], r["seed"], round(r["lr"], 12), r["epoch"])
        assert key not in out, f"duplicate row {key}"
        out[key] = r
    return out


def test_sigkill_then_resume_matches_uninterrupted(small_dataset, tmp_path):
    space = tmp_path / "resume.json"
    space.write_text(json.dumps(SPACE))
    ref_store, cut_store = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(command(space, ref_store, small_dataset), check=True, capture_output=True, timeout=600)
    reference = rows_by_config(ref_store / "resume")
    assert len(reference) == 4 * 4

    proc = subprocess.Popen(command(space, cut_store, small_dataset), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    parts = cut_store / "resume" / "metrics"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 6:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every process it started, as in a crash or reboot
    proc.wait()
    done_before = len(list(parts.glob("*.parquet")))
    assert 6 <= done_before < 16, done_before

    r = subprocess.run(command(space, cut_store, small_dataset), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = rows_by_config(cut_store / "resume")
    assert resumed.keys() == reference.keys()
    for key, ref in reference.items():
        assert resumed[key]["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5), key
        assert resumed[key]["valid_heldout_iou"] == pytest.approx(ref["valid_heldout_iou"], rel=1e-5), key
    info = json.loads((cut_store / "resume" / "study.json").read_text())
    assert info["runs"] == 2
