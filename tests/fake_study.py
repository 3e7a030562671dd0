"""`python tests/fake_study.py ARGS...`: `python -m study.run ARGS...` with a cheap stand-in trial (3 epochs of
FAKE_EPOCH_S seconds each, checkpointed; validation IoU 0.1 x epoch, or the comma-separated FAKE_IOU per epoch), for
tests that signal or kill a real driver process."""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ray import tune


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
