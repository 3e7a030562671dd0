"""The Ray Tune function trainable: one trial = one posesplat training run, reported every epoch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from posesplat.config import make_config
from posesplat.train import EpochReport, train
from study.sink import Store, pid_alive


def scratch() -> Path:
    """The node's scratch folder of trials: `<tmp>/posesplat-scratch/`, one `<kind>-<pid>-*` folder per trial."""
    path = Path(tempfile.gettempdir()) / "posesplat-scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_scratch() -> None:
    """Remove this node's scratch folders whose trial process is gone (a killed trial leaves them behind); the
    driver calls it on start and resume, every trial when it starts (other nodes)."""
    for d in scratch().iterdir():
        pid = d.name.split("-")[1] if d.name.count("-") >= 2 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def scratch_dir(kind: str) -> Path:
    """A fresh scratch folder of this trial process."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=scratch()))


class TrialBoard:
    """TensorBoard writer of one trial: scalars, image panels and the HParams session."""

    def __init__(self, logdir: Path, hparams: dict, first_epoch: int = 1):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed trial hides the events of epochs it is about to redo (written before a crash), also
        # when it restarts from epoch 1 (interrupted after writing epoch 1 but before Ray registered its checkpoint)
        self.writer = SummaryWriter(str(logdir), purge_step=first_epoch)
        self.hparams = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
        self.started = False

    def write(self, report: EpochReport) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = int(report.metrics["epoch"])
        scalars = {k: float(v) for k, v in report.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        if not self.started:  # HParams dashboard: the session's hyperparameters; metrics are the scalar tags
            for s in hparams(self.hparams, {f"metrics/{k}": 0.0 for k in scalars}):
                self.writer.file_writer.add_summary(s)
            self.started = True
        for k, v in scalars.items():
            self.writer.add_scalar(f"metrics/{k}", v, step)
        for name, img in report.images.items():
            self.writer.add_image(f"renders/{name}", img, step, dataformats="HWC")
        self.writer.flush()


def run_trial(config: dict, base_config: dict, study_uri: str) -> None:
    """Train the trial's configuration; resume from Tune's checkpoint when the trial is restored.

    TensorBoard events are written on the worker and copied into `<study>/tensorboard/<trial_id>/` after every
    epoch, so they reach the study's storage (a shared path or a URI) from any node."""
    tuned = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = make_config({**base_config, **tuned}, "trial config")
    ctx = tune.get_context()
    torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    clean_scratch()
    work = scratch_dir("trial")
    ckpt_file = work / "checkpoint.pt"
    resume, done, source = None, 0, None
    restored = tune.get_checkpoint()
    if restored is not None:
        source = f"{restored.path}/checkpoint.pt"  # the study's file: what an error about it must name
        with restored.as_directory() as d:
            shutil.copy(Path(d) / "checkpoint.pt", ckpt_file)
            done = json.loads((Path(d) / "state.json").read_text())["epoch"]
        resume = ckpt_file
    node_id = ray.get_runtime_context().get_node_id()  # which Ray node ran each epoch (a retried trial may move)
    study, tid = Store(study_uri), ctx.get_trial_id()
    tb_dir = scratch_dir("tb")
    board = TrialBoard(tb_dir, {**tuned, "trial_id": tid}, first_epoch=done + 1)

    def report(r: EpochReport) -> None:
        board.write(r)
        study.upload(tb_dir, "tensorboard", tid)
        (work / "state.json").write_text(json.dumps({"epoch": int(r.metrics["epoch"])}))
        tune.report({**r.metrics, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        train(cfg, ckpt_path=ckpt_file, resume_from=resume, on_epoch=report, progress=False)
    except ValueError as e:  # an unreadable checkpoint is named by the study's file, not the worker's copy
        if source and str(e).startswith(str(ckpt_file)):
            raise ValueError(source + str(e)[len(str(ckpt_file)):]) from None
        raise
    finally:
        board.writer.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tb_dir, ignore_errors=True)
