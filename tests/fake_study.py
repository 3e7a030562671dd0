"""`python tests/fake_study.py ARGS...`: `python -m study.run ARGS...` with a cheap stand-in trial (3 epochs of
FAKE_EPOCH_S seconds each, checkpointed; validation IoU 0.1 x epoch, or the comma-separated FAKE_IOU per epoch), for
tests that signal or kill a real driver process; FAKE_SPACE and fake_trial, the same for in-process drivers."""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ray import tune


FAKE_SPACE = {  # 4 trials (2d/3d x seeds 0, 1) of 3 epochs, no early stopping
    "name": "fake", "modes": ["2d", "3d"], "grid": {"grid_size": [16], "max_frames": [12]},
    "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3}}, "samples_per_cell": 2, "max_epochs": 3,
    "scheduler": {"type": "none"}, "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def fake_trial(log: Path, behave):
    """A cheap stand-in for study.runner.trainable.run_trial: each execution appends `start T` / `end T` lines to
    `log/<mode>-<seed>.txt`; `behave(config, attempt, epoch)` may raise, kill the worker or signal the driver."""

    def trainable(config, base_config=None, study_uri=None):
        name = log / f"{config['gaussian_mode']}-{config['seed']}.txt"
        attempt = len([l for l in name.read_text().splitlines() if l.startswith("start")]) + 1 if name.exists() else 1
        with open(name, "a") as f:
            f.write(f"start {time.time()}\n")
        start = 1
        if tune.get_checkpoint() is not None:
            with tune.get_checkpoint().as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
        for epoch in range(start, 4):
            behave(config, attempt, epoch)
            time.sleep(0.5)
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                with open(name, "a") as f:
                    f.write(f"end {time.time()}\n" if epoch == 3 else "")
                tune.report({"epoch": epoch, "valid_heldout_iou": 0.1 * epoch},
                            checkpoint=tune.Checkpoint.from_directory(d))

    return trainable


def trial(config, base_config=None, study_uri=None):
    start = 1
    if tune.get_checkpoint() is not None:
        with tune.get_checkpoint().as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
    ious = [float(v) for v in os.environ.get("FAKE_IOU", "0.1,0.2,0.3").split(",")]
    for epoch in range(start, 4):
        time.sleep(float(os.environ.get("FAKE_EPOCH_S", "0.5")))
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "valid_heldout_iou": ious[epoch - 1]}, checkpoint=tune.Checkpoint.from_directory(d))


if __name__ == "__main__":
    from study.runner.run import main

    sys.exit(main(sys.argv[1:], trial))
