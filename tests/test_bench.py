"""Benchmark tables: the torch/gsplat ratio pairs rows of one GPU, the grid-112 target is judged on GPU rows only,
and memory growth is read off the smallest and largest grid. Rows come from a real (tiny) CPU measurement where the
code path allows it."""

import pytest
import torch

from bench import render as bench_render
from bench import train_step as bench_step


def render_row(mode="3d", backend="torch", device="cuda", n=1000, image="64x64", ms=10.0, mb=100.0):
    return {"mode": mode, "backend": backend, "device": device, "gaussians": n, "image": image, "pairs_per_px": 10.0,
            "ms": ms, "peak_mb": mb, "mem_kind": "cuda_max_allocated"}


def step_row(mode="3d", grid=112, device="cuda:0", image="288x256", mb=1000.0, voxels=1000, backend="gsplat"):
    return {"mode": mode, "grid_size": grid, "voxels": voxels, "gaussians": 10, "step_ms": 5.0, "peak_mb": mb,
            "mem_kind": "cuda_max_allocated" if device.startswith("cuda") else "cpu_rss_delta", "device": device,
            "backend": backend, "image": image, "pixels": 288 * 256}


def test_ratio_pairs_backends_on_the_same_gpu_case():
    rows = [render_row(backend="torch", ms=30.0, mb=300.0), render_row(backend="gsplat", ms=1.5, mb=20.0),
            render_row(backend="torch", n=4000, ms=50.0),  # no gsplat partner: left out
            render_row(backend="torch", device="cpu", ms=500.0)]  # CPU rows never enter a GPU ratio
    text = bench_render.ratio_table(rows)
    body = text.splitlines()[2:]
    assert body == ["| 3d | 1000 | 64x64 | 30 | 1.50 | 20.0x | 300 | 20 | 15.0x |"]


def test_no_ratio_without_gpu_rows():
    row = bench_render.measure("3d", 200, (32, 32), "torch", torch.device("cpu"), repeats=1)
    assert row["device"] == "cpu" and row["ms"] > 0
    assert bench_render.ratio_table([row]) == ""
    assert "| 3d | torch | cpu | 200 | 32x32 |" in bench_render.table([row])


def test_target_judged_on_gpu_rows_only():
    cpu = [step_row(device="cpu", backend="torch", mb=9000.0, image="64x64")]
    assert "not measured, no GPU here" in bench_step.target(cpu) and "9000 MB at 64x64" in bench_step.target(cpu)
    met = bench_step.target(cpu + [step_row(mb=3000.0)])
    assert ": met: 3000 MB at 288x256 (gsplat)" in met
    worst = bench_step.target(cpu + [step_row(mb=3000.0, image="144x128"), step_row(mb=5000.0)])
    assert "NOT met" in worst and "5000 MB at 288x256" in worst
    assert "NOT met" not in bench_step.target([step_row(mode="2d", mb=9000.0), step_row(mb=100.0)])


def test_growth_from_smallest_to_largest_grid():
    rows = [step_row(grid=112, voxels=120000, mb=400.0), step_row(grid=32, voxels=6000, mb=80.0),
            step_row(grid=48, voxels=14000, mb=200.0), step_row(mode="2d", grid=32)]  # one grid only: no line
    assert bench_step.growth(rows) == ("- 3d at 288x256: grid 32 -> 112 is 20.0x the voxels and 5.0x the peak memory "
                                       "(80 -> 400 MB, cuda_max_allocated)")


def test_tables_not_rerun_are_kept_with_the_date_they_were_measured(tmp_path, monkeypatch):
    import bench.__main__ as bench_main

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nWritten by `python -m bench`.\n\n- date: 2026-11-25 10:16 UTC\n- CPU: x\n\n"
                   "## 1. Renderer: forward + backward\n\nold table 1\n\n## 2. One training step against grid_size\n\n"
                   "old table 2\n")
    monkeypatch.setattr(bench_main.bench_render, "run", lambda quick: [render_row(device="cpu")])
    assert bench_main.main(["--only", "1", "--out", str(out)]) == 0
    text = out.read_text()
    one, two = text.split("\n## ")[1:]
    assert one.startswith("1. Renderer") and "old table 1" not in one and "| 3d | torch | cpu | 1000 |" in one
    assert one.split("\n\n")[1].startswith("Measured 20") and "2026-11-25" not in one
    assert two.startswith("2. One training step") and "old table 2" in two
    assert two.split("\n\n")[1] == "Measured 2026-11-25 10:16 UTC."
    assert bench_main.main(["--only", "1", "--out", str(out)]) == 0  # a second rerun keeps table 2's date
    assert out.read_text().split("\n## ")[2].split("\n\n")[1] == "Measured 2026-11-25 10:16 UTC."


def test_trial_time_parts_are_exclusive_and_add_up():
    """bench.trial_time's Clock: a wrapped call's part excludes the wrapped calls inside it, a label can follow the
    enclosing call's, and the parts sum to the outer call's time."""
    import time

    from bench.trial_time import Clock, in_eval

    clock = Clock()
    inner = clock.wrap(lambda: time.sleep(0.02), in_eval("eval render", "train forward"))
    step = clock.wrap(lambda: (time.sleep(0.01), inner()), "optimiser and checks")
    evaluate = clock.wrap(lambda: (time.sleep(0.01), inner(), inner()), "evaluation (panels, tally)")
    t0 = time.perf_counter()
    step()
    evaluate()
    total = time.perf_counter() - t0
    parts = dict(clock.parts)
    assert parts["train forward"] == pytest.approx(0.02, abs=0.015)
    assert parts["eval render"] == pytest.approx(0.04, abs=0.02)
    assert parts["optimiser and checks"] == pytest.approx(0.01, abs=0.01)
    assert sum(parts.values()) == pytest.approx(total, abs=1e-3)


