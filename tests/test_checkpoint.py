"""Checkpoints load without unpickling: a hostile checkpoint (a pickled callable that would create a marker file) is
refused by load_checkpoint, `train --resume` and study.analysis.analyze without running it, and the analysis never
follows a trials.parquet that points outside its study; checkpoints of format 1 convert with `python -m
posesplat.checkpoint upgrade PATH --trust`, then load and resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posesplat.config import make_config
from shared import tiny_values


class Payload:
    """Unpickling it calls open(marker, "w"): the marker file appears only if a checkpoint was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile(path: Path, marker: Path) -> Path:
    """A checkpoint of format 1 (the format before this one) that carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "config": {}, "epoch": 1, "payload": Payload(marker)}, path)
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_load_checkpoint_refuses_a_pickled_object_without_running_it(tmp_path):
    from posesplat.trained import load_checkpoint

    marker = tmp_path / "marker"
    ck = hostile(tmp_path / "evil.pt", marker)
    try:
        load_checkpoint(ck)
        err = None
    except Exception as e:  # checked after the marker: what matters first is that nothing ran
        err = e
    assert not marker.exists(), "the checkpoint was unpickled: its payload ran"
    assert isinstance(err, ValueError), err
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"{ck}: ") and "io.open" in msg, msg


def test_train_resume_refuses_a_pickled_object_in_one_line(small_dataset, tmp_path, capsys):
    from posesplat.train import main

    marker = tmp_path / "marker"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"dataset": str(small_dataset), "grid_size": 16, "epochs": 2}))
    ck = hostile(tmp_path / "run" / "checkpoint.pt", marker)
    rc = main([str(config), "--out", str(tmp_path / "run"), "--resume"])
    err = lines(capsys.readouterr().err)
    assert not marker.exists(), "the checkpoint was unpickled: its payload ran"
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: {ck}: "), err


def test_analyze_follows_no_checkpoint_outside_the_study_and_unpickles_none(tmp_path, capsys):
    """The 2d trials' checkpoint lies inside the study and carries the payload; the 3d trials' lies outside it
    (trials.parquet points there, as a hostile study could): neither runs, the report says why in one line each."""
    from study.analysis.analyze import main
    from study.analysis.simulate import Noise, Truth, generate, make_plan, write_study

    marker = tmp_path / "marker"
    inside = tmp_path / "s" / "confirm" / "ray" / "t" / "checkpoint_000001" / "checkpoint.pt"
    outside = tmp_path / "elsewhere" / "checkpoint.pt"
    per, trials = generate(Truth("t", 0.0, 0.0, (), ()), 3, 10, Noise(), np.random.default_rng(0))
    study = write_study(tmp_path, per, trials, make_plan(3, 10), "s", {"2d": inside, "3d": outside})
    hostile(inside, marker)
    hostile(outside, marker)
    rc = main([str(study)])
    cap = capsys.readouterr()
    assert not marker.exists(), "a checkpoint was unpickled: its payload ran"
    assert rc == 0, cap.err  # the report itself (parquet and JSON) is written
    warned = [line for line in lines(cap.err) if line.startswith("warning: ")]
    assert len(warned) == 2, cap.err
    md = (study / "report" / "decision.md").read_text()
    assert (f"Qualitative renders of 3d skipped: its checkpoint {outside} lies outside the study {study}; not "
            f"followed.") in md
    assert f"Qualitative renders of 2d skipped: {inside}: " in md and "io.open" in md
    assert not (study / "report" / "qualitative.png").exists()


def tiny(dataset) -> dict:
    """The tiny training config's values: two epochs of one step, evaluated once."""
    return tiny_values(dataset, eval_frames=1, steps_per_epoch=1, epochs=2, valid_every=5)


