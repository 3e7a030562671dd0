"""The Ray Tune study with a real local Ray instance: the smoke study end to end, parquet and TensorBoard read back,
stratified ASHA fairness, equal trials per mode, bad input refused with one line."""

import json
import math
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from ray import tune

from study.run import StudyError, StudyLock, main
from study.search import PerModeSearcher, StratifiedASHA
from study.space import Space, SpaceError, load_space

METRIC_KEYS = ["epoch", "train_loss", "valid_heldout_iou", "valid_heldout_psnr", "test_heldout_iou",
               "test_heldout_psnr", "test_heldout_ssim", "gt_iou3d", "epoch_time_s", "render_ms", "peak_mem_mb",
               "n_gaussians", "params_per_gaussian", "checkpoint_bytes"]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def smoke_study(ray_local, small_dataset, tmp_path_factory):
    storage = tmp_path_factory.mktemp("studies")
    rc = main(["--space", "smoke", "--storage", str(storage), "--dataset", str(small_dataset), "--seed", "1"])
    assert rc == 0
    return storage / "smoke"


def test_smoke_parquet_equals_reported(smoke_study):
    rows = pads.dataset(smoke_study / "metrics", format="parquet").to_table().to_pylist()
    trials = pq.read_table(smoke_study / "trials.parquet").to_pylist()
    assert len(trials) == 4
    assert sorted(t["gaussian_mode"] for t in trials) == ["2d", "2d", "3d", "3d"]
    assert {t["status"] for t in trials} <= {"completed", "stopped"}
    # exactly one row per (trial, epoch), epochs 1..last without gaps
    for t in trials:
        epochs = sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"])
        assert epochs == list(range(1, t["last_epoch"] + 1))
        assert (t["status"] == "stopped") == (t["last_epoch"] < 3)
    assert all(k in rows[0] for k in METRIC_KEYS + ["grid_size", "max_frames", "lr", "ssim_lambda", "seed",
                                                  "gaussian_mode", "device", "hostname", "timestamp", "study"])
    # values equal what Ray recorded from tune.report in each trial's result.json
    reported = {}
    for result_file in (smoke_study / "ray").glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            r = json.loads(line)
            reported[(r["trial_id"], r["epoch"])] = r
    assert len(reported) == len(rows)
    for row in rows:
        rep = reported[(row["trial_id"], row["epoch"])]
        for k in METRIC_KEYS:
            a, b = row[k], rep[k]
            assert (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == pytest.approx(b)
        assert row["lr"] == pytest.approx(rep["config"]["lr"])


def test_smoke_tensorboard_read_back(smoke_study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = pq.read_table(smoke_study / "trials.parquet").to_pylist()
    for t in trials:
        acc = EventAccumulator(str(smoke_study / "tensorboard" / t["trial_id"]), size_guidance={"images": 0})
        acc.Reload()
        tags = acc.Tags()
        assert "metrics/valid_heldout_iou" in tags["scalars"]
        assert len(acc.Scalars("metrics/train_loss")) == t["last_epoch"]
        assert "renders/heldout" in tags["images"]
        hp = acc.PluginTagToContent("hparams")
        assert hp, "no HParams session written"
        assert any(b"gaussian_mode" in v for v in hp.values())


def test_smoke_report_written(smoke_study):
    report = smoke_study / "report"
    assert (report / "decision.md").read_text().startswith("# 2D vs 3D")
    assert (report / "report.html").stat().st_size > 10_000


def test_stratified_asha_keeps_each_mode_alive(ray_local, tmp_path):
    """3d scores far above 2d; each mode still gets trials to the full budget and ASHA still prunes within a mode."""
    space = Space(name="fair", modes=["2d", "3d"], grid={"grid_size": [16], "max_frames": [12]},
                  search={"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, samples_per_cell=6, max_epochs=8)

    def trainable(config):
        gap = 10.0 if config["gaussian_mode"] == "3d" else 0.0
        for epoch in range(1, 9):
            tune.report({"epoch": epoch, "valid_heldout_iou": gap + math.log10(config["lr"]) + 0.01 * epoch})

    searcher = PerModeSearcher(space, "valid_heldout_iou", "max", algo="random", seed=0)
    sched = StratifiedASHA(space.modes, 8, 1, 2, "valid_heldout_iou", "max")
    results = tune.Tuner(
        trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=searcher.total,
                                               max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="fair", verbose=0),
    ).fit()
    by_mode = {"2d": [], "3d": []}
    for r in results:
        by_mode[r.config["gaussian_mode"]].append(r.metrics["epoch"])
    assert len(by_mode["2d"]) == len(by_mode["3d"]) == 6
    for mode, epochs in by_mode.items():
        assert max(epochs) == 8, (mode, epochs)  # someone of each mode ran the full budget
        assert min(epochs) < 8, (mode, epochs)  # and early stopping did prune within the mode


def test_every_cell_crossed_with_every_mode():
    space = load_space("comparison")
    s = PerModeSearcher(space, "valid_heldout_iou", "max", algo="optuna", seed=0)
    configs = [s.suggest(f"t{i}") for i in range(s.total)]
    assert s.suggest("extra") == PerModeSearcher.FINISHED
    cells = {}
    for c in configs:
        cells.setdefault((c["grid_size"], c["max_frames"], c["seed"]), []).append(c["gaussian_mode"])
        assert 3e-5 <= c["lr"] <= 1e-3 and 0 <= c["ssim_lambda"] <= 0.2
    assert len(cells) == 6 * 2 and all(sorted(m) == ["2d", "3d"] for m in cells.values())


@pytest.fixture(scope="module")
def invalid_dataset(small_dataset, tmp_path_factory):
    """A copy of the small dataset whose centre track has a NaN: it fails validation."""
    import shutil

    import zarr

    bad = tmp_path_factory.mktemp("bad") / "nan_centre.zarr"
    shutil.copytree(small_dataset, bad)
    zarr.open_group(str(bad), mode="r+")["centre"][5, 0] = float("nan")
    return bad


def _space_file(tmp_path, **raw):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"name": "bad", **raw}))
    return path


