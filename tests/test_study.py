"""The Ray Tune study with a real local Ray instance: the smoke study end to end, parquet and TensorBoard read back,
stratified ASHA fairness, equal trials per mode, bad input refused with one line."""

import json
import math
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from ray import tune

from study.runner.run import main
from study.runner.search import PerModeSearcher, StratifiedASHA
from study.base.space import Space, SpaceError, load_space
from study.base.storage import StudyError, StudyLock
from shared import CHROMIUM, format_1_copy

METRIC_KEYS = ["epoch", "train_loss", "valid_heldout_iou", "valid_heldout_psnr", "test_heldout_iou",
               "test_heldout_psnr", "test_heldout_ssim", "gt_iou3d", "epoch_time_s", "render_ms", "cpu_peak_rss_growth_mb",
               "gaussians_per_frame", "params_per_gaussian", "checkpoint_bytes"]


@pytest.fixture(scope="module")
def smoke_run(ray_local, small_dataset, tmp_path_factory):
    """(the smoke study's directory, what its driver printed)."""
    import contextlib
    import io

    storage = tmp_path_factory.mktemp("studies")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--space", "smoke", "--storage", str(storage), "--dataset", str(small_dataset), "--seed", "1"])
    assert rc == 0
    return storage / "smoke", out.getvalue()