def test_format_1_checkpoint_upgrades_then_loads_and_resumes(small_dataset, tmp_path, capsys):
    import subprocess
    import sys

    from posesplat.checkpoint import read as read_checkpoint
    from posesplat.train import main, train
    from posesplat.trained import load_checkpoint

    cfg = make_config(tiny(small_dataset))
    out = tmp_path / "run"
    ck = out / "checkpoint.pt"
    train(cfg, ckpt_path=ck, progress=False, epochs=1)
    state = read_checkpoint(ck)
    # the checkpoint as format 1 wrote it: the config as a dict, pickled by torch.save (an older run's history could
    # hold numpy numbers)
    old = {**state, "format": 1, "history": [{**h, "epoch": np.int64(h["epoch"])} for h in state["history"]]}
    torch.save(old, ck)
    old_bytes = ck.read_bytes()
    with pytest.raises(ValueError, match=r"python -m posesplat\.checkpoint upgrade .*checkpoint\.pt --trust"):
        load_checkpoint(ck)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny(small_dataset)))
    assert main([str(config), "--out", str(out), "--resume"]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and "posesplat.checkpoint upgrade" in err[0], err

    def upgrade(*args):
        return subprocess.run([sys.executable, "-m", "posesplat.checkpoint", "upgrade", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    r = upgrade(ck)  # without --trust: refused, nothing touched
    assert r.returncode == 2 and len(lines(r.stderr)) == 1 and "--trust" in r.stderr, r.stderr
    assert ck.read_bytes() == old_bytes and not ck.with_name("checkpoint.pt.format1").exists()
    r = upgrade(ck, "--trust")
    assert r.returncode == 0, r.stderr
    assert ck.with_name("checkpoint.pt.format1").read_bytes() == old_bytes  # the old file is kept beside it
    new = read_checkpoint(ck)
    assert new["format"] == 2 and new["config"] == state["config"] and type(new["history"][0]["epoch"]) is int
    cfg2, model = load_checkpoint(ck)
    assert cfg2 == cfg
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    r = upgrade(ck, "--trust")  # already converted: said so, nothing rewritten
    assert r.returncode == 0 and "already" in r.stdout, r.stdout + r.stderr
    capsys.readouterr()
    assert main([str(config), "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert [h["epoch"] for h in read_checkpoint(ck)["history"]] == [1, 2]


def test_inside_resolves_links_and_dots(tmp_path):
    """A path into the study by name that leads out of it (`..`, a link) is outside; one that stays in is inside."""
    from study.analysis.renders import inside

    study = tmp_path / "s"
    (study / "ray").mkdir(parents=True)
    (study / "ray" / "out").symlink_to(tmp_path)
    assert inside(str(study / "ray" / "checkpoint.pt"), study)
    assert not inside(str(study / "ray" / ".." / ".." / "x.pt"), study)
    assert not inside(str(study / "ray" / "out" / "x.pt"), study)
    assert not inside(str(tmp_path / "s2" / "x.pt"), study)  # a sibling whose name starts the same
    assert not inside(str(study / "x.pt"), None)  # a study behind a URI: no local file is in it


def test_study_resume_refuses_format_1_checkpoints_until_upgraded(tmp_path, small_dataset, capsys):
    """A study interrupted before format 2: resuming it is refused in one line naming the conversion; after running
    that command (the shell expands its globs) it resumes, the old files kept beside the new ones. A study started
    by another user or host is resumed with a note that resuming runs its pickled Ray state."""
    import re
    import subprocess
    import sys

    from study.runner.preflight import check_study
    from study.runner.run import parse_args
    from study.runner.search import STATE_FORMAT
    from study.base.storage import StudyError

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"name": "old", "grid": {"grid_size": [16], "max_frames": [12]}}))
    args = parse_args(["--space", str(space), "--storage", str(tmp_path / "s"), "--dataset", str(small_dataset)])
    plan = check_study(args)
    study = tmp_path / "s" / "old"
    stages = ("ray", "tune/round0/ray", "tune/round1/ray", "confirm/ray")  # every stage's Ray folder is read
    files = [study / stage / f"explore_{mode}-1" / "checkpoint_000001" / "checkpoint.pt"
             for stage in stages for mode in ("2d", "3d")]
    for ck in files:
        ck.parent.mkdir(parents=True)
        torch.save({"format": 1, "config": {"lr": 1e-3}, "epoch": 1, "history": [{"epoch": np.int64(1)}]}, ck)
    held = {"space": plan.space.model_dump(mode="json"), "options": vars(args), "base_config": plan.base,
            "state_format": STATE_FORMAT, "user": "someone-else", "host": "elsewhere"}
    (study / "study.json").write_text(json.dumps(held))
    with pytest.raises(StudyError) as err:
        check_study(args)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{study}: 8 of its trials' checkpoints are of format 1"), msg
    command = re.search(r"`(python -m posesplat\.checkpoint upgrade [^`]+ --trust)`", msg).group(1)
    r = subprocess.run(command.replace("python", sys.executable, 1), shell=True, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and len(lines(r.stdout)) == 8, r.stderr
    capsys.readouterr()
    assert check_study(args).info == held
    assert all(ck.with_name("checkpoint.pt.format1").is_file() for ck in files)
    note = [line for line in lines(capsys.readouterr().out) if line.startswith("note: ")]
    assert len(note) == 1 and "started by someone-else@elsewhere" in note[0] and "resume only studies you made" in note[0]


def test_a_dataset_with_a_pickle_codec_is_refused_without_running_it(tmp_path):
    """A zarr v2 store (which zarr 3 still opens) whose array decodes through numcodecs' pickle filter: zarr refuses
    its data type, so open_dataset fails and nothing is unpickled."""
    import pickle

    from posesplat.data import open_dataset

    marker = tmp_path / "marker"
    store = tmp_path / "d.zarr"
    (store / "intrinsics").mkdir(parents=True)
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "intrinsics" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None, "fill_value": None,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}))
    (store / "intrinsics" / "0").write_bytes(pickle.dumps(np.array([Payload(marker)], dtype=object)))
    with pytest.raises(Exception):
        open_dataset(store)
    assert not marker.exists()
