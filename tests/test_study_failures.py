"""Failures inside trials, with a real local Ray and the study's own parquet sink: a trial that raises is recorded as
failed with its error line while the study goes on; a worker that dies is retried from its last checkpoint
(FailureConfig) and the parquet ends with exactly one row per (trial, epoch)."""

import json
import os
import tempfile
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from ray import tune

from posesplat.train import NonFiniteLossError
from study.sink import ParquetSink

EPOCHS = 5


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def make_trainable(marker: Path):
    """Seed 1 diverges at epoch 3; seed 2's worker process dies once at epoch 3 (after reporting epoch 2)."""

    def trainable(config):
        start, attempts = 1, 1
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = json.loads((Path(d) / "state.json").read_text())
            start, attempts = state["epoch"] + 1, state["attempts"] + 1
        for epoch in range(start, EPOCHS + 1):
            if config["seed"] == 1 and epoch == 3:
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step 1")
            if config["seed"] == 2 and epoch == 3 and not marker.exists():
                marker.touch()
                os._exit(1)  # the worker process dies, as on a node failure or an OOM kill
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch, "attempts": attempts}))
                tune.report({"epoch": epoch, "valid_heldout_iou": 0.1 * epoch, "train_loss": 1.0 / epoch,
                             "attempts": attempts}, checkpoint=tune.Checkpoint.from_directory(d))

    return trainable


def run(tmp_path: Path, max_failures: int):
    study = tmp_path / "study"
    base = {"dataset": "/nonexistent/only/named.zarr", "epochs": EPOCHS}
    sink = ParquetSink(study, "failures", base, EPOCHS)
    tune.Tuner(
        make_trainable(tmp_path / "died_once"),
        param_space={"seed": tune.grid_search([0, 1, 2]), "gaussian_mode": "2d", "grid_size": 16, "max_frames": 12},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(study), name="ray", callbacks=[sink], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    ).fit()
    trials = {t["seed"]: t for t in pq.read_table(study / "trials.parquet").to_pylist()}
    rows = pads.dataset(study / "metrics", format="parquet").to_table().to_pylist()
    return trials, rows


def test_failed_trial_is_recorded_and_retries_resume_from_checkpoint(ray_local, tmp_path):
    trials, rows = run(tmp_path, max_failures=1)
    assert trials[0]["status"] == "completed" and trials[0]["last_epoch"] == EPOCHS
    # a trial that raises: failed with its error line, after the epochs it did report
    assert trials[1]["status"] == "failed" and trials[1]["last_epoch"] == 2
    assert "NonFiniteLossError: non-finite loss at epoch 3, step 1" in trials[1]["error"]
    # a worker that died: retried once, from the epoch-2 checkpoint, and completed
    assert trials[2]["status"] == "completed" and trials[2]["error"] is None
    by_trial = {}
    for r in rows:
        by_trial.setdefault(r["seed"], []).append((r["epoch"], r["attempts"]))
    assert sorted(by_trial[2]) == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]  # no lost or repeated epoch
    assert sorted(e for e, _ in by_trial[1]) == [1, 2]


def test_without_retries_a_dead_worker_is_a_failed_trial(ray_local, tmp_path):
    trials, rows = run(tmp_path, max_failures=0)
    assert trials[2]["status"] == "failed" and trials[2]["last_epoch"] == 2
    assert "died" in trials[2]["error"].lower() or "actor" in trials[2]["error"].lower(), trials[2]["error"]
    assert trials[0]["status"] == "completed"
