"""study.analysis.analyze on real parquet studies with a planted truth: the right winner and recommendation, intervals
that cover the planted difference, running/interrupted/one-sided/several studies, bad input refused with one line,
renders from real checkpoints, and the HTML report rendered by headless Chromium with its images decoded."""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from made_studies import CELLS, add_confirm, make_study
from shared import CHROMIUM, format_1_copy, tiny_config
from study.analysis.analyze import load_study, main

def run(args, capsys):
    rc = main([str(a) for a in args] + ["--no-renders"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def table(report: Path) -> pd.DataFrame:
    return pd.read_csv(report / "decision.csv").set_index("key")


def recommendation(report: Path) -> str:
    return re.search(r"\*\*Recommendation: (\S+)\*\*", (report / "decision.md").read_text()).group(1)


def explore_table(report: Path, name: str = "Per cell") -> pd.DataFrame:
    t = pd.read_csv(report / "explore.csv")
    return t[t.table == name].set_index("group")


def interval(text: str) -> tuple[float, float, float]:
    """'-5.0% [-5.4%, -4.6%]' -> (-0.05, -0.054, -0.046)."""
    m = re.match(r"([-+\d.]+)% \[([-+\d.]+)%, ([-+\d.]+)%\]", text)
    return tuple(float(v) / 100 for v in m.groups())


# ----------------------------------------------------------------------------------------------- explore and confirm


@pytest.mark.parametrize("frames", [None, 6], ids=["trial-means", "per-frame"])
def test_explore_only_study_decides_nothing(tmp_path, capsys, frames):
    """Without a confirm stage there is no decision: 'inconclusive' with the reason, decision.json written, exit 0;
    the explore tables are there, marked exploratory, and their intervals cover the planted -5%."""
    study = make_study(tmp_path, effect=-0.05, frames=frames)
    rc, out, err = run([study], capsys)
    assert rc == 0, err
    report = study / "report"
    assert recommendation(report) == "inconclusive" and "no confirm stage" in out
    assert json.loads((report / "decision.json").read_text())["recommendation"] == "inconclusive"
    md = (report / "decision.md").read_text()
    assert "## Explore stage (exploratory)" in md and "would miss by chance alone" in md
    for group, row in explore_table(report).iterrows():
        mean, lo, hi = interval(row["IoU 2d vs 3d"])
        assert lo <= -0.05 <= hi, group
    assert explore_table(report).loc["all cells", "pairs"] == 24
    assert not (report / "decision.csv").exists()  # no confirm table without a confirm stage


@pytest.mark.parametrize("effect, cost, winner", [(-0.05, 0.0, "3d"), (0.0, -0.3, "2d"), (0.0, 0.0, "either")])
def test_confirm_stage_decides(tmp_path, capsys, effect, cost, winner):
    """The explore stage says one thing (2d 5% better in every cell), the confirm stage another: the decision is the
    confirm stage's."""
    study = make_study(tmp_path, effect=+0.05)
    add_confirm(study, effect, cost, seeds=8, frames=40)
    rc, out, err = run([study], capsys)
    assert rc == 0, err
    assert recommendation(study / "report") == winner and f"recommendation: {winner}" in out
    t = table(study / "report")
    lo, hi = t.loc["test_heldout_iou", "2d vs 3d (95%)"], None
    mean, lo, hi = interval(lo)
    assert lo <= effect <= hi
    md = (study / "report" / "decision.md").read_text()
    assert "8 pairs of 8 planned seeds" in md and "## Explore stage (exploratory)" in md


def test_sink_writes_per_frame_lists_that_analysis_reads(tmp_path):
    """The study's parquet sink stores the per-frame lists of evaluated epochs as list<double> (frame indices as
    list<int64>) and empty lists for the others, with the same type in every part, so that any reader of the
    metrics/ dataset (pandas, pyarrow.dataset) gets one schema; trials.parquet keeps scalars only."""
    from types import SimpleNamespace

    from study.analysis.load import load_studies, trial_summary
    from study.runner.sink import ParquetSink

    sink = ParquetSink(tmp_path / "s", "s", {"gaussian_mode": "3d"}, 3)
    trial = SimpleNamespace(trial_id="t1", config={"seed": 0, "grid_size": 32}, checkpoint=None)
    sink.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        ev = epoch == 2
        sink.on_trial_result(0, [], trial, {
            "epoch": epoch, "valid_heldout_iou": 0.7 if ev else float("nan"), "valid_heldout_psnr": 25.0,
            "test_heldout_iou": 0.75 if ev else float("nan"), "test_heldout_iou_frames": [0.7, 0.8] if ev else [],
            "test_heldout_psnr_frames": [24.0, 26.0] if ev else [],
            "test_heldout_ssim_frames": [0.9, 0.9] if ev else [],
            "test_frames": [8, 11] if ev else [], "node_id": "n", "config": {"seed": 0}})
    schemas = {pq.read_schema(p) for p in sorted((tmp_path / "s" / "metrics").glob("*.parquet"))}
    assert len({str(s.field("test_heldout_iou_frames").type) for s in schemas}) == 1
    schema = schemas.pop()
    assert schema.field("test_heldout_iou_frames").type == pa.list_(pa.float64())
    assert schema.field("test_frames").type == pa.list_(pa.int64())
    df = pd.read_parquet(tmp_path / "s" / "metrics").sort_values("epoch")
    assert list(df["test_frames"].iloc[1]) == [8, 11] and len(df["test_heldout_iou_frames"].iloc[0]) == 0
    assert not {"test_frames", "test_heldout_iou_frames"} & set(pq.read_schema(tmp_path / "s" / "trials.parquet").names)
    per_trial = trial_summary(load_studies([tmp_path / "s"]).metrics)
    assert per_trial["selected_epoch"].tolist() == [2]
    assert list(per_trial["test_heldout_psnr_frames"].iloc[0]) == [24.0, 26.0]


def test_interval_reaching_below_the_margin_is_inconclusive(tmp_path, capsys):
    study = make_study(tmp_path, effect=0.0, seeds=range(3))
    add_confirm(study, -0.012, -0.3, seeds=4, frames=10)
    rc, out, _ = run([study], capsys)
    assert rc == 0
    assert recommendation(study / "report") == "inconclusive"
    md = (study / "report" / "decision.md").read_text()
    assert "reaches below the -2% margin" in md and "seeds (pairs) would resolve it" in md
    on_margin = make_study(tmp_path, "on", effect=0.0, seeds=range(3))
    add_confirm(on_margin, -0.02, -0.3, seeds=4, frames=10)
    run([on_margin], capsys)
    md = (on_margin / "report" / "decision.md").read_text()
    assert "inconclusive" in md and "sits on the margin: no feasible number of seeds resolves it" in md


def test_two_pairs_never_decide(tmp_path, capsys):
    study = make_study(tmp_path, seeds=range(3))
    add_confirm(study, -0.10, seeds=2)
    run([study], capsys)
    assert recommendation(study / "report") == "inconclusive"
    assert "only 2 complete pair(s)" in (study / "report" / "decision.md").read_text()


def test_explore_says_where_the_answer_may_change(tmp_path, capsys):
    study = make_study(tmp_path, effect_by_grid={32: +0.06, 48: -0.06})
    rc, _, _ = run([study], capsys)
    assert rc == 0
    by_grid = explore_table(study / "report", "Per grid_size")
    assert interval(by_grid.loc["grid_size 32", "IoU 2d vs 3d"])[0] == pytest.approx(0.06, abs=0.01)
    assert interval(by_grid.loc["grid_size 48", "IoU 2d vs 3d"])[0] == pytest.approx(-0.06, abs=0.01)
    assert by_grid.loc["grid_size 32", "pairs"] == 12  # 2 max_frames x 6 seeds
    md = (study / "report" / "decision.md").read_text()
    assert "suggests the answer may depend on the cell" in md
    flat = make_study(tmp_path, "flat", effect=-0.05)
    run([flat], capsys)
    assert "depend on the cell" not in (flat / "report" / "decision.md").read_text()


def test_every_grid_key_of_the_space_is_a_cell_key(tmp_path, capsys):
    """A third grid key (num_unets) whose values differ in IoU level and in the 2d-vs-3d difference gets its own rows,
    its own table and its own convergence threshold, instead of being pooled into (grid_size, max_frames)."""
    study = make_study(tmp_path, cells=CELLS[:2], extra=("num_unets", {1: (1.0, +0.06), 2: (0.5, -0.06)}))
    rc, _, err = run([study], capsys)
    assert rc == 0, err
    cells = explore_table(study / "report")
    for f in (30, 100):
        for units, effect in ((1, 0.06), (2, -0.06)):
            row = cells.loc[f"grid_size 32, max_frames {f}, num_unets {units}"]
            assert interval(row["IoU 2d vs 3d"])[0] == pytest.approx(effect, abs=0.01) and row["pairs"] == 6
    by_units = explore_table(study / "report", "Per num_unets")
    assert interval(by_units.loc["num_unets 2", "IoU 2d vs 3d"])[0] == pytest.approx(-0.06, abs=0.01)
    trials = pd.read_csv(study / "report" / "trials.csv")
    assert "num_unets" in trials
    threshold = trials.groupby("num_unets")["iou_threshold"].mean()
    assert threshold[2] == pytest.approx(0.5 * threshold[1], rel=0.1)  # each value's own IoU level
    assert "num_unets 1" in (study / "report" / "decision.md").read_text()


def test_the_space_names_the_modes_compared(tmp_path, capsys):
    """A study of 2d_screen vs 3d (no 2d trial) compares 2d_screen with 3d: in the tables and in the convergence
    threshold (90% of the lower of the two modes' medians: here 2d_screen's)."""
    study = make_study(tmp_path, effect=-0.2, modes=("2d_screen", "3d"), seeds=range(4))
    rc, out, err = run([study], capsys)
    assert rc == 0, err
    cells = explore_table(study / "report")
    assert interval(cells.loc["all cells", "IoU 2d_screen vs 3d"])[0] == pytest.approx(-0.2, abs=0.01)
    assert cells.loc["all cells", "trials"] == "2d_screen 16 / 3d 16"
    trials = pd.read_csv(study / "report" / "trials.csv")
    for _, c in trials.groupby(["grid_size", "max_frames"]):
        screen = c[c.gaussian_mode == "2d_screen"]["valid_heldout_iou"].median()
        assert c["iou_threshold"].iloc[0] == pytest.approx(0.9 * screen)
    assert "mode 2d has no trial" not in (study / "report" / "decision.md").read_text()


def test_inputs_with_different_grid_keys_are_refused(tmp_path, capsys):
    """Pooling studies whose grids vary different keys would hide a key's effect: refused in one line naming them;
    so is a grid key the metrics do not record."""
    a = make_study(tmp_path, "a", cells=CELLS[:1], seeds=range(3))
    b = make_study(tmp_path, "b", cells=CELLS[:1], seeds=range(3), extra=("num_unets", {1: (1.0, None)}))
    rc, _, err = run([a, b, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "a (grid_size, max_frames)" in err and "b (grid_size, max_frames, num_unets)" in err
    assert not (tmp_path / "r").exists()
    info = json.loads((a / "study.json").read_text())
    info["space"]["grid"]["base_filters"] = [4, 8]
    (a / "study.json").write_text(json.dumps(info))
    rc, _, err = run([a], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "grid key 'base_filters'" in err and "no such column" in err


# ----------------------------------------------------------------------------------------------- study states


def test_running_study_uses_what_is_there(tmp_path, capsys):
    study = make_study(tmp_path, effect=0.05, status="running", cells=CELLS[:2])
    (study / "study.json").write_text(json.dumps({"space": {"modes": ["2d", "3d"], "samples_per_cell": 6,
                                                            "grid": {"grid_size": [32, 48], "max_frames": [30, 100]}}}))
    rc, _, _ = run([study], capsys)
    assert rc == 0
    md = (study / "report" / "decision.md").read_text()
    assert "still running or interrupted" in md
    assert "24 of 48 planned trials started" in md


def test_interrupted_study_without_trials_table(tmp_path, capsys):
    study = make_study(tmp_path, effect=0.05)
    (study / "trials.parquet").unlink()
    (study / "study.json").unlink()
    for p in sorted((study / "metrics").glob("*-0005.parquet"))[:10]:  # some trials stopped after epoch 4
        p.unlink()
    rc, _, _ = run([study], capsys)
    assert rc == 0
    assert "No trials.parquet" in (study / "report" / "decision.md").read_text()


def test_mode_without_evaluated_trial_is_said_not_crashed(tmp_path, capsys):
    study = make_study(tmp_path, modes=("3d",))
    t = pq.read_table(study / "trials.parquet").to_pylist()
    t += [{**r, "trial_id": r["trial_id"].replace("3d", "2d"), "gaussian_mode": "2d", "status": "failed",
           "error": "NonFiniteLossError: non-finite loss at epoch 1, step 3"} for r in t]
    pq.write_table(pa.Table.from_pylist(t), study / "trials.parquet")
    rc, out, _ = run([study], capsys)
    assert rc == 0
    md = (study / "report" / "decision.md").read_text()
    assert recommendation(study / "report") == "inconclusive"
    assert "explore: mode 2d has no trial with a validation epoch" in md
    assert "24 2d trial(s) failed (NonFiniteLossError: non-finite loss at epoch 1, step 3)" in md


def test_several_studies_at_once(tmp_path, capsys):
    a = make_study(tmp_path, "a", effect=-0.05, seeds=range(0, 3), rng_seed=1)
    b = make_study(tmp_path, "b", effect=-0.05, seeds=range(3, 6), rng_seed=2)
    rc, _, err = run([a, b], capsys)
    assert rc == 2 and err.strip() == "error: several inputs: give --out DIR for the combined report"
    rc, _, err = run([a, b, "--out", tmp_path / "both"], capsys)
    assert rc == 0, err
    assert explore_table(tmp_path / "both").loc["all cells", "pairs"] == 24
    assert "from 2 study(ies) (a, b)" in (tmp_path / "both" / "decision.md").read_text()
    add_confirm(a, -0.05)
    add_confirm(b, -0.05)
    rc, _, err = run([a, b, "--out", tmp_path / "both"], capsys)
    assert rc == 2 and "several studies with a confirm stage" in err


def test_modes_from_separate_studies_pair_across_them(tmp_path, capsys):
    a = make_study(tmp_path, "only2d", modes=("2d",), rng_seed=1)
    b = make_study(tmp_path, "only3d", modes=("3d",), rng_seed=2)
    rc, _, err = run([a, b, "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    assert explore_table(tmp_path / "r").loc["all cells", "pairs"] == 24  # paired by (cell, seed) across studies


def test_a_single_parquet_file_and_a_rerun_replace_the_report(tmp_path, capsys):
    study = make_study(tmp_path, effect=0.05, seeds=range(3))
    m, _, _ = load_study(study)
    one = tmp_path / "all.parquet"
    m.to_parquet(one)
    rc, _, err = run([one], capsys)
    assert rc == 0, err
    assert recommendation(tmp_path / "report") == "inconclusive"
    (tmp_path / "report" / "stale.png").write_bytes(b"x")
    rc, _, _ = run([one], capsys)
    assert rc == 0 and not (tmp_path / "report" / "stale.png").exists()


# ----------------------------------------------------------------------------------------------- bad input


def test_a_study_written_before_the_metrics_schema_reads_under_its_names(tmp_path):
    """Parts with `peak_mem_mb` (either memory, by `mem_kind`) and `n_gaussians` are read as the schema's columns:
    the same per-trial numbers as a study written with them."""
    from study.analysis.load import load_studies, trial_summary

    new = make_study(tmp_path / "new", "s", effect=0.03)
    old = tmp_path / "old" / "s"
    shutil.copytree(new, old)
    for i, part in enumerate(sorted((old / "metrics").glob("*.parquet"))):
        t = pq.read_table(part).to_pandas()
        kind = "cuda_max_allocated" if i % 2 else "cpu_rss_delta"  # as a mixed cluster would have written
        t = t.assign(peak_mem_mb=t["cpu_peak_rss_growth_mb"], mem_kind=kind, n_gaussians=t["gaussians_per_frame"])
        pq.write_table(pa.Table.from_pandas(t.drop(columns=["cpu_peak_rss_growth_mb", "cuda_peak_allocated_mb",
                                                            "gaussians_per_frame"]), preserve_index=False), part)
    m_new, m_old = load_studies([new]).metrics, load_studies([old]).metrics
    assert "peak_mem_mb" not in m_old and "n_gaussians" not in m_old
    cuda = m_old["mem_kind"] == "cuda_max_allocated"
    assert cuda.any() and (~cuda).any()
    assert m_old.loc[cuda, "cuda_peak_allocated_mb"].notna().all() and m_old.loc[cuda, "cpu_peak_rss_growth_mb"].isna().all()
    np.testing.assert_allclose(m_old["gaussians_per_frame"], m_new["gaussians_per_frame"])
    per_new, per_old = (trial_summary(m).set_index("trial_id").sort_index() for m in (m_new, m_old))
    both = per_old[["cuda_peak_allocated_mb", "cpu_peak_rss_growth_mb"]].max(axis=1)
    np.testing.assert_allclose(both, per_new["cpu_peak_rss_growth_mb"])
    np.testing.assert_allclose(per_old["test_heldout_iou"], per_new["test_heldout_iou"])


def test_bad_input_gives_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "part-x.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    cases = {tmp_path / "nope": "no such study directory or parquet file",
             tmp_path / "empty": "holds no metrics yet",
             tmp_path / "broken": "part-x.parquet: not a readable parquet file",
             tmp_path / "foreign.parquet": "foreign.parquet: not a metrics table (no column 'trial_id'"}
    for path, msg in cases.items():
        rc, _, err = run([path, "--out", tmp_path / "r"], capsys)
        assert rc == 2
        assert len(err.strip().splitlines()) == 1 and msg in err, err
        assert not (tmp_path / "r").exists()  # nothing half-written


@pytest.mark.parametrize("content", ["{not json", '{"trials": "none"}'], ids=["not-json", "no-trials"])
def test_a_damaged_confirm_plan_is_one_line_naming_it(tmp_path, capsys, content):
    """The analysis reads the confirm plan through the runner's own reader (study.base.records.read_confirm_plan):
    one line naming the file and how to plan again, exit 2, no report."""
    study = make_study(tmp_path, seeds=range(3))
    add_confirm(study, 0.0, -0.3)
    (study / "confirm" / "plan.json").write_text(content)
    rc, _, err = run([study], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{study / 'confirm' / 'plan.json'}: damaged" in err and "--repair" in err, err
    assert not (study / "report").exists()


def test_refuses_to_replace_a_foreign_directory(tmp_path, capsys):
    study = make_study(tmp_path, seeds=range(3))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    rc, _, err = run([study, "--out", tmp_path / "mine"], capsys)
    assert rc == 2 and "is not a report directory" in err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_cli_entry_point(tmp_path):
    study = make_study(tmp_path, effect=0.05, seeds=range(3))
    add_confirm(study, 0.0, -0.3)
    r = subprocess.run([sys.executable, "-m", "study.analyze", str(study)], capture_output=True, text=True)
    assert r.returncode == 0 and "recommendation: 2d" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "study.analyze", str(study), "--margin", "0.5"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "replaces the pre-specified margin 0.02 after the fact" in (study / "report" / "decision.md").read_text()
    r = subprocess.run([sys.executable, "-m", "study.analyze", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------- renders


@pytest.fixture(scope="module")
def checkpoints(small_dataset, tmp_path_factory):
    """Two tiny real models (2d, 3d), trained for one step."""
    from posesplat.train import train

    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for mode in ("2d", "3d"):
        cfg = tiny_config(small_dataset, eval_frames=2, steps_per_epoch=1, epochs=1, gaussian_mode=mode)
        train(cfg, ckpt_path=d / f"{mode}.pt", progress=False)
        out[mode] = d / f"{mode}.pt"
    return out


def test_panel_and_turntable_render_the_checkpoints(tmp_path, checkpoints, capfd):
    """The figures themselves, small: truth | render | error per test frame, and a moving camera that sees the animal.
    Their progress, piped (as here), is one line when a stage starts and one when it ends, no carriage returns."""
    import imageio.v3 as iio

    from posesplat.trained import load_checkpoint
    from study.analysis import renders

    row = pd.Series({"trial_id": "t", "lr": 3e-3, "epochs_run": 1})
    models = {mode: (*load_checkpoint(path, device="cpu"), row) for mode, path in checkpoints.items()}
    path, caption = renders.qualitative_panel(models, tmp_path)
    panel = iio.imread(path)
    assert panel.shape[0] > 200 and panel[..., :3].std() > 10
    assert "the same test frames for every mode" in caption
    path, caption = renders.geometry_figure(models, tmp_path)
    fig = iio.imread(path)[..., :3]
    assert fig.shape[0] > 200 and fig.std() > 10 and "mm" in caption and "normals of its rendered depth" in caption
    err = capfd.readouterr().err
    assert "\r" not in err and "qualitative renders: started (2 it)" in err and "geometry renders: done in" in err, err
    cfg, model, _ = models["3d"]
    gif, caption = renders.turntable("3d", cfg, model, row, tmp_path, n_views=6, px=64)
    frames = iio.imread(gif)
    assert frames.shape[:2] == (6, 64) and "6 cameras" in caption
    assert not np.array_equal(frames[0], frames[3])  # the camera moves
    assert all(f.max() > 50 for f in frames)  # the animal is in view from every side


def test_comparison_video_and_splat_files(tmp_path, checkpoints):
    """The video: one frame per test frame, three panels (truth, 3d, 2d) of equal size, a still beside it; the
    splat files: one PLY per picked test frame and mode, in the models/ folder, said in a note."""
    import imageio.v3 as iio

    from posesplat.trained import load_checkpoint
    from study.analysis import renders

    rows = {m: pd.Series({"trial_id": f"t{m}", "lr": 3e-3, "epochs_run": 1}) for m in ("2d", "3d")}
    models = {mode: (*load_checkpoint(checkpoints[mode], device="cpu"), rows[mode]) for mode in ("2d", "3d")}
    _, frames, view = renders.test_frames(models)["3d"]
    path, caption = renders.compare_video(models, tmp_path, "test_heldout_iou")
    movie = iio.imread(path)
    assert movie.shape == (len(frames), 304, 768, 3)
    assert f"{len(frames)} consecutive test frames ({frames[0]} to {frames[-1]})" in caption and "IoU" in caption
    assert "3d: trial t3d; 2d: trial t2d" in caption  # the reference first
    ink = (movie[len(frames) // 2] < 200).any(axis=(0, 2))  # columns with anything drawn on the white figure
    runs = np.flatnonzero(np.diff(np.r_[0, ink.astype(int), 0]))
    widths = runs[1::2] - runs[::2]
    assert len(widths) == 3 and widths.min() > 200, widths  # three panels side by side
    assert iio.imread(tmp_path / "compare.png").shape == (304, 768, 3)
    notes = renders.splat_files(models, tmp_path)
    picks = renders.test_frames(models, renders.N_FRAMES)["2d"][1]
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*.ply")) == sorted(
        f"models/{m}/frame{k}.ply" for m in ("2d", "3d") for k in picks)
    assert len(notes) == 1 and "models/2d/frame{" in notes[0] and "docs/export.md" in notes[0]


def test_qualitative_panel_and_turntables_from_checkpoints(tmp_path, capsys, checkpoints):
    """The report from real checkpoints: panel, turntables, splat files and the comparison video, which plays in
    headless Chromium (about 7 s: in the default suite)."""
    import imageio.v3 as iio

    study = make_study(tmp_path, effect=0.0, seeds=range(3), cells=CELLS[:1])
    inside = {}  # the analysis reads checkpoints only inside the study
    for mode, path in checkpoints.items():
        inside[mode] = study / "confirm" / "ray" / mode / "checkpoint.pt"
        inside[mode].parent.mkdir(parents=True)
        shutil.copy(path, inside[mode])
    add_confirm(study, 0.0, checkpoints=inside)
    rc = main([str(study)])
    assert rc == 0, capsys.readouterr().err
    report = study / "report"
    panel = iio.imread(report / "qualitative.png")
    assert panel.shape[0] > 200 and panel[..., :3].std() > 10
    for mode in ("2d", "3d"):
        gif = iio.imread(report / f"turntable_{mode}.gif")
        assert gif.shape[0] == 24 and gif.shape[1] >= 256
        assert not np.array_equal(gif[0], gif[6])  # the camera moves
        assert gif[0].max() > 50  # the animal is in view
    page = (report / "report.html").read_text()
    assert page.count("data:image/gif;base64,") == 2 and "qualitative" in page
    assert "geometry" in page and page.count("<video") == 1
    movie = iio.imread(report / "compare.mp4")
    assert len(movie) >= 2 and movie.shape[1:] == (304, 768, 3)
    assert "![a frame of compare.mp4](compare.png)" in (report / "decision.md").read_text()
    assert {p.parent.name for p in (report / "models").rglob("frame*.ply")} == {"2d", "3d"}
    if CHROMIUM:  # the renders decode in a browser too: 5 plots, the panel, the geometry panel, 2 turntables
        decoded, total, dom = open_in_chromium(report / "report.html", tmp_path)
        assert (decoded, total) == (9, 9)
        assert videos_played(dom) == [(4, len(movie) / 8)]  # HAVE_ENOUGH_DATA, 8 frames a second


def test_geometry_figure_skipped_without_true_geometry(tmp_path, checkpoints, small_dataset):
    """A dataset without true depth and normals (a format-1 copy; an imported recording alike) gets no geometry
    panel: there is no truth to draw beside the renders."""
    from posesplat.trained import load_checkpoint
    from study.analysis import renders

    old = format_1_copy(small_dataset, tmp_path / "old.zarr")
    row = pd.Series({"trial_id": "t", "lr": 3e-3, "epochs_run": 1})
    cfg, model = load_checkpoint(checkpoints["3d"], device="cpu")
    assert renders.geometry_figure({"3d": (cfg.model_copy(update={"dataset": str(old)}), model, row)}, tmp_path) is None


@pytest.mark.parametrize("measured", [False, True], ids=["no-truth", "synthetic"])
def test_no_ground_truth_geometry_is_said_once(tmp_path, capsys, measured):
    """Rows without geometry (NaN depth, normal and surface metrics in every stage, as an imported recording trains)
    get one note in the report, not one per stage, and no row reads as 0; with geometry measured, no note."""
    from posesplat.metrics import GEOMETRY_NAMES

    study = make_study(tmp_path, effect=0.0, seeds=range(3), cells=CELLS[:1])
    add_confirm(study, 0.0)
    for part in sorted(study.rglob("part-*.parquet")):
        t = pq.read_table(part).to_pandas()
        for k in GEOMETRY_NAMES:
            t[k] = 0.005 if measured else float("nan")
        pq.write_table(pa.Table.from_pandas(t, preserve_index=False), part)
    rc, _, err = run([study], capsys)
    assert rc == 0, err
    md = (study / "report" / "decision.md").read_text()
    assert md.count("No ground-truth geometry") == (0 if measured else 1)
    means = json.loads((study / "report" / "decision.json").read_text())["means"]
    assert all((means[k]["2d"] == pytest.approx(0.005)) if measured else k not in means for k in GEOMETRY_NAMES)


def test_renders_skipped_with_a_note_when_checkpoints_are_gone(tmp_path, capsys):
    study = make_study(tmp_path, seeds=range(3), cells=CELLS[:1])
    add_confirm(study, 0.0, checkpoints={"2d": study / "gone.pt"})
    assert main([str(study)]) == 0
    md = (study / "report" / "decision.md").read_text()
    assert "Qualitative renders of 2d skipped: no checkpoint file" in md
    assert not (study / "report" / "qualitative.png").exists()


# ----------------------------------------------------------------------------------------------- the browser


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[int, int, str]:
    """Open a report in headless Chromium: (images decoded, images on the page, the DOM after load). The DOM's
    data-video attribute holds each video's readyState:duration once its data loaded or failed (videos_played)."""
    probe = ("<script>window.addEventListener('load', () => { const im = [...document.images];"
             "document.body.setAttribute('data-decoded', im.filter(i => i.complete && i.naturalWidth > 0).length"
             " + '/' + im.length); const v = [...document.querySelectorAll('video')];"
             "Promise.all(v.map(x => x.readyState >= 2 ? 1 : new Promise(r => { x.addEventListener('loadeddata', r);"
             " x.addEventListener('error', r); }))).then(() => document.body.setAttribute('data-video',"
             " v.map(x => x.readyState + ':' + x.duration).join(','))); });</script>")
    test_page = tmp_path / "probe.html"
    test_page.write_text(page.read_text().replace("</body>", probe + "</body>"))
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         test_page.as_uri()], capture_output=True, text=True, timeout=120)
    decoded = re.search(r'data-decoded="(\d+)/(\d+)"', r.stdout)
    assert decoded, r.stderr[-2000:]
    return int(decoded.group(1)), int(decoded.group(2)), r.stdout


def test_markdown_and_html_have_the_same_sections(tmp_path, capsys):
    """decision.md and report.html come from one list of sections: the same headings in the same order."""
    study = make_study(tmp_path, effect=0.05, seeds=range(3))
    add_confirm(study, 0.0, -0.3)
    assert run([study], capsys)[0] == 0
    md = re.findall(r"^(#{2,3}) (.+)$", (study / "report" / "decision.md").read_text(), re.M)
    page = re.findall(r"<h([23])[^>]*>(.+?)</h\1>", (study / "report" / "report.html").read_text())
    assert [(len(h), t) for h, t in md] == [(int(h), html.unescape(t)) for h, t in page]
    assert [t for _, t in md][:3] == ["Confirm stage (the decision)", "Explore stage (exploratory)", "Per cell"]
    assert [t for _, t in md][-2:] == ["Notes", "Figures"]


def videos_played(dom: str) -> list[tuple[int, float]]:
    """(readyState, duration in seconds) of each video on a page open_in_chromium loaded."""
    found = re.search(r'data-video="([^"]*)"', dom)
    assert found, "the page's videos never loaded nor failed"
    return [(int(r), float(d)) for r, d in (v.split(":") for v in found.group(1).split(",") if v)]


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path, capsys):
    study = make_study(tmp_path, effect=0.05, seeds=range(3))
    add_confirm(study, 0.0, -0.3)
    assert run([study], capsys)[0] == 0
    decoded, total, dom = open_in_chromium(study / "report" / "report.html", tmp_path)
    assert (decoded, total) == (5, 5)  # decision, confirm curves, explore curves, costs, pareto
    assert "Recommendation: 2d" in dom and "Explore stage (exploratory)" in dom