def test_trial_time_counts_another_threads_calls_apart():
    """A wrapped call from another thread (the read-ahead) neither enters nor disturbs the main thread's parts."""
    import threading
    import time

    from bench.trial_time import AHEAD, Clock

    clock = Clock()
    read = clock.wrap(lambda: time.sleep(0.03), "data")
    step = clock.wrap(lambda: time.sleep(0.05), "train forward")
    ahead = threading.Thread(target=read)
    ahead.start()
    step()
    ahead.join()
    assert clock.parts[AHEAD] == pytest.approx(0.03, abs=0.02)
    assert clock.parts["train forward"] == pytest.approx(0.05, abs=0.02) and clock.parts.get("data", 0.0) == 0.0


def test_analysis_scale_study_reads_the_same_in_both_layouts(tmp_path):
    """bench.analysis_scale: the generated study (real schema, both stages, a confirm plan) is analysed in parts and
    compacted, each row once, with a decision written (exit 0), and the table pairs each layout with the old code."""
    from bench import analysis_scale as scale
    from study.analysis.load import load_studies

    parts = scale.write_study(tmp_path / "parts", rows=120, epochs=6)
    packed = scale.compacted_copy(parts, tmp_path / "packed")
    assert not list((packed / "metrics").glob("part-*")) and list((packed / "metrics").glob("trial-*"))
    got = {name: scale.measure(str(s), tmp_path / f"report-{name}", 1, scale.ROOT) for name, s in
           (("parts", parts), ("compacted", packed))}
    assert got["parts"]["rows"] == got["compacted"]["rows"] == len(load_studies([parts, parts / "confirm"]).metrics)
    rows = [{"rows": 120, "trials": 20, "epochs": 6, "layout": layout, "code": code, "files": 10, "storage": "local disk",
             "load_s": 1.0, "report_s": t} for layout, code, t in (("parts", "old", 4.0), ("compacted", "new", 2.0))]
    assert scale.table(rows).splitlines()[-1].endswith("| 2.00 | 2.0x |")


def test_prep_speed_compares_datasets_value_by_value(tmp_path):
    """bench.prep_speed's dataset comparison: equal stores are 'yes'; one changed pixel or attribute is named."""
    import numpy as np
    import zarr

    from bench.prep_speed import same_dataset

    def store(name, pixel=0, ell=0.26):
        root = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        images = np.zeros((2, 3, 4, 4, 3), dtype=np.uint8)
        images[1, 2, 3, 3, 0] = pixel
        root.create_array("images", data=images)
        root.attrs.update({"ell": ell, "fps": 30.0})
        return tmp_path / name

    a = store("a.zarr")
    assert same_dataset(a, store("b.zarr")) == "yes"
    assert same_dataset(a, store("c.zarr", pixel=1)) == "array images"
    assert same_dataset(a, store("d.zarr", ell=0.2600001)) == "attrs ell"


def test_prep_speed_table_gives_rates_and_ratios():
    """Frames per second of each part from the medians of the timed imports, and old / new of the whole import."""
    from bench.prep_speed import table

    def parts(track, frames, total):
        return {"check": 1.0, "track": track, "pose": 0.5, "frames": frames, "finish": 0.5, "total": total}

    got = {("old", 128, 500): [parts(50.0, 50.0, 102.0), parts(60.0, 40.0, 110.0), parts(40.0, 60.0, 104.0)],
           ("new", 128, 500): [parts(5.0, 10.0, 17.0)]}
    text = table(got, {(128, 500): [2.0, 4.0]}, {(128, 500): "yes"}, ["old", "new"])
    rows = text.splitlines()
    assert rows[2] == "| 128x128 | 500 | old | 1.0 | 10 | 10 | 1.0 | 104.0 | 4.8 | 3.0 | 34.7x |  |"
    assert rows[3] == "| 128x128 | 500 | new | 1.0 | 100 | 50 | 1.0 | 17.0 | 29.4 | 3.0 | 5.7x | yes |"
    assert rows[-1] == "- 500 frames at 128x128, 6 cameras: new imports 6.1x faster than old (104.0 s -> 17.0 s)."


def test_the_gpu_design_variants_start_from_the_shipped_design(capsys):
    """bench.gpu_designs' first row is the shipped GPU design (the docs' baseline); each row one variant, and
    `--whole` one row per landscape at the chosen tuning seeds."""
    from bench.gpu_designs import TARGET, VARIANTS, main, variant
    from study.analysis.simulate import LANDSCAPES, procedure_designs

    gpu = procedure_designs()[1]
    assert VARIANTS[0] == (gpu.tune.seeds, gpu.seeds, gpu.looks)
    assert variant(gpu, 7).tune.seeds == 7 and variant(gpu, 7)._replace(tune=gpu.tune) == gpu
    assert TARGET in [land.name for land in LANDSCAPES]
    assert main(["--studies", "2", "--whole", "21"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 + len(VARIANTS) + len(LANDSCAPES)  # two header rows
