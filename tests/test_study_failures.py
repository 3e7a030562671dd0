"""Failures inside trials, with a real local Ray and the study's own parquet sink: a trial that raises is recorded as
failed with its error line while the study goes on; a worker that dies is retried from its last checkpoint
(FailureConfig) and the parquet ends with exactly one row per (trial, epoch)."""

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from ray import tune

from posesplat.train import NonFiniteLossError
from study.runner.sink import ParquetSink
from fake_study import FAKE_SPACE, fake_trial

EPOCHS = 5


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


# ------------------------------------------------------------------ re-runs of a study (study.runner.run.run_study)

def study_args(tmp_path: Path, dataset: Path, *extra: str):
    from study.runner.run import parse_args

    space = tmp_path / "fake.json"
    space.write_text(json.dumps(FAKE_SPACE))
    return parse_args(["--space", str(space), "--storage", str(tmp_path / "studies"), "--dataset", str(dataset),
                       "--search", "random", "--no-report", *extra])


def starts(log: Path, trial: str) -> list[float]:
    return [float(l.split()[1]) for l in (log / f"{trial}.txt").read_text().splitlines() if l.startswith("start")]


def test_rerun_does_not_reexecute_a_failed_trial(ray_local, tmp_path, small_dataset):
    """A trial that raises is a result: re-running the finished study neither runs it again nor calls the study
    unfinished."""
    from study.runner.run import run_study

    def behave(config, attempt, epoch):
        if (config["gaussian_mode"], config["seed"], epoch) == ("3d", 1, 2):
            raise NonFiniteLossError("non-finite loss at epoch 2, step 1")

    log = tmp_path / "log"
    log.mkdir()
    study = run_study(study_args(tmp_path, small_dataset), fake_trial(log, behave)).study
    first = {t["trial_id"]: t for t in pq.read_table(Path(study.root) / "trials.parquet").to_pylist()}
    failed = [t for t in first.values() if t["status"] == "failed"]
    assert len(failed) == 1 and "NonFiniteLossError" in failed[0]["error"] and failed[0]["last_epoch"] == 1
    assert sorted(t["status"] for t in first.values()) == ["completed"] * 3 + ["failed"]
    executions = {p.stem: len(starts(log, p.stem)) for p in log.iterdir()}
    assert executions["3d-1"] == 2  # run once and retried once (--max-failures 1: Ray retries any exception)

    run_study(study_args(tmp_path, small_dataset), fake_trial(log, behave))  # the same command again: exit 0
    assert {p.stem: len(starts(log, p.stem)) for p in log.iterdir()} == executions  # nothing executed again
    again = {t["trial_id"]: t for t in pq.read_table(Path(study.root) / "trials.parquet").to_pylist()}
    assert again == first
    info = json.loads((Path(study.root) / "study.json").read_text())
    assert info["runs"] == 2 and "finished" in info


def test_resume_applies_max_failures_and_max_concurrent_given_again(ray_local, tmp_path, small_dataset):
    """Started with --max-concurrent 1 --max-failures 0 and interrupted while its second trial runs; resumed with
    --max-concurrent 2 --max-failures 2: trials now overlap, and the restored trial, whose worker dies twice, is
    retried from its checkpoint and completes (with the first run's limits it would be failed)."""
    from study.runner.run import run_study

    driver = os.getpid()

    def behave(config, attempt, epoch):
        if (config["gaussian_mode"], config["seed"]) != ("3d", 0):
            return
        if attempt == 1 and epoch == 2:
            os.kill(driver, signal.SIGINT)  # Ctrl-C: Tune saves its state and returns
            time.sleep(60)
        if attempt in (2, 3) and epoch == 3:
            os._exit(1)  # the worker process dies (run 2, twice)

    log = tmp_path / "log"
    log.mkdir()
    with pytest.raises(KeyboardInterrupt):  # run_study's "interrupted, run again to resume"
        run_study(study_args(tmp_path, small_dataset, "--max-concurrent", "1", "--max-failures", "0"),
                  fake_trial(log, behave))
    assert sorted(p.stem for p in log.iterdir()) == ["2d-0", "3d-0"]
    resumed_at = time.time()
    study, _ = run_study(study_args(tmp_path, small_dataset, "--max-concurrent", "2", "--max-failures", "2"),
                      fake_trial(log, behave))
    trials = {(t["gaussian_mode"], t["seed"]): t for t in pq.read_table(Path(study.root) / "trials.parquet").to_pylist()}
    assert {k: t["status"] for k, t in trials.items()} == {k: "completed" for k in trials} and len(trials) == 4
    assert len(starts(log, "3d-0")) == 4  # interrupted, died twice, completed
    rows = pads.dataset(Path(study.root) / "metrics", format="parquet").to_table().to_pylist()
    assert sorted(r["epoch"] for r in rows if (r["gaussian_mode"], r["seed"]) == ("3d", 0)) == [1, 2, 3]
    spans = []  # (start, end) of every execution in the second run
    for p in log.iterdir():
        lines = [l.split() for l in p.read_text().splitlines()]
        spans += [(float(a[1]), float(b[1])) for a, b in zip(lines, lines[1:] + [["end", "inf"]])
                  if a[0] == "start" and float(a[1]) > resumed_at]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 2, sorted(spans)
