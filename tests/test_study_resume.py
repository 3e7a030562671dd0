"""A seeded study whose driver is killed with SIGKILL (while trials start, mid-epoch, while a checkpoint is written,
during the confirm stage) or interrupted with Ctrl-C (explore or confirm stage), and then resumed, ends exactly like
the same study run without interruption: the same trials (Optuna's suggestions, ASHA's decisions and the confirm
plan included), one row per (trial, epoch), and on CPU the same losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared import outcome, recorded

pytestmark = pytest.mark.slow

SPACE = {  # 8 trials of up to 3 epochs; per mode 4 trials, of which 2 are TPE suggestions after 2 random ones
    "name": "resume", "base_config": {"image_downsample": 2, "valid_every": 1, "eval_frames": 2, "steps_per_epoch": 3,
                                      "base_filters": 4, "min_n": 50, "max_n": 3000},
    "modes": ["2d", "3d"], "grid": {"grid_size": [16], "max_frames": [9, 12]},
    "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3},
               "ssim_lambda": {"type": "uniform", "low": 0.0, "high": 0.2}},
    "samples_per_cell": 2, "max_epochs": 3, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "confirm": {"cell": {"grid_size": 16, "max_frames": 12}, "min_seeds": 3, "max_seeds": 3,
                "base_config": {"eval_frames": 2}},
}


def command(space, storage, dataset):
    return [sys.executable, "-m", "study.run", "--space", str(space), "--storage", str(storage), "--dataset",
            str(dataset), "--search", "optuna", "--seed", "5", "--max-concurrent", "1", "--no-report"]


def outcomes(study: Path) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """outcome() of the explore and of the confirm stage."""
    return outcome(study), outcome(study / "confirm")


@pytest.fixture(scope="module")
def setup(small_dataset, tmp_path_factory):
    """The space file and the uninterrupted reference study."""
    root = tmp_path_factory.mktemp("resume")
    space = root / "resume.json"
    space.write_text(json.dumps(SPACE))
    subprocess.run(command(space, root / "ref", small_dataset), check=True, capture_output=True, timeout=600)
    return space, small_dataset, outcomes(root / "ref" / "resume")


def wait_and_kill(proc: subprocess.Popen, study: Path, point: str) -> None:
    """SIGKILL the driver's whole process group (driver, Ray's daemons and workers: a crash or reboot) at `point`;
    or Ctrl-C (SIGINT to the driver) mid-epoch."""
    seen: set[str] = set()
    deadline = time.time() + 400
    confirm = study / "confirm" / "metrics"
    while time.time() < deadline and proc.poll() is None:
        if point == "trial_start" and (study / "trials.parquet").exists():
            break
        if point in ("mid_epoch", "ctrl_c") and recorded(study) >= 5:
            time.sleep(0.3)
            break
        if point in ("confirm", "confirm_ctrl_c") and recorded(confirm.parent) >= 3:
            break
        if point == "checkpoint":
            seen |= {p.name + p.parent.name for p in (study / "ray").glob("*/checkpoint_*")}
            if len(seen) >= 7:  # a checkpoint directory just appeared: Ray is writing it
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the study finished before the kill point"
    if point in ("ctrl_c", "confirm_ctrl_c"):
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130  # Tune saved its state; the driver says how to resume
        assert "finished" not in json.loads((study / "study.json").read_text())
        return
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("point", ["trial_start", "mid_epoch", "checkpoint", "ctrl_c", "confirm", "confirm_ctrl_c"])
def test_sigkill_then_resume_matches_uninterrupted(setup, point, tmp_path):
    from study.runner.board import runs, scalars
    from study.base.storage import Store

    space, dataset, ((ref_rows, ref_trials), (ref_confirm_rows, ref_confirm_trials)) = setup
    study = tmp_path / "resume"
    proc = subprocess.Popen(command(space, tmp_path, dataset), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_and_kill(proc, study, point)
    parts_before = recorded(study)
    confirm_before = recorded(study / "confirm")
    assert parts_before < len(ref_rows) or confirm_before < len(ref_confirm_rows)
    plan_before = (study / "confirm" / "plan.json").read_text() if point.startswith("confirm") else None

    r = subprocess.run(command(space, tmp_path, dataset), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (rows, trials), (confirm_rows, confirm_trials) = outcomes(study)
    assert confirm_rows.keys() == ref_confirm_rows.keys()  # the same confirm plan, every trial once
    for k, ref in ref_confirm_rows.items():
        assert confirm_rows[k]["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5), k
    assert {t["status"] for t in confirm_trials.values()} == {"completed"}
    if plan_before is not None:  # the plan written before the kill is the plan that ran
        assert (study / "confirm" / "plan.json").read_text() == plan_before
    assert rows.keys() == ref_rows.keys()  # the same trials and epochs: Optuna and ASHA continued where they stopped
    for k, ref in ref_rows.items():
        for metric in ("train_loss", "valid_heldout_iou", "test_heldout_psnr"):
            assert rows[k][metric] == pytest.approx(ref[metric], rel=1e-5), (k, metric)
    for k, ref in ref_trials.items():
        assert (trials[k]["status"], trials[k]["last_epoch"]) == (ref["status"], ref["last_epoch"]), k
    found = {tid: parts for tid, parts in runs(Store(study)).items() if parts[1] == "explore"}
    assert set(found) == {t["trial_id"] for t in trials.values()}
    for t in trials.values():  # TensorBoard shows each epoch once (events of redone epochs purged)
        steps = [step for step, _ in scalars(study.joinpath(*found[t["trial_id"]]), "loss/train_loss")]
        assert steps == list(range(1, t["last_epoch"] + 1))
    assert json.loads((study / "study.json").read_text())["runs"] == 2
