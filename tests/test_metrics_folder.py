"""Issue 46: a stage's metrics/ folder compacted to a file per ended trial. Every state a kill can leave (the trial
file being written, written beside all or some of its parts, or alone) loads to the rows of the parts; a study
written before compaction (parts only) loads to the same tables; the sink compacts ended trials, undoes it for a
trial Ray runs again, and finishes a killed compaction on resume. Real parquet files, read back."""

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from made_studies import add_confirm, make_study
from study.analysis.load import load_studies, load_study
from study.base import metrics_folder as folder
from study.base.storage import Store

ROWS = {"a": 3, "b": 2}  # trial -> epochs; b still runs


def write_parts(root: Path) -> Store:
    """A stage with parts of two trials, each epoch with the metrics a sink writes (evaluated epochs with lists)."""
    store = Store(root)
    for tid, epochs in ROWS.items():
        for e in range(1, epochs + 1):
            row = {"study": "s", "trial_id": tid, "gaussian_mode": "2d", "epoch": e, "valid_heldout_iou": 0.1 * e,
                   "seed": 1, "lr": 0.01}
            if e % 2 == 0:  # an evaluated epoch: a column the others lack
                row["test_heldout_iou_frames"] = [0.5, 0.6]
            store.write_table([row], "metrics", folder.part_name(tid, e))
    return store


def rows(path: Path) -> pd.DataFrame:
    """The loaded metrics, in a fixed order and column order."""
    m = load_study(path)[0]
    return m.sort_values(["trial_id", "epoch"]).reset_index(drop=True)[sorted(m.columns)]


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "metrics").iterdir())


def test_every_state_a_killed_compaction_leaves_reads_each_row_once(tmp_path):
    ref_root = tmp_path / "ref"
    write_parts(ref_root)
    expected = rows(ref_root)
    assert len(expected) == 5

    done = tmp_path / "done"
    shutil.copytree(ref_root, done)
    assert folder.compact(Store(done), "a")
    assert names(done) == ["part-b-0001.parquet", "part-b-0002.parquet", "trial-a.parquet"]
    pd.testing.assert_frame_equal(rows(done), expected)

    parts_a = sorted((ref_root / "metrics").glob("part-a-*"))
    states = {
        "writing": lambda d: (d / "metrics" / ".trial-a.parquet.tmp-0000").write_bytes(b"PAR1 half"),
        "renamed": lambda d: [shutil.copy(p, d / "metrics") for p in parts_a],
        "deleting": lambda d: shutil.copy(parts_a[-1], d / "metrics"),
    }
    for state, make in states.items():
        d = tmp_path / state
        shutil.copytree(ref_root if state == "writing" else done, d)
        make(d)
        pd.testing.assert_frame_equal(rows(d), expected, obj=state)
        folder.compact(Store(d), "a")  # the next compaction finishes (or does) it
        assert [n for n in names(d) if not n.startswith(".")] == names(done), state
        pd.testing.assert_frame_equal(rows(d), expected, obj=state)


def test_compacted_file_holds_the_parts_and_expands_back(tmp_path):
    store = write_parts(tmp_path)
    before = folder.read(store, folder.current(store.list("metrics"))).to_pandas()
    folder.compact(store, "a")
    assert pq.read_table(tmp_path / "metrics" / "trial-a.parquet").column("epoch").to_pylist() == [1, 2, 3]
    folder.expand(store, "a", upto=2)  # Ray redoes epoch 3
    assert names(tmp_path) == ["part-a-0001.parquet", "part-a-0002.parquet", "part-b-0001.parquet",
                               "part-b-0002.parquet"]
    after = folder.read(store, folder.current(store.list("metrics"))).to_pandas()
    key = ["trial_id", "epoch"]
    want = before[before.epoch <= 2].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(after.sort_values(key).reset_index(drop=True)[list(want.columns)], want)


def test_a_study_written_before_compaction_loads_to_the_same_tables(tmp_path):
    old = make_study(tmp_path, "s", frames=5, epochs=4)
    add_confirm(old, effect=0.0)
    new = tmp_path / "new" / "s"
    shutil.copytree(old, new)
    for stage in (new, new / "confirm"):
        store = Store(stage)
        for tid in folder.parts_by_trial(store.list("metrics")):
            folder.compact(store, tid)
        assert all(n.startswith("trial-") for n in names(stage))
    assert len(names(new)) == len(pq.read_table(new / "trials.parquet"))
    a, b = (load_studies([s, s / "confirm"]) for s in (old, new))
    for x, y in ((a.metrics, b.metrics), (a.trials, b.trials)):
        key = ["study", "trial_id", "epoch"] if "epoch" in x else ["study", "trial_id"]
        pd.testing.assert_frame_equal(x.sort_values(key).reset_index(drop=True),
                                      y.sort_values(key).reset_index(drop=True)[list(x.columns)])