@pytest.fixture(scope="module")
def smoke_study(smoke_run):
    return smoke_run[0]


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
    """Run names, grouped and described tags, constants only in HParams, typed HParams with the study's metrics
    first and each trial's end, read back with TensorBoard's own event reader; no Ray TBX events beside them."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    from study.runner.board import runs, scalars
    from study.base.storage import Store

    trials = pq.read_table(smoke_study / "trials.parquet").to_pylist()
    found = {tid: parts for tid, parts in runs(Store(smoke_study)).items() if parts[1] == "explore"}
    assert set(found) == {t["trial_id"] for t in trials}
    for t in trials:
        parts = found[t["trial_id"]]
        cell = f"grid{t['grid_size']}_frames{t['max_frames'] if t['max_frames'] is not None else 'all'}"
        assert parts[1:4] == ("explore", t["gaussian_mode"], cell), parts
        assert parts[4].startswith(f"lr{t['lr']:.3g}") and parts[4].endswith("-" + t["trial_id"]), parts
        run = smoke_study.joinpath(*parts)
        acc = EventAccumulator(str(run))
        acc.Reload()
        plugins = {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in acc.Tags()["tensors"]}
        scalar_tags = {tag for tag, plugin in plugins.items() if plugin == "scalars"}
        assert {"quality/valid_heldout_iou", "loss/train_loss", "cost/epoch_time_s"} <= scalar_tags
        assert not {"quality/epoch", "other/epoch", "other/model_params", "other/checkpoint_bytes"} & scalar_tags
        assert all(tag.split("/")[0] in ("quality", "loss", "cost", "trial") for tag in scalar_tags), scalar_tags
        assert len(scalars(run, "loss/train_loss")) == t["last_epoch"]
        assert "held-out views" in acc.SummaryMetadata("quality/valid_heldout_iou").summary_description
        assert plugins["renders/heldout"] == "images" and plugins["renders/geometry"] == "images"
        assert {"quality/test_heldout_depth_err", "quality/test_heldout_normal_err",
                "quality/test_surface_dist"} <= scalar_tags
        assert all(math.isfinite(v) for _, v in scalars(run, "quality/test_heldout_depth_err"))
        ended = scalars(run, "trial/stopped_early")[-1][1], scalars(run, "trial/failed")[-1][1]
        assert ended == (float(t["status"] == "stopped"), float(t["status"] == "failed"))
        hp = {tag: plugin_data_pb2.HParamsPluginData.FromString(v) for tag, v in acc.PluginTagToContent("hparams").items()}
        start = next(d.session_start_info for d in hp.values() if d.HasField("session_start_info"))
        assert start.hparams["gaussian_mode"].string_value == t["gaussian_mode"]
        assert start.hparams["lr"].number_value == pytest.approx(t["lr"])
        assert start.hparams["trial_id"].string_value == t["trial_id"]
        assert int(start.hparams["model_params"].string_value) > 0 and start.hparams["backend"].string_value == "torch"
        assert start.hparams["grid_size"].string_value == str(t["grid_size"])  # integers as text: `16`, not 16.000
        two_dgs = t["gaussian_mode"] == "2d"  # the smoke space trains 2d with 2DGS's terms (mode_config)
        assert start.hparams["dist_lambda"].number_value == t["dist_lambda"] == (0.32 if two_dgs else 0.0)
        assert start.hparams["normal_lambda"].number_value == t["normal_lambda"] == (0.8 if two_dgs else 0.0)
        assert ("loss/train_dist_loss" in scalar_tags) == two_dgs  # NaN (never on) is not written
        experiment = next(d.experiment for d in hp.values() if d.HasField("experiment"))
        metrics = [m.name.tag for m in experiment.metric_infos]
        assert metrics[0] == "quality/valid_heldout_iou" and {"trial/stopped_early", "trial/failed"} <= set(metrics)
        types = {h.name: api_pb2.DataType.Name(h.type) for h in experiment.hparam_infos}
        assert types["gaussian_mode"] == "DATA_TYPE_STRING" and types["lr"] == "DATA_TYPE_FLOAT64"
    assert not list((smoke_study / "ray").rglob("events.out.tfevents*"))  # Ray's TBX logger is off
    assert list((smoke_study / "ray").rglob("result.json"))  # its JSON and CSV results are kept

def test_smoke_report_written(smoke_study):
    """The study's own report: a recommendation in words, the confirm stage's table with both modes, decision.json,
    and an HTML page that carries its figures inside (data URIs of real PNGs), so it opens anywhere."""
    import base64
    import re

    import pandas as pd

    report = smoke_study / "report"
    md = (report / "decision.md").read_text()
    assert md.startswith("# 2D vs 3D")
    assert re.search(r"\*\*Recommendation: (2d|3d|either|inconclusive)\*\*", md)
    assert "## Confirm stage (the decision)" in md and "## Explore stage (exploratory)" in md
    table = pd.read_csv(report / "decision.csv")
    assert {"test_heldout_iou", "test_heldout_psnr_fg", "test_heldout_psnr", "epoch_time_s"} <= set(table["key"])
    d = json.loads((report / "decision.json").read_text())
    assert d["n_pairs"] == 3 and d["design"]["cell"] == {"grid_size": 16, "max_frames": 12}
    # geometry is reported beside the deciding metrics, with intervals, and decides nothing in the shipped spaces
    geometry = ("test_heldout_depth_err", "test_heldout_normal_err", "test_surface_dist")
    assert set(geometry) <= set(table["key"]) and not set(geometry) & set(d["design"]["quality"])
    for k in geometry:
        e = d["measures"][k]
        assert e["lo"] is not None and e["lo"] <= e["mean"] <= e["hi"] and all(v > 0 for v in d["means"][k].values())
    assert "depth error" in md and "No ground-truth geometry" not in md
    assert d["design"]["mode_config"] == {"2d": {"dist_lambda": 0.32, "normal_lambda": 0.8}, "3d": {}}
    assert "fixed per mode by the space: 2d dist_lambda 0.32, normal_lambda 0.8" in md
    html = (report / "report.html").read_text()
    pngs = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert {"decision", "curves_confirm", "curves", "costs", "pareto", "geometry"} <= {name for name, _ in pngs}
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in pngs)


def test_ray_results_api_reads_the_study(smoke_study):
    """docs/study.md: Ray's own ResultGrid on a finished stage, best result without naming the metric again."""
    from ray import tune

    from study.runner.trainable import run_trial

    grid = tune.Tuner.restore(str(smoke_study / "ray"), trainable=run_trial).get_results()
    assert len(grid) == 4 and grid.errors == []
    best = grid.get_best_result()  # metric and mode come from the study's TuneConfig
    rows = pq.read_table(smoke_study / "trials.parquet").to_pylist()
    assert best.metrics["valid_heldout_iou"] == pytest.approx(max(r["valid_heldout_iou"] for r in rows))
    df = grid.get_dataframe()
    assert set(df["trial_id"]) == {r["trial_id"] for r in rows}
    parts = pads.dataset(smoke_study / "metrics", format="parquet").to_table().to_pandas()
    for result in grid:  # CheckpointConfig keeps the best-validation epoch's checkpoint, and the latest
        tid = result.metrics["trial_id"]
        curve = parts[parts["trial_id"] == tid].set_index("epoch")["valid_heldout_iou"]
        kept = {m["epoch"] for _, m in result.best_checkpoints}
        assert max(kept) == curve.index.max() and curve[sorted(kept)].max() == curve.max(), (tid, kept, curve)
        assert result.get_best_checkpoint("valid_heldout_iou", "max") is not None
        # the checkpoints Ray dropped were deleted (after its next snapshot: study.runner._ray_compat), and only those
        assert {Path(c.path).name for c, _ in result.best_checkpoints} == \
            {p.name for p in Path(result.path).glob("checkpoint_*")}, tid
    confirm = tune.Tuner.restore(str(smoke_study / "confirm" / "ray"), trainable=run_trial).get_results()
    assert len(confirm) == 6 and confirm.get_best_result().metrics["epoch"] >= 1
    # result.config is the whole training config of the trial: it retrains it, and equals trials.parquet's row
    from posesplat.config import Config, make_config

    for stage, results in (("", grid), ("confirm", confirm)):
        by_id = {r["trial_id"]: r for r in pq.read_table(smoke_study / stage / "trials.parquet").to_pylist()}
        for result in results:
            cfg = make_config(result.config).model_dump(mode="json")
            assert set(result.config) == set(Config.model_fields), sorted(set(Config.model_fields) ^ set(result.config))
            row = by_id[result.metrics["trial_id"]]
            assert {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cfg.items()} == \
                {k: row[k] for k in cfg}
            assert Path(result.path).name.startswith(f"{'confirm' if stage else 'explore'}_{cfg['gaussian_mode']}_")


