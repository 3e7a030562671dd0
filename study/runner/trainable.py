"""The Ray Tune function trainable: one trial = one posesplat training run, reported every epoch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import ray
import torch
from ray import tune

from posesplat.config import make_config
from posesplat.train import EpochReport, train
from study.runner.board import Names, TrialBoard
from study.base.storage import Store, pid_alive


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


def run_trial(config: dict, base_config: dict, study_uri: str, names: Optional[Names] = None,
              board_uri: Optional[str] = None) -> None:
    """Train the trial's configuration; resume from Tune's checkpoint when the trial is restored.

    TensorBoard events are written on the worker and copied into the study's `tensorboard/<run>/` (study.runner.board;
    board_uri, default the stage's folder) after every epoch, so they reach the study's storage (a shared path or a
    URI) from any node."""
    keys = {k: v for k, v in config.items() if not k.startswith("_")}  # the trial's own keys: mode, cell, tuned, seed
    cfg = make_config({**base_config, **keys}, "trial config")
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
    names = names or Names("trial", ("grid_size", "max_frames"), ())
    board = TrialBoard(tb_dir, names, keys, tid, first_epoch=done + 1)
    run = names.folder(keys, tid)
    board_store = Store(board_uri) if board_uri else study

    def report(r: EpochReport) -> None:
        board.write(r.metrics, r.images)
        board_store.upload(tb_dir, *run)
        (work / "state.json").write_text(json.dumps({"epoch": int(r.metrics["epoch"])}))
        tune.report({**r.metrics, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        train(cfg, ckpt_path=ckpt_file, resume_from=resume, on_epoch=report, progress=False)
    except ValueError as e:  # an unreadable checkpoint is named by the study's file, not the worker's copy
        if source and str(e).startswith(str(ckpt_file)):
            raise ValueError(str(e).replace(str(ckpt_file), source)) from None
        raise
    finally:
        board.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tb_dir, ignore_errors=True)
