"""Fault injection on the study driver (issue 16): real Ray, real processes and signals, real parquet read back.
Each test sets up the fault, then checks the exit status, the one-line message, and the study's rows before and
after (no duplicate, no deletion). The trials are cheap stand-ins (fake_study.fake_trial: 3 epochs of
0.5 s); what is tested is the driver around them. The table of faults is in docs/study.md."""

import hashlib
import json
import os
import pickletools
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study.runner.run import main
from study.base.storage import StudyError, StudyLock
from fake_study import FAKE_SPACE, fake_trial
from shared import TINY_MODEL, dead_pid, recorded

STATUS = ["completed"] * 4


def argv(root: Path, dataset: Path, *extra: str) -> list[str]:
    space = root / "fake.json"
    space.write_text(json.dumps(FAKE_SPACE))
    return ["--space", str(space), "--storage", str(root / "studies"), "--dataset", str(dataset), "--search",
            "random", "--no-report", "--max-concurrent", "1", *extra]


def trials(study: Path) -> dict[tuple, dict]:
    return {(t["gaussian_mode"], t["seed"]): t for t in pq.read_table(study / "trials.parquet").to_pylist()}


def files(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under folder (what a run must neither change nor delete)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt_last_trial(log: Path):
    """A fake trial that sends Ctrl-C (SIGINT) to the driver during the last trial's epoch 2 (the first time)."""
    driver = os.getpid()

    def behave(config, attempt, epoch):
        if (config["gaussian_mode"], config["seed"], epoch, attempt) == ("3d", 1, 2, 1):
            os.kill(driver, signal.SIGINT)
            time.sleep(60)

    return fake_trial(log, behave)


def interrupted_study(root: Path, dataset: Path, capsys) -> Path:
    """A study interrupted while its last trial runs: 3 trials completed, one running."""
    log = root / "log"
    log.mkdir(parents=True)
    assert main(argv(root, dataset), interrupt_last_trial(log)) == 130
    assert "interrupted: run the same command again" in capsys.readouterr().err
    return root / "studies" / "fake"


def test_ctrl_c_after_the_last_trial_started_is_an_interruption(ray_local, tmp_path, small_dataset, capsys):
    """Item 1: Ray marks every trial terminated after the interrupt; the study's records say one still runs."""
    study = interrupted_study(tmp_path, small_dataset, capsys)
    info = json.loads((study / "study.json").read_text())
    assert "finished" not in info and "explore_finished" not in info
    assert sorted(t["status"] for t in trials(study).values()) == ["completed"] * 3 + ["running"]
    assert main(argv(tmp_path, small_dataset), fake_trial(tmp_path / "log", lambda *a: None)) == 0
    assert [t["status"] for t in trials(study).values()] == STATUS
    assert "finished" in json.loads((study / "study.json").read_text())


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_ray_state_is_refused_then_repaired(ray_local, tmp_path, small_dataset, capsys, damage):
    """Item 3: Ray restarts an experiment whose state file is truncated, and the resume used to delete the metrics
    of the finished trials. Now: refused with one line naming the state and --repair, nothing changed; --repair
    sets the stage aside (kept, byte for byte) and runs it again."""
    study = interrupted_study(tmp_path, small_dataset, capsys)
    if damage == "truncated":
        state = sorted((study / "ray").glob("experiment_state-*.json"))[-1]
        state.write_bytes(state.read_bytes()[:200])
    else:
        (study / "ray").rename(tmp_path / "ray-elsewhere")  # e.g. a copy that left out Ray's folder
    before = files(study)
    assert main(argv(tmp_path, small_dataset), fake_trial(tmp_path / "log", lambda *a: None)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{study / 'ray'}: Ray's experiment state" in err, err
    assert "records 3 ended trials" in err and "--repair" in err, err
    after = files(study)
    assert {k: v for k, v in after.items() if k not in ("study.json", ".lock")} == \
        {k: v for k, v in before.items() if k not in ("study.json", ".lock")}  # nothing deleted or rewritten

    assert main(argv(tmp_path, small_dataset, "--repair"), fake_trial(tmp_path / "log", lambda *a: None)) == 0
    assert [t["status"] for t in trials(study).values()] == STATUS
    aside = {p.name.split(".damaged-")[0]: p for p in study.glob("*.damaged-*")}
    assert {"metrics", "trials.parquet"} <= set(aside), sorted(aside)
    kept = {f"metrics/{p.name}" for p in aside["metrics"].iterdir()}
    assert kept == {k for k in before if k.startswith("metrics/")}  # the old rows, all of them, set aside
    assert recorded(study) == 12  # the stage run again: 4 trials x 3 epochs


def test_damaged_trials_table_is_rebuilt_from_ray_state(ray_local, tmp_path, small_dataset, capsys):
    """Item 7: trials.parquet is derived; a damaged one is kept aside and rebuilt, on a finished study too."""
    log = tmp_path / "log"
    log.mkdir()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 0
    study = tmp_path / "studies" / "fake"
    good = trials(study)
    (study / "trials.parquet").write_bytes((study / "trials.parquet").read_bytes()[:100])
    capsys.readouterr()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 0
    assert "was damaged (ArrowInvalid); kept as" in capsys.readouterr().out
    rebuilt = trials(study)
    keys = ("trial_id", "status", "last_epoch", "lr", "seed", "gaussian_mode", "valid_heldout_iou", "dataset")
    assert {k: {c: t[c] for c in keys} for k, t in rebuilt.items()} == {k: {c: t[c] for c in keys}
                                                                         for k, t in good.items()}
    assert len(list(study.glob("trials.parquet.damaged-*"))) == 1
    assert all(t["checkpoint_path"].startswith("ray/") and (study / t["checkpoint_path"]).parent.is_dir()
               for t in rebuilt.values())  # the fake trial's checkpoint folder holds state.json only


def test_damaged_study_json_is_refused_then_repaired(ray_local, tmp_path, small_dataset, capsys):
    """Item 7: a damaged study.json is one line naming it and --repair (no traceback); --repair keeps it aside."""
    log = tmp_path / "log"
    log.mkdir()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 0
    study = tmp_path / "studies" / "fake"
    (study / "study.json").write_text('{"space": {"name": "fa')
    capsys.readouterr()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{study / 'study.json'}: damaged (JSONDecodeError" in err, err
    assert "--repair" in err
    assert main(argv(tmp_path, small_dataset, "--repair"), fake_trial(log, lambda *a: None)) == 0
    assert "finished" in json.loads((study / "study.json").read_text())
    assert len(list(study.glob("study.json.damaged-*"))) == 1
    assert [t["status"] for t in trials(study).values()] == STATUS  # nothing ran again: the records said done
    assert sum(1 for _ in log.iterdir()) == 4 and all(len(p.read_text().split("start")) == 2 for p in log.iterdir())


def test_every_trial_failed_exits_1(ray_local, tmp_path, small_dataset, capsys):
    """Item 4: a study whose every trial failed finished, but without a result: exit 1 and the error, not 0."""
    def behave(config, attempt, epoch):
        raise ValueError("masks are empty in every view")

    log = tmp_path / "log"
    log.mkdir()
    assert main(argv(tmp_path, small_dataset, "--max-failures", "0"), fake_trial(log, behave)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: every explore trial failed (4 trials; ValueError: masks are empty"), err[-1]
    assert [t["status"] for t in trials(tmp_path / "studies" / "fake").values()] == ["failed"] * 4


def test_lock_is_held_until_the_report_is_written(ray_local, tmp_path, small_dataset, monkeypatch):
    """Item 9: a second driver is refused while the report is written; stale staging of a killed writer is
    removed, and a previous report caught mid-swap is put back."""
    import study.runner.run
    from study.analysis.report import clean_stale

    seen = []
    real = study.runner.run.finish

    def finish(store, report):
        try:
            with StudyLock(store):
                seen.append("lock was free")
        except StudyError as e:
            seen.append(str(e))
        return real(store, report)

    monkeypatch.setattr(study.runner.run, "finish", finish)
    log = tmp_path / "log"
    log.mkdir()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 0
    assert len(seen) == 1 and "another driver is running this study" in seen[0], seen

    pid = dead_pid()
    out = tmp_path / "studies" / "fake" / "report"
    (out.with_name(f".report.tmp-{pid}") / "half").mkdir(parents=True)
    (out.with_name(f".report.old-{pid}")).mkdir()
    (out.with_name(f".report.old-{pid}") / "decision.md").write_text("the previous report")
    (out.with_name(f".report.tmp-{os.getpid()}")).mkdir()  # a live writer's staging: ours, left alone here
    clean_stale(out)
    assert (out / "decision.md").read_text() == "the previous report"  # put back: `report` was missing
    assert not out.with_name(f".report.tmp-{pid}").exists() and not out.with_name(f".report.old-{pid}").exists()
    assert out.with_name(f".report.tmp-{os.getpid()}").exists()


def test_copied_study_resumes_and_reports_in_place(ray_local, tmp_path, small_dataset, capsys):
    """Item 10: an interrupted study moved elsewhere resumes there; the original's files are neither changed nor
    needed; checkpoint paths in trials.parquet are relative to the study."""
    from study.analysis.load import load_study

    study = interrupted_study(tmp_path / "a", small_dataset, capsys)
    before = files(study)
    copy = tmp_path / "b" / "studies" / "fake"
    copy.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(study), str(copy)], check=True)
    hidden = tmp_path / "a" / "hidden"
    study.rename(hidden)  # the original is gone while the copy resumes
    assert main(argv(tmp_path / "b", small_dataset), fake_trial(tmp_path / "a" / "log", lambda *a: None)) == 0
    assert files(hidden) == before
    rows = trials(copy)
    assert [t["status"] for t in rows.values()] == STATUS
    assert all(not t["checkpoint_path"].startswith("/") for t in rows.values()), rows
    _, table, _ = load_study(copy)
    assert all(Path(p).parent.is_dir() and p.startswith(str(copy)) for p in table["checkpoint_path"])


def test_scratch_of_killed_trials_is_cleaned(ray_local, tmp_path, small_dataset):
    """Item 11: trial folders live under <tmp>/posesplat-scratch/<kind>-<pid>-*; the driver removes those whose
    process is gone when it starts or resumes (and leaves live ones)."""
    from study.runner.trainable import scratch, scratch_dir

    dead = dead_pid()
    stale = [scratch() / f"trial-{dead}-x1", scratch() / f"tb-{dead}-x2"]
    for d in stale:
        (d / "checkpoint.pt").parent.mkdir(parents=True, exist_ok=True)
        (d / "checkpoint.pt").write_bytes(b"0" * 1000)
    live = scratch_dir("trial")
    assert live.parent == scratch() and live.name.startswith(f"trial-{os.getpid()}-")
    log = tmp_path / "log"
    log.mkdir()
    assert main(argv(tmp_path, small_dataset), fake_trial(log, lambda *a: None)) == 0
    assert not any(d.exists() for d in stale) and live.is_dir()
    live.rmdir()


FAKE_STUDY = Path(__file__).with_name("fake_study.py")


def test_sigterm_is_an_interruption_with_exit_143(tmp_path, small_dataset):
    """Item 8: SIGTERM to the driver (what a scheduler sends): Tune's snapshot, exit 143, the resume message, no
    native crash dump; the same command resumes and finishes."""
    cmd = [sys.executable, str(FAKE_STUDY), *argv(tmp_path, small_dataset)]
    env = {**os.environ, "FAKE_EPOCH_S": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).parent.parent)
    metrics = tmp_path / "studies" / "fake" / "metrics"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and recorded(metrics.parent) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "terminated: run the same command again to resume the study"
    assert "Fatal Python error" not in err and "*** SIGTERM" not in err
    study = tmp_path / "studies" / "fake"
    assert "finished" not in json.loads((study / "study.json").read_text())
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [t["status"] for t in trials(study).values()] == STATUS


def checkpoint_deleted(ray_dir: Path) -> bool:
    """Has Ray deleted one of a trial's first two checkpoints (num_to_keep=2) after the trial saved its third?"""
    return any((d / "checkpoint_000002").exists() and not all((d / f"checkpoint_00000{i}").exists() for i in (0, 1))
               for d in ray_dir.glob("explore_*"))


@pytest.mark.parametrize("ious,deleted", [
    ("0.3,0.2,0.4", "the snapshot's latest checkpoint"),  # epoch 2 is the worst: the checkpoint to resume from
    pytest.param("0.1,0.2,0.3", "an older checkpoint", marks=pytest.mark.slow),  # epoch 1: deleted again on resume
], ids=["latest", "older"])
def test_kill_after_ray_deleted_a_checkpoint(tmp_path, small_dataset, ious, deleted):
    """Item 1 of issue 28's second part: Ray deletes a checkpoint beyond num_to_keep when it registers a newer one,
    before its experiment snapshot stops listing it. The group killed then, the resume used to restore from the
    deleted checkpoint (the trial failed: "does not exist on storage anymore") or delete it again (a traceback).
    Now every trial completes with all its epochs, and the resume prints no traceback."""
    args = argv(tmp_path, small_dataset)
    study = tmp_path / "studies" / "fake"
    env = {**os.environ, "FAKE_EPOCH_S": "0.5", "FAKE_IOU": ious}
    root = Path(__file__).parent.parent
    cmd = [sys.executable, str(FAKE_STUDY), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root,
                            start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not checkpoint_deleted(study / "ray"):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint_deleted(study / "ray"), f"no checkpoint was deleted before the study ended ({deleted})"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    rows = pq.read_table(study / "trials.parquet").to_pylist()
    assert sorted((t["status"], t["last_epoch"]) for t in rows) == [("completed", 3)] * 4, rows
    parts = pq.read_table(study / "metrics").to_pylist()
    assert sorted((p["trial_id"], p["epoch"]) for p in parts) == sorted((t["trial_id"], e) for t in rows
                                                                        for e in (1, 2, 3))


@pytest.mark.slow
def test_unreadable_checkpoint_is_named_by_the_studys_file(ray_local, tmp_path, small_dataset):
    """Item 12: the real trainable restores from a checkpoint that was damaged in the study; the trial's error
    names that file in the study, not the worker's temporary copy of it."""
    from ray import tune

    from study.runner import _ray_compat
    from study.runner.sink import ParquetSink
    from study.base.storage import Store
    from study.runner.trainable import run_trial

    study = Store(tmp_path / "study")
    base = {"dataset": str(small_dataset), **TINY_MODEL, "epochs": 6, "max_frames": 12, "eval_frames": 1,
            "steps_per_epoch": 2, "valid_every": 1, "image_downsample": 2}

    class InterruptAfterEpoch1(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result["epoch"] == 2:  # epoch 1's checkpoint is registered by now
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's interrupt: it saves its state and returns

    trainable = tune.with_parameters(run_trial, base_config=base, study_uri=study.uri)
    tune.Tuner(trainable, param_space={"gaussian_mode": "3d"},
               run_config=tune.RunConfig(name="ray", storage_path=study.uri, verbose=0,
                                         callbacks=[InterruptAfterEpoch1()])).fit()
    ckpts = sorted((tmp_path / "study" / "ray").glob("*/checkpoint_*/checkpoint.pt"))
    assert ckpts, "no checkpoint after epoch 1"
    for c in ckpts:
        c.write_bytes(c.read_bytes()[:1000])  # truncated, as by a full disk
    sink = ParquetSink(study, "s", base, 6)
    tuner = _ray_compat.restore_tuner(str(tmp_path / "study" / "ray"), trainable, {"gaussian_mode": "3d"},
                                      lambda _: [sink], 0, None)
    tuner.fit()
    (row,) = pq.read_table(tmp_path / "study" / "trials.parquet").to_pylist()
    assert row["status"] == "failed"
    assert any(f"{c}: not a readable posesplat checkpoint" in row["error"] for c in ckpts), row["error"]
    assert "posesplat-scratch" not in row["error"]


def test_damaged_confirm_plan_is_refused_then_planned_again(ray_local, tmp_path, small_dataset, capsys):
    """The confirm stage's plan.json (written before its trials) damaged after the study ran: one line naming it;
    --repair plans again from the explore records, gets the same plan, and reruns nothing."""
    space = {**FAKE_SPACE, "name": "fakec", "confirm": {"cell": {"grid_size": 16, "max_frames": 12},
                                                         "min_seeds": 3, "max_seeds": 3}}
    args = argv(tmp_path, small_dataset)
    Path(args[1]).write_text(json.dumps(space))
    log = tmp_path / "log"
    log.mkdir()
    assert main(args, fake_trial(log, lambda *a: None)) == 0
    plan_file = tmp_path / "studies" / "fakec" / "confirm" / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert len(plan["trials"]) == 6
    runs = {p.name: p.read_text().count("start") for p in log.iterdir()}
    plan_file.write_text(plan_file.read_text()[:50])
    capsys.readouterr()
    assert main(args, fake_trial(log, lambda *a: None)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{plan_file}: damaged (JSONDecodeError" in err and "--repair" in err, err
    assert main(args + ["--repair"], fake_trial(log, lambda *a: None)) == 0
    again = json.loads(plan_file.read_text())
    assert again["trials"] == plan["trials"] and again["seeds"] == plan["seeds"]
    assert len(list(plan_file.parent.glob("plan.json.damaged-*"))) == 1
    assert {p.name: p.read_text().count("start") for p in log.iterdir()} == runs  # no trial ran again


def whole_pickle(path: Path) -> bool:
    """Whether `path` holds a whole pickle: Ray writes tuner.pkl in place, so a kill that lands while the file
    exists can leave it truncated (a damaged Ray state, another case than the one under test)."""
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
        return True
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_stage_that_ray_ended_short_of_the_plan_is_refused_then_repaired(tmp_path, small_dataset):
    """Issue 28: a study stuck by an earlier version (killed between confirm/ray/tuner.pkl and Ray's first snapshot,
    then resumed through Tuner.can_restore: Ray restarted the stage as an experiment of one trial) is not reported
    as interrupted on every run: one line naming the stage's Ray state and --repair, exit 2; --repair sets the stage
    aside and runs it again."""
    space = {**FAKE_SPACE, "name": "fakec", "confirm": {"cell": {"grid_size": 16, "max_frames": 12},
                                                         "min_seeds": 3, "max_seeds": 3}}
    args = argv(tmp_path, small_dataset)
    Path(args[1]).write_text(json.dumps(space))
    study = tmp_path / "studies" / "fakec"
    env = {**os.environ, "FAKE_EPOCH_S": "0.2"}
    root = Path(__file__).parent.parent
    proc = subprocess.Popen([sys.executable, str(FAKE_STUDY), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=root, start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not whole_pickle(study / "confirm" / "ray" / "tuner.pkl"):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((study / "confirm" / "ray").glob("experiment_state-*.json"))
    earlier = ("import sys; sys.path.insert(0, 'tests'); from ray import tune; from study import _ray_compat; "
               "_ray_compat.can_resume = tune.Tuner.can_restore; import fake_study; from study.runner.run import main; "
               "sys.exit(main(sys.argv[1:], fake_study.trial))")  # the earlier version's test for a Ray folder
    for cmd in ([sys.executable, "-c", earlier, *args], [sys.executable, str(FAKE_STUDY), *args]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith(f"error: {study / 'confirm' / 'ray'}: Ray's experiment ended the stage with 1 of its 6 "
                              f"trials ended, uninterrupted") and "--repair" in err, err
    r = subprocess.run([sys.executable, str(FAKE_STUDY), *args, "--repair"], capture_output=True, text=True, env=env,
                       cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [t["status"] for t in trials(study / "confirm").values()] == ["completed"] * 6
    assert {p.name.split(".damaged-")[0] for p in (study / "confirm").glob("*.damaged-*")} >= {"ray", "trials.parquet"}
    assert "finished" in json.loads((study / "study.json").read_text())


def test_a_signal_that_breaks_the_report_is_the_interrupt(tmp_path, monkeypatch):
    """A signal landing in an extension's import while the report is written surfaces as that import's error
    ("ImportError: initialization failed", seen in the walk's report-SIGTERM-driver case): the driver must exit as
    interrupted (the same command resumes), not with a traceback and status 1. Without a signal the error stays."""
    from study.base.storage import Store
    from study.runner import run
    from study.runner.interrupts import INTERRUPTED

    def broken_by_a_signal(*args, **kwargs):
        INTERRUPTED.set()  # what the driver's handler does before it raises
        raise ImportError("initialization failed")

    def broken(*args, **kwargs):
        raise ImportError("initialization failed")

    monkeypatch.setattr(run, "summary", lambda *args: "summary")
    try:
        monkeypatch.setattr(run.analyze, "report", broken_by_a_signal)
        with pytest.raises(KeyboardInterrupt):
            run.finish(Store(tmp_path), True)
        INTERRUPTED.clear()
        monkeypatch.setattr(run.analyze, "report", broken)
        with pytest.raises(ImportError):
            run.finish(Store(tmp_path), True)
    finally:
        INTERRUPTED.clear()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed KeyboardInterrupt
def test_a_signal_a_finaliser_swallowed_is_the_interrupt(tmp_path, monkeypatch):
    """A signal whose handler runs inside a __del__ (the garbage collector's, while the report is written): Python
    prints "Exception ignored" and the report goes on to finish. The driver must still exit as interrupted (seen
    once in the walk's report-SIGTERM-driver case as exit 0). SIGINT here: SIGTERM's watcher would end pytest."""
    import gc
    import os
    import signal
    from study.base.storage import Store
    from study.runner import run
    from study.runner.interrupts import INTERRUPTED, signals_as_interrupt

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, before __del__ returns

    def report_with_a_finaliser(*args, **kwargs):
        Finalised()
        gc.collect()
        return None  # the report was written

    monkeypatch.setattr(run, "summary", lambda *args: "summary")
    monkeypatch.setattr(run.analyze, "report", report_with_a_finaliser)
    try:
        with signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
            run.finish(Store(tmp_path), True)
        assert INTERRUPTED.is_set()
    finally:
        INTERRUPTED.clear()