BAD_INPUTS = {  # case -> (argv after --storage, expected text in the one line)
    "unknown_space": (lambda t, d: ["--space", "no_such_space"], "unknown search space 'no_such_space'"),
    "space_unknown_key": (lambda t, d: ["--space", str(_space_file(t, max_epoch=3))],
                          "unknown key 'max_epoch' (did you mean 'max_epochs'?)"),
    "space_bad_value": (lambda t, d: ["--space", str(_space_file(t, scheduler={"reduction_factor": 0.5}))],
                        "key 'scheduler.reduction_factor'"),
    "space_not_json": (lambda t, d: ["--space", str(_space_file(t)).replace("space.json", "nope.json")],
                       "no such search-space file"),
    "config_key_does_not_exist": (lambda t, d: ["--space", str(_space_file(t, base_config={"gridsize": 32}))],
                                  "gridsize"),
    "config_bad_value": (lambda t, d: ["--space", str(_space_file(t, base_config={"grid_size": 2}))],
                         "key 'grid_size'"),
    "grid_key_does_not_exist": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12], "frame_skip": [1]}))], "'frame_skip' is not a training config key"),
    "missing_dataset": (lambda t, d: ["--space", "smoke", "--dataset", str(t / "none.zarr")], "none.zarr: no such dataset"),
    "invalid_dataset": (lambda t, d: ["--space", "smoke", "--dataset", str(d)], "array 'centre': non-finite value at frame 5"),
    "resume_without_study": (lambda t, d: ["--space", "smoke", "--resume"], "no study to resume"),
    "cluster_unreachable": (lambda t, d: ["--space", "smoke", "--address", "127.0.0.1:9"],
                            "--address 127.0.0.1:9: no Ray cluster answers there"),
    "unknown_mode": (lambda t, d: ["--space", "smoke", "--modes", "4d"], "--modes: unknown mode '4d'"),
    "max_epochs_negative": (lambda t, d: ["--space", "comparison", "--max-epochs", "-3"],
                            "--max-epochs -3: must be at least 1"),
    "max_epochs_zero": (lambda t, d: ["--space", "smoke", "--max-epochs", "0"], "--max-epochs 0: must be at least 1"),
    "num_samples_zero": (lambda t, d: ["--space", "smoke", "--num-samples", "0"],
                         "--num-samples 0: must be at least 1"),
    "max_concurrent_zero": (lambda t, d: ["--space", "smoke", "--max-concurrent", "0"],
                            "--max-concurrent 0: must be at least 1"),
    "space_grace_above_budget": (lambda t, d: ["--space", str(_space_file(
        t, max_epochs=3, scheduler={"grace_period": 5}))], "scheduler.grace_period (5) exceeds max_epochs (3)"),
    "space_grace_above_cpu_budget": (lambda t, d: ["--space", str(_space_file(
        t, max_epochs=30, scheduler={"grace_period": 5}, cpu={"max_epochs": 4}))],
        "scheduler.grace_period (5) exceeds cpu.max_epochs (4)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys, small_dataset, invalid_dataset):
    make_argv, expected = BAD_INPUTS[case]
    storage = tmp_path / "studies"
    argv = make_argv(tmp_path, invalid_dataset) + ["--storage", str(storage)]
    if "--dataset" not in argv:
        argv += ["--dataset", str(small_dataset)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not storage.exists()  # nothing half-written


def test_budget_below_grace_period_caps_it(tmp_path, capsys, small_dataset):
    """`--max-epochs 3` with a space whose ASHA grace period is 5 runs with grace 3 (Ray's ASHA would assert)."""
    from study.run import parse_args, study_plan

    space = _space_file(tmp_path, grid={"grid_size": [16], "max_frames": [12]}, max_epochs=8,
                        scheduler={"grace_period": 5, "reduction_factor": 3})
    args = parse_args(["--space", str(space), "--storage", str(tmp_path / "s"), "--dataset", str(small_dataset),
                       "--max-epochs", "3", "--num-samples", "2"])
    plan, base, _, _ = study_plan(args)
    assert (plan.max_epochs, plan.scheduler.grace_period, plan.samples_per_cell, base["epochs"]) == (3, 3, 2, 3)
    assert "grace period capped at 3" in capsys.readouterr().out
    StratifiedASHA(plan.modes, plan.max_epochs, plan.scheduler.grace_period, plan.scheduler.reduction_factor,
                   plan.metric, plan.metric_mode)  # Ray accepts it
    assert not (tmp_path / "s").exists()


def test_unwritable_storage_is_one_line(tmp_path, capsys, small_dataset):
    (tmp_path / "a_file").write_text("x")
    storage = tmp_path / "a_file" / "studies"
    assert main(["--space", "smoke", "--dataset", str(small_dataset), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {storage}: storage is not writable ({tmp_path / 'a_file'} is a file, not a directory)"


@pytest.mark.parametrize("change, expected", [
    (["--space", "comparison"], "holds a study of space 'smoke'"),
    (["--space", "smoke", "--seed", "2"], "started with other --seed"),
    (["--space", "smoke", "--seed", "1", "--dataset", "OTHER"], "started with other dataset"),
])
def test_changed_study_into_existing_directory_is_refused(smoke_study, invalid_dataset, capsys, small_dataset,
                                                           change, expected):
    before = (smoke_study / "study.json").read_text()
    argv = ["--name", "smoke", "--storage", str(smoke_study.parent), "--dataset", str(small_dataset)] + change
    assert main([str(invalid_dataset) if a == "OTHER" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert (smoke_study / "study.json").read_text() == before


def test_bad_option_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--search", "grid"])
    assert e.value.code == 2
    assert "invalid choice: 'grid'" in capsys.readouterr().err


def test_second_driver_is_refused(tmp_path):
    with StudyLock(tmp_path):
        with pytest.raises(StudyError, match="another driver"):
            with StudyLock(tmp_path):
                pass
    with StudyLock(tmp_path):  # released: a later driver (or a resume after kill -9) gets it
        pass


def test_sink_drops_what_restored_ray_state_will_redo(tmp_path):
    """After a crash Ray's snapshot can lag the parquet: parts of unknown trials and of later epochs go."""
    from study.sink import ParquetSink, write_table_atomic

    for tid, epochs in (("a", 3), ("b", 2)):
        for e in range(1, epochs + 1):
            write_table_atomic([{"trial_id": tid, "epoch": e}], tmp_path / "metrics" / f"part-{tid}-{e:04d}.parquet")
        (tmp_path / "tensorboard" / tid).mkdir(parents=True)
    write_table_atomic([{"trial_id": "a", "status": "completed", "last_epoch": 3, "stopped_at_epoch": None},
                        {"trial_id": "b", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}],
                       tmp_path / "trials.parquet")
    sink = ParquetSink(tmp_path, "s", {}, 3)
    sink.reconcile({"a": 2})  # Ray restored trial a at epoch 2 and never saw trial b
    assert sorted(p.stem for p in (tmp_path / "metrics").iterdir()) == ["part-a-0001", "part-a-0002"]
    assert pq.read_table(tmp_path / "trials.parquet").to_pylist() == [
        {"trial_id": "a", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}]
    assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == ["a"]
    sink.reconcile({})  # a fresh start into a directory Ray could not restore: nothing of the old run is kept
    assert not any((tmp_path / "metrics").iterdir()) and not (tmp_path / "trials.parquet").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--space", "--name", "--storage", "--dataset", "--num-samples", "--max-epochs", "--gpus-per-trial",
                "--cpus-per-trial", "--max-concurrent", "--search", "--seed", "--modes", "--cpu", "--max-failures",
                "--address", "--resume", "--no-report"):
        assert f"\n  {opt} " in out or f"\n  {opt}\n" in out, opt
    assert "default: None" not in out