def test_sink_compacts_an_ended_trial_and_finishes_a_killed_compaction(tmp_path):
    from study.runner.sink import ParquetSink

    store = write_parts(tmp_path)
    store.write_table([{"trial_id": "a", "status": "completed", "last_epoch": 3, "stopped_at_epoch": None},
                       {"trial_id": "b", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}],
                      "trials.parquet")
    sink = ParquetSink(tmp_path, "s", {}, 3)
    sink.reconcile({"a": 3, "b": 2})  # a resume: a ended before the kill, its parts not yet compacted
    assert names(tmp_path) == ["part-b-0001.parquet", "part-b-0002.parquet", "trial-a.parquet"]
    assert sink.selection("a")["selected_epoch"] == 3  # read from the trial file
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 damaged")
    assert ParquetSink(tmp_path, "s", {}, 3).evidence() == {"a", "b"}  # trial files count as records too
    store.write_table([{"trial_id": "a", "status": "completed", "last_epoch": 3, "stopped_at_epoch": None},
                       {"trial_id": "b", "status": "running", "last_epoch": 2, "stopped_at_epoch": None}],
                      "trials.parquet")
    sink = ParquetSink(tmp_path, "s", {}, 3)

    sink.reconcile({"a": 1, "b": 2})  # Ray's state lags: it redoes a's epochs 2 and 3
    assert names(tmp_path) == ["part-a-0001.parquet", "part-b-0001.parquet", "part-b-0002.parquet"]
    assert pq.read_table(tmp_path / "trials.parquet").to_pylist()[0]["status"] == "running"


@pytest.mark.parametrize("known", [{"b": 2}, {}])
def test_sink_drops_the_trial_file_of_a_trial_ray_does_not_know(tmp_path, known):
    from study.runner.sink import ParquetSink

    store = write_parts(tmp_path)
    folder.compact(store, "a")
    ParquetSink(tmp_path, "s", {}, 3).reconcile(known)
    assert names(tmp_path) == [folder.part_name("b", e) for e in (1, 2) if known]


def summary_by_loop(metrics: pd.DataFrame, thresholds: dict, last: bool, cell: list[str]) -> pd.DataFrame:
    """trial_summary as it was written before issue 46: a loop over trials (the definition the vectorised one keeps)."""
    import numpy as np

    from study.analysis.load import COST
    from study.base.rows import SELECT
    from posesplat import metrics as schema

    rows = []
    for _, t in metrics.sort_values("epoch").groupby(["study", "trial_id"], sort=False):
        ev = t[np.isfinite(t["valid_heldout_iou"])]
        if ev.empty:
            continue
        best = ev.iloc[-1] if last else ev.sort_values([*SELECT, "epoch"], ascending=[False, False, True],
                                                       na_position="last").iloc[0]
        row = best.to_dict()
        for k, _, _ in COST:
            m = schema.BY_NAME.get(k)
            if m is not None and m.over_epochs != "selected" and k in t:
                v = (ev if m.evaluated else t)[k]
                row[k] = float(v.median() if m.over_epochs == "median" else v.max())
        reached = t[t["valid_heldout_iou"] >= thresholds[tuple(int(t[k].iloc[0]) for k in cell)]]
        row.update(selected_epoch=int(best["epoch"]), epochs_run=int(t["epoch"].max()),
                   checkpoint_mb=float(t["checkpoint_bytes"].where(t["checkpoint_bytes"] > 0).max()) / 1e6,
                   mem_kind=str(t["mem_kind"].iloc[-1]), device=str(t["device"].iloc[-1]),
                   iou_threshold=thresholds[tuple(int(best[k]) for k in cell)],
                   epochs_to_threshold=float(reached["epoch"].min()) if len(reached) else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("last", [False, True])
def test_trial_summary_vectorised_equals_the_loop_over_trials(tmp_path, last):
    """Issue 46: the per-trial summary computed for all trials at once equals the loop over trials it replaces (same
    rows in the same order, same columns, values and types), with ties, a trial that never evaluated, NaN costs and
    trials stopped at different epochs."""
    import numpy as np

    from study.analysis.load import cell_thresholds, trial_summary

    study = make_study(tmp_path, "s", frames=4, epochs=6, noise=0.05, rng_seed=4)
    m = load_studies([study]).metrics
    m = m[~((m["trial_id"] == m["trial_id"].iloc[0]) & (m["epoch"] > 3))]  # a trial stopped at epoch 3
    m.loc[m["trial_id"] == m["trial_id"].iloc[-1], "valid_heldout_iou"] = np.nan  # a trial that never evaluated
    tie = m.index[(m["trial_id"] == m["trial_id"].iloc[5])]
    m.loc[tie, ["valid_heldout_iou", "valid_heldout_psnr"]] = 0.5  # every epoch tied: the earliest is selected
    m.loc[m.index[::7], "epoch_time_s"] = np.nan
    cell = ["grid_size", "max_frames"]
    got = trial_summary(m, last=last, cell=cell, modes=("2d", "3d"))
    want = summary_by_loop(m, cell_thresholds(got, None, cell, ("2d", "3d")), last, cell)
    assert len(got) == m["trial_id"].nunique() - 1
    pd.testing.assert_frame_equal(got, want[list(got.columns)])
    assert list(got.columns) == list(want.columns)


def test_parts_that_cannot_be_one_table_stay_parts_with_a_note(tmp_path, capsys):
    """A trial whose parts disagree on a column's type is not compacted: one note, the parts kept, no exception in
    the driver's callback; the ended trial beside it is compacted."""
    from study.runner.sink import ParquetSink

    store = write_parts(tmp_path)
    store.write_table([{"study": "s", "trial_id": "b", "epoch": 2, "valid_heldout_iou": "not a number"}],
                      "metrics", folder.part_name("b", 2))
    store.write_table([{"trial_id": t, "status": "completed", "last_epoch": n, "stopped_at_epoch": None}
                       for t, n in ROWS.items()], "trials.parquet")
    ParquetSink(tmp_path, "s", {}, 3).reconcile(dict(ROWS))
    out = capsys.readouterr().out
    assert "the metrics parts of trial b are kept as they are, not compacted" in out and len(out.splitlines()) == 1
    assert names(tmp_path) == ["part-b-0001.parquet", "part-b-0002.parquet", "trial-a.parquet"]