def test_report_that_cannot_be_written_exits_1(smoke_study, small_dataset, tmp_path, capsys):
    """A finished study whose report cannot be written is not a success: exit 1 with the reason, nothing rerun."""
    copy = tmp_path / "studies" / "smoke"
    shutil.copytree(smoke_study, copy)
    shutil.rmtree(copy / "report")
    (copy / "report").write_text("a file of the user's where the report goes")
    before = sorted(p.name for p in (copy / "metrics").iterdir())
    assert main(["--space", "smoke", "--storage", str(tmp_path / "studies"), "--dataset", str(small_dataset),
                 "--seed", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {copy / 'report'}: exists and is not a report directory"), err
    assert (copy / "report").read_text() == "a file of the user's where the report goes"
    assert sorted(p.name for p in (copy / "metrics").iterdir()) == before


def test_smoke_confirm_stage_follows_its_plan(smoke_study):
    """The confirm stage ran what its plan says, and the plan was written before its first trial reported: fresh
    seeds paired across the modes, each mode's hyperparameters from its best explore trial (on validation), the full
    budget with no early stopping, one row per (trial, epoch)."""
    import pandas as pd

    plan = json.loads((smoke_study / "confirm" / "plan.json").read_text())
    explore = pq.read_table(smoke_study / "trials.parquet").to_pandas()
    assert plan["seeds"] == [1_001_000, 1_001_001, 1_001_002]  # --seed 1: never an explore seed
    assert not set(plan["seeds"]) & set(explore["seed"])
    metrics = pd.read_parquet(smoke_study / "metrics")
    for mode, hp in plan["hparams"].items():
        best = metrics[(metrics.gaussian_mode == mode)].sort_values("valid_heldout_iou").iloc[-1]
        assert hp["from_trial"] == best["trial_id"] and hp["lr"] == pytest.approx(best["lr"])
    trials = pq.read_table(smoke_study / "confirm" / "trials.parquet").to_pandas()
    assert len(trials) == 6 and set(trials["status"]) == {"completed"} and set(trials["last_epoch"]) == {3}
    for mode, rows in trials.groupby("gaussian_mode"):
        assert sorted(rows["seed"]) == plan["seeds"]
        assert rows["lr"].tolist() == pytest.approx([plan["hparams"][mode]["lr"]] * 3)
        assert rows["dist_lambda"].tolist() == [plan["mode_config"][mode].get("dist_lambda", 0.0)] * 3
    assert plan["mode_config"] == {"2d": {"dist_lambda": 0.32, "normal_lambda": 0.8}, "3d": {}}
    rows = pd.read_parquet(smoke_study / "confirm" / "metrics")
    assert len(rows) == 18 and not rows.duplicated(["trial_id", "epoch"]).any()
    assert rows["timestamp"].min() > pd.Timestamp(plan["written"])
    assert rows.groupby("trial_id")["test_frames"].last().map(list).map(tuple).nunique() == 1  # identical frames


def test_smoke_summary_matches_the_report(smoke_run):
    """The driver's summary gives each stage's trial counts and the decision with the same intervals as
    decision.json."""
    study, out = smoke_run
    d = json.loads((study / "report" / "decision.json").read_text())
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    counts = {s: sum(t["status"] == s for t in trials) for s in ("completed", "stopped", "failed", "running")}
    assert "explore trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) in out
    assert "confirm trials: 6 completed, 0 stopped, 0 failed, 0 running" in out
    assert f"decision: {d['recommendation']} — {d['reason']}" in out
    for key, e in d["quality"].items():
        pct = f"{100 * e['mean']:+.1f}%" if abs(e["mean"]) >= 0.001 or abs(e["hi"]) >= 0.001 else None
        assert f"  {key}: 2d vs 3d " in out and (pct is None or pct in out)


BOXES = "│╭╮╰╯─┌┐└┘"  # the box-drawing characters of Ray's trial and status tables


def test_smoke_output_reads_like_a_tool(smoke_run):
    """Piped, the command prints the study's own lines: one per trial end, one per stage, the decision; Ray's trial
    boxes and status tables are in <study>/ray.log, which the first line names (issue 48)."""
    study, out = smoke_run
    lines = out.splitlines()
    ended = [l for l in lines if ": trial " in l and (" ended (" in l or " failed (" in l)]
    stages = [study, *sorted(study.glob("tune/round*")), study / "confirm"]
    n = sum(pq.read_table(s / "trials.parquet").num_rows for s in stages if (s / "trials.parquet").exists())
    assert len(lines) < 150 and len(ended) == n >= 4, out
    assert not any(c in out for c in BOXES)
    assert f"Ray's console output (trial boxes, status tables): {study / 'ray.log'} (--verbose shows it here)" in lines[:5]
    assert any(l.startswith("decision: ") for l in lines) and f"TensorBoard: tensorboard --logdir {study}" in out
    log = (study / "ray.log").read_text()
    assert "Trial status" in log and any(c in log for c in BOXES)


PLANTED = [0.5, 0.6, 0.1, 0.7]  # validation score by seed: some later trials better than earlier ones, one worse


def epochs_by_mode(scheduler, tmp_path, name: str) -> dict[str, list[int]]:
    """Run 4 seeds x 2 modes one trial at a time (2d, 3d, 2d, ...) under `scheduler`; epochs run, by mode, in order."""

    def planted_trainable(config):  # nested: shipped to the workers by value
        """Reports a planted score (3d 10 above 2d) every epoch: real Ray, no training."""
        gap = 10.0 if config["gaussian_mode"] == "3d" else 0.0
        for epoch in range(1, 9):
            tune.report({"epoch": epoch, "valid_heldout_iou": gap + PLANTED[config["seed"]] + 0.01 * epoch})

    space = Space(name="fair", modes=["2d", "3d"], grid={"grid_size": [16], "max_frames": [12]},
                  search={"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, samples_per_cell=4, max_epochs=8)
    searcher = PerModeSearcher(space, "valid_heldout_iou", "max", algo="random", seed=0, max_concurrent=1)
    results = tune.Tuner(
        planted_trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                       num_samples=searcher.total),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0),
    ).fit()
    by_mode = {"2d": {}, "3d": {}}
    for r in results:
        by_mode[r.config["gaussian_mode"]][r.config["seed"]] = r.metrics["epoch"]
    return {m: [e[s] for s in sorted(e)] for m, e in by_mode.items()}


def test_stratified_asha_keeps_each_mode_alive(ray_local, tmp_path):
    """3d scores 10 above 2d. One ASHA over both modes stops every 2d trial but the first (which met empty rungs)
    at the grace period; StratifiedASHA judges 2d trials among 2d trials: the ones that beat their predecessors run
    the full budget, the others are stopped, exactly as for 3d."""
    from ray.tune.schedulers import ASHAScheduler

    plain = epochs_by_mode(ASHAScheduler(time_attr="epoch", metric="valid_heldout_iou", mode="max", max_t=8,
                                         grace_period=1, reduction_factor=2, brackets=1), tmp_path, "plain")
    assert plain["2d"] == [8, 1, 1, 1], plain  # the weaker mode is starved
    fair = epochs_by_mode(StratifiedASHA(["2d", "3d"], 8, 1, 2, "valid_heldout_iou", "max"), tmp_path, "fair")
    assert fair["2d"] == fair["3d"] == [8, 8, 1, 8], fair  # each mode pruned within itself only


def test_every_cell_crossed_with_every_mode():
    space = load_space("comparison")
    s = PerModeSearcher(space, "valid_heldout_iou", "max", algo="optuna", seed=0)
    configs = [s.suggest(f"t{i}") for i in range(s.total)]
    assert s.suggest("extra") == PerModeSearcher.FINISHED
    cells = {}
    for c in configs:
        cells.setdefault((c["grid_size"], c["max_frames"], c["seed"]), []).append(c["gaussian_mode"])
        lr = space.search["lr"]
        assert lr.low <= c["lr"] <= lr.high and 0 <= c["ssim_lambda"] <= 0.2
    assert len(cells) == 9 * 2 and all(sorted(m) == ["2d", "3d"] for m in cells.values())


def test_keys_fixed_for_a_mode_are_in_its_trials_only():
    """The geometry space trains 2d with 2DGS's terms: every explore suggestion for 2d carries them, none for 3d."""
    space = load_space("geometry")
    s = PerModeSearcher(space, "valid_heldout_iou", "max", algo="random", seed=0)
    configs = [s.suggest(f"t{i}") for i in range(s.total)]
    for c in configs:
        want = {"dist_lambda": 0.32, "normal_lambda": 0.8} if c["gaussian_mode"] == "2d" else {}
        assert {k: c[k] for k in ("dist_lambda", "normal_lambda") if k in c} == want, c
    assert space.fixed_keys() == ("dist_lambda", "normal_lambda") and load_space("comparison").fixed_keys() == ()


def test_a_term_is_searchable_where_every_mode_can_have_it(tmp_path):
    """2DGS's weights are config keys like any other: a space of 2d alone may search them (one of both modes may
    not: the bad-input case searched_term_the_mode_cannot_have)."""
    path = _space_file(tmp_path, modes=["2d"], search={"dist_lambda": {"type": "loguniform", "low": 0.1, "high": 10},
                                                      "normal_lambda": {"type": "uniform", "low": 0.0, "high": 1.0}})
    space = load_space(str(path))
    s = PerModeSearcher(space, "valid_heldout_iou", "max", algo="random", seed=0)
    c = s.suggest("t0")
    assert c["gaussian_mode"] == "2d" and 0.1 <= c["dist_lambda"] <= 10 and 0 <= c["normal_lambda"] <= 1


@pytest.fixture(scope="module")
def invalid_dataset(small_dataset, tmp_path_factory):
    """A copy of the small dataset whose centre track has a NaN: it fails validation."""

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
    "search_range_outside_config_limits": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]}, search={"lr": {"type": "loguniform", "low": 500, "high": 1000}}))],
        "search.lr.low 500: key 'lr': Input should be less than or equal to 1"),
    "confirm_cell_not_in_grid": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]}, confirm={"cell": {"grid_size": 32, "max_frames": 12}}))],
        "confirm.cell: grid_size 32 is not in the grid ([16])"),
    "confirm_select_on_test": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]},
        confirm={"cell": {"grid_size": 16, "max_frames": 12}, "select": "test_heldout_iou"}))],
        "hyperparameters are chosen on validation metrics (valid_*) only"),
    "space_not_json": (lambda t, d: ["--space", str(_space_file(t)).replace("space.json", "nope.json")],
                       "no such search-space file"),
    "config_key_does_not_exist": (lambda t, d: ["--space", str(_space_file(t, base_config={"gridsize": 32}))],
                                  "gridsize"),
    "config_bad_value": (lambda t, d: ["--space", str(_space_file(t, base_config={"grid_size": 2}))],
                         "key 'grid_size'"),
    "grid_key_does_not_exist": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12], "frame_skip": [1]}))], "'frame_skip' is not a training config key"),
    "holdout_covers_every_view": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]}, base_config={"holdout_views": [0, 1, 2, 3, 4, 5]}))],
        "array 'holdout_views': every view is held out; at least one must be observed"),
    "no_heldout_view": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]}, base_config={"holdout_views": []}))],
        "no held-out view (base_config.holdout_views is empty)"),
    "missing_dataset": (lambda t, d: ["--space", "smoke", "--dataset", str(t / "none.zarr")], "none.zarr: no such dataset"),
    "invalid_dataset": (lambda t, d: ["--space", "smoke", "--dataset", str(d)], "array 'centre': non-finite value at frame 5"),
    "resume_without_study": (lambda t, d: ["--space", "smoke", "--resume"], "no study to resume"),
    "cluster_unreachable": (lambda t, d: ["--space", "smoke", "--address", "127.0.0.1:9"],
                            "--address 127.0.0.1:9: no Ray cluster answers there"),
    "unknown_mode": (lambda t, d: ["--space", "smoke", "--modes", "4d"], "--modes: unknown mode '4d'"),
    "grid_cell_bad_value": (lambda t, d: ["--space", str(_space_file(t, grid={"grid_size": [16, 4], "max_frames": [12]}))],
                            'grid cell {"grid_size": 4, "max_frames": 12}: key \'grid_size\''),
    "max_epochs_negative": (lambda t, d: ["--space", "comparison", "--max-epochs", "-3"],
                            "--max-epochs -3: must be at least 1"),
    "max_epochs_zero": (lambda t, d: ["--space", "smoke", "--max-epochs", "0"], "--max-epochs 0: must be at least 1"),
    "num_samples_zero": (lambda t, d: ["--space", "smoke", "--num-samples", "0"],
                         "--num-samples 0: must be at least 1"),
    "max_concurrent_zero": (lambda t, d: ["--space", "smoke", "--max-concurrent", "0"],
                            "--max-concurrent 0: must be at least 1"),
    "gpu_mem_zero": (lambda t, d: ["--space", "smoke", "--gpu-mem-mb", "0"], "--gpu-mem-mb 0.0: must be above 0"),
    "mode_config_term_the_mode_cannot_have": (lambda t, d: ["--space", str(_space_file(
        t, grid={"grid_size": [16], "max_frames": [12]}, mode_config={"3d": {"normal_lambda": 0.1}}))],
        "normal_lambda 0.1 needs surfel normals (2DGS's normal consistency), which mode '3d' has not"),
    "searched_term_the_mode_cannot_have": (lambda t, d: ["--space", str(_space_file(
        t, search={"dist_lambda": {"type": "uniform", "low": 0.1, "high": 1.0}}))],
        "search.dist_lambda.low 0.1: dist_lambda 0.1 needs ray-primitive intersection depths"),
    "mode_config_mode_not_compared": (lambda t, d: ["--space", str(_space_file(
        t, mode_config={"2d_screen": {"max_n": 100}}))], "mode_config: mode '2d_screen' is not among the space's modes"),
    "mode_config_key_varied": (lambda t, d: ["--space", str(_space_file(
        t, search={"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}, mode_config={"2d": {"lr": 1e-3}}))],
        "mode_config.2d: lr varies between trials"),
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


def test_deciding_on_geometry_without_true_geometry_is_refused(tmp_path, capsys, small_dataset):
    """A space whose confirm stage decides on depth error, on a store without true depth and normals (here a
    format-1 copy; an imported recording is the same): one line naming the store and the metric, nothing written.
    On the store with them the same space passes the checks."""
    from study.runner.preflight import check_study
    from study.runner.run import parse_args

    old = format_1_copy(small_dataset, tmp_path / "old.zarr")
    space = _space_file(tmp_path, grid={"grid_size": [16], "max_frames": [12]},
                        confirm={"cell": {"grid_size": 16, "max_frames": 12},
                                 "quality": ["test_heldout_iou", "test_heldout_depth_err"]})
    storage = tmp_path / "studies"
    argv = ["--space", str(space), "--storage", str(storage)]
    assert main(argv + ["--dataset", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(old) in err and "has no gt/depth" in err, err
    assert "confirm.quality decides on test_heldout_depth_err" in err and not storage.exists()
    assert check_study(parse_args(argv + ["--dataset", str(small_dataset)])).space.confirm.quality[-1] == \
        "test_heldout_depth_err"


def test_budget_below_grace_period_caps_it(tmp_path, capsys, small_dataset):
    """`--max-epochs 3` with a space whose ASHA grace period is 5 runs with grace 3 (Ray's ASHA would assert)."""
    from study.runner.preflight import check_study
    from study.runner.run import parse_args

    space = _space_file(tmp_path, grid={"grid_size": [16], "max_frames": [12]}, max_epochs=8,
                        scheduler={"grace_period": 5, "reduction_factor": 3})
    args = parse_args(["--space", str(space), "--storage", str(tmp_path / "s"), "--dataset", str(small_dataset),
                       "--max-epochs", "3", "--num-samples", "2"])
    plan = check_study(args)
    assert plan.pixels == 32 * 32  # 64x64 images at the default image_downsample 2: the memory model's pixels
    base, plan = plan.base, plan.space
    assert (plan.max_epochs, plan.scheduler.grace_period, plan.samples_per_cell, base["epochs"]) == (3, 3, 2, 3)
    assert "grace period capped at 3" in capsys.readouterr().out
    StratifiedASHA(plan.modes, plan.max_epochs, plan.scheduler.grace_period, plan.scheduler.reduction_factor,
                   plan.metric, plan.metric_mode)  # Ray accepts it
    assert not (tmp_path / "s").exists()


def test_max_frames_null_means_all_frames(tmp_path, small_dataset):
    """`"max_frames": [null]` in a grid (search_spaces/paper.json) trains on every frame of the recording."""
    from posesplat.config import make_config
    from posesplat.data import open_dataset
    from study.runner.preflight import check_study
    from study.runner.run import parse_args

    assert load_space("paper").grid["max_frames"] == [None]
    space = _space_file(tmp_path, grid={"grid_size": [16], "max_frames": [None, 12]})
    plan = check_study(parse_args(["--space", str(space), "--storage", str(tmp_path / "s"),
                                  "--dataset", str(small_dataset)]))
    base, plan = plan.base, plan.space
    s = PerModeSearcher(plan, "valid_heldout_iou", "max", algo="random")
    frames = sorted({s.suggest(f"t{i}")["max_frames"] or 0 for i in range(s.total)})
    assert frames == [0, 12]
    cfg = make_config({**base, "grid_size": 16, "max_frames": None})
    split = open_dataset(str(small_dataset)).frame_split(cfg.max_frames, cfg.frame_jump, cfg.split)
    assert sum(len(x) for x in split.values()) == 24  # all of the small dataset's frames


def test_unwritable_storage_is_one_line(tmp_path, capsys, small_dataset):
    (tmp_path / "a_file").write_text("x")
    storage = tmp_path / "a_file" / "studies"
    assert main(["--space", "smoke", "--dataset", str(small_dataset), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {storage}: storage is not writable ({tmp_path / 'a_file'} is a file, not a directory)"


@pytest.mark.parametrize("change, expected", [
    (["--space", "comparison"], "holds a study of space 'smoke' with other settings (name \"smoke\" -> \"comparison\";"),
    (["--space", "smoke", "--seed", "1", "--max-epochs", "2", "--num-samples", "3"],
     "with other settings (samples_per_cell 2 -> 3; max_epochs 3 -> 2); use --name"),
    (["--space", "smoke", "--seed", "1", "--modes", "2d_screen"],
     'with other settings (modes ["2d", "3d"] -> ["2d", "3d", "2d_screen"]); use --name'),
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


def test_lock_of_a_killed_driver_is_not_stale(tmp_path):
    """A driver holding the lock blocks another; once it is killed with SIGKILL (no cleanup) the lock is free."""
    import os
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from study.base.storage import StudyLock; "
                               "StudyLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(600)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyError, match="another driver is running this study"):
            StudyLock(tmp_path).__enter__()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert (tmp_path / ".lock").exists()  # the file stays behind; the kernel dropped the flock
        with StudyLock(tmp_path):
            assert (tmp_path / ".lock").read_text() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait()


def test_sink_drops_what_restored_ray_state_will_redo(tmp_path):
    """After a crash Ray's snapshot can lag the parquet: parts of unknown trials and of later epochs go."""
    from study.runner.sink import ParquetSink
    from study.base.storage import Store

    store = Store(tmp_path)
    for tid, epochs in (("a", 3), ("b", 2)):
        for e in range(1, epochs + 1):
            store.write_table([{"trial_id": tid, "epoch": e}], "metrics", f"part-{tid}-{e:04d}.parquet")
        (tmp_path / "tensorboard" / "explore" / "3d" / "grid48_frames30" / f"lr0.001-{tid}").mkdir(parents=True)
    store.write_table([{"trial_id": "a", "status": "completed", "last_epoch": 3, "stopped_at_epoch": None},
                       {"trial_id": "b", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}],
                      "trials.parquet")
    (tmp_path / "tensorboard" / "c0ffee00").mkdir()  # a trial of a study from before runs were named
    (tmp_path / "tensorboard" / "notes.txt").write_text("a file is not a run")
    sink = ParquetSink(tmp_path, "s", {}, 3)
    sink.reconcile({"a": 2})  # Ray restored trial a at epoch 2 and never saw trial b (nor c0ffee00)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["explore", "notes.txt"]
    assert sorted(p.stem for p in (tmp_path / "metrics").iterdir()) == ["part-a-0001", "part-a-0002"]
    assert pq.read_table(tmp_path / "trials.parquet").to_pylist() == [
        {"trial_id": "a", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}]
    assert [p.name for p in (tmp_path / "tensorboard" / "explore" / "3d" / "grid48_frames30").iterdir()] == ["lr0.001-a"]
    sink.reconcile({})  # a fresh start into a directory Ray could not restore: nothing of the old run is kept
    assert not any((tmp_path / "metrics").iterdir()) and not (tmp_path / "trials.parquet").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--space", "--name", "--storage", "--dataset", "--num-samples", "--max-epochs", "--gpus-per-trial",
                "--cpus-per-trial", "--max-concurrent", "--search", "--seed", "--modes", "--cpu", "--max-failures",
                "--address", "--gpu-mem-mb", "--resume", "--no-report", "--repair"):
        assert f"\n  {opt} " in out or f"\n  {opt}\n" in out, opt
    assert "default: None" not in out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_serves_the_runs_and_a_browser_shows_them(smoke_study, tmp_path):
    """TensorBoard's own server (its HTTP API on 127.0.0.1) lists the runs by name, with the tags' descriptions; a
    headless Chromium, where installed, renders the Time Series page with the run names on it (screenshot kept)."""
    import json as json_
    import shutil
    import subprocess
    import time
    import urllib.request

    from study.runner.board import runs
    from study.base.storage import Store

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(smoke_study / "tensorboard"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        want = {"/".join(parts[1:]) for parts in runs(Store(smoke_study)).values()}
        assert len(want) == len(pq.read_table(smoke_study / "trials.parquet")) + len(pq.read_table(
            smoke_study / "confirm" / "trials.parquet")) and all(r.startswith(("explore/", "confirm/")) for r in want)
        got, deadline = set(), time.time() + 90
        while got != want and time.time() < deadline:
            time.sleep(1)
            try:
                got = set(json_.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5)))
            except OSError:
                continue
        assert got == want
        tags = json_.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5))
        info = next(iter(tags.values()))["quality/valid_heldout_iou"]
        assert info["displayName"] == "valid_heldout_iou" and "held-out views" in info["description"]
        if CHROMIUM is None:
            pytest.skip("no headless Chromium on this machine (the server checks above ran)")
        url = f"http://127.0.0.1:{port}/#timeseries"
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                 "--virtual-time-budget=30000"]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        shown = {r for r in want if r in dom}
        assert shown == want, sorted(want - shown)
        shot = tmp_path / "tensorboard.png"
        subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        assert shot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dataframe_readers_read_the_study(smoke_study):
    """duckdb and polars (and pandas) read the trials table and the metrics dataset as they are: no column of parquet
    type null, counts as integers, trials.parquet in its documented order with the selected epoch, strict JSON."""
    import duckdb
    import polars as pl

    trials = pq.read_table(smoke_study / "trials.parquet")
    assert not [f.name for f in trials.schema if pa.types.is_null(f.type)]
    assert trials.column_names[:4] == ["study", "trial_id", "status", "gaussian_mode"]
    for name in ("last_epoch", "selected_epoch", "grid_size", "max_frames"):
        assert pa.types.is_int64(trials.schema.field(name).type), name
    for name in ("holdout_views", "volume_idx", "error"):
        assert pa.types.is_string(trials.schema.field(name).type), name
    parts = pads.dataset(smoke_study / "metrics", format="parquet")
    assert not [f.name for f in parts.schema if pa.types.is_null(f.type)]

    con = duckdb.connect()
    q = con.execute(f"select trial_id, selected_epoch, selected_valid_heldout_iou from "
                    f"read_parquet('{smoke_study / 'trials.parquet'}') order by trial_id").fetchall()
    best = con.execute(  # the selection rule in SQL: highest IoU, then PSNR, then the earlier epoch
        f"select trial_id, epoch, valid_heldout_iou from (select *, row_number() over (partition by trial_id order by "
        f"valid_heldout_iou desc, valid_heldout_psnr desc, epoch asc) as r from "
        f"read_parquet('{smoke_study / 'metrics' / '*.parquet'}') where not isnan(valid_heldout_iou)) where r = 1 "
        f"order by trial_id").fetchall()
    assert [(t, e) for t, e, _ in q] == [(t, e) for t, e, _ in best]  # the selected epoch is the best validation's
    assert [v for _, _, v in q] == pytest.approx([v for _, _, v in best])
    frame = pl.read_parquet(smoke_study / "trials.parquet")
    assert frame.height == trials.num_rows and frame.schema["selected_epoch"] == pl.Int64
    metrics = pl.scan_parquet(smoke_study / "metrics" / "*.parquet").select("trial_id", "epoch").collect()
    assert metrics.height == sum(trials.column("last_epoch").to_pylist())
    pl.read_json(smoke_study / "study.json")  # strict JSON: polars refuses NaN
    pl.read_json(smoke_study / "confirm" / "plan.json")
