"""GPU sharing on a simulated cluster: a real local Ray that advertises 2 GPUs (`ray.init(num_gpus=2)` on this CPU
machine), the real study driver and its per-trial fractions from the memory model, and a cheap trial that logs when
it ran and which GPU Ray gave it. Trials of different predicted sizes get different fractions, no GPU is ever
asked for more than all of it, trials share GPUs as their fractions allow, and a trial that runs out of GPU memory
is retried with twice its fraction and completes."""

import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray import tune

from study.runner.resources import gpu_fraction
from study.runner.run import main

GPU_MEM_MB = 1000.0
SPACE = {  # 8 trials: (2d, 3d) x grid (16, 64) x 2 seeds, 3 epochs of 3 s; GPUs only limit how many run at once
    "name": "gpus", "modes": ["2d", "3d"], "grid": {"grid_size": [16, 64], "max_frames": [12]},
    "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3}}, "samples_per_cell": 2, "max_epochs": 3,
    "scheduler": {"type": "none"}, "resources": {"cpus_per_trial": 0.5, "gpus_per_trial": "auto"},
}


RAY_INIT = {"num_cpus": 8, "num_gpus": 2}  # what conftest's ray_local starts for this module


def logged_trial(log: Path):
    """Each execution appends {trial, mode, grid, seed, fraction, gpu_ids, start, end} to log/<trial>.jsonl; the
    (3d, grid 64, seed 0) trial runs out of GPU memory in its first execution."""

    def trainable(config, base_config=None, study_uri=None):
        from posesplat.memory import OutOfMemoryError

        ctx = tune.get_context()
        rec = {"trial": ctx.get_trial_id(), "mode": config["gaussian_mode"], "grid": config["grid_size"],
               "seed": config["seed"], "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "start": time.time(),
               "fraction": ctx.get_trial_resources().required_resources.get("GPU", 0.0)}
        path = log / f"{rec['trial']}.jsonl"
        first = not path.exists()
        start = 1
        if tune.get_checkpoint() is not None:
            with tune.get_checkpoint().as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
        try:
            for epoch in range(start, 4):
                time.sleep(3.0)
                if first and epoch == 2 and (rec["mode"], rec["grid"], rec["seed"]) == ("3d", 64, 0):
                    raise OutOfMemoryError("out of memory on cuda in training (epoch 2, step 1): mode=3d "
                                           "grid_size=64 asked for 0.50 GiB")
                with tempfile.TemporaryDirectory() as d:
                    (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                    tune.report({"epoch": epoch, "valid_heldout_iou": 0.1 * epoch, "cuda_peak_allocated_mb": 100.0},
                                checkpoint=tune.Checkpoint.from_directory(d))
        finally:
            with open(path, "a") as f:
                f.write(json.dumps({**rec, "end": time.time()}) + "\n")

    return trainable


def test_fractions_pack_gpus_and_oom_retries_larger(ray_local, tmp_path, small_dataset):
    space = tmp_path / "gpus.json"
    space.write_text(json.dumps(SPACE))
    log = tmp_path / "log"
    log.mkdir()
    rc = main(["--space", str(space), "--storage", str(tmp_path / "studies"), "--dataset", str(small_dataset),
               "--address", "auto", "--gpu-mem-mb", str(GPU_MEM_MB), "--search", "random", "--no-report"],
              logged_trial(log))
    assert rc == 0
    runs = [json.loads(line) for p in log.iterdir() for line in p.read_text().splitlines()]
    pixels = 32 * 32  # the 64x64 test images at the default image_downsample 2
    want = {(m, g): gpu_fraction(m, g, GPU_MEM_MB, pixels) for m in ("2d", "3d") for g in (16, 64)}
    assert len(set(want.values())) > 1, want  # the sizes differ, so must the fractions
    first = {}
    for r in sorted(runs, key=lambda r: r["start"]):
        first.setdefault(r["trial"], r)
    assert len(first) == 8
    for r in first.values():
        assert r["fraction"] == pytest.approx(want[r["mode"], r["grid"]]), r
        assert len(r["gpu_ids"]) == 1, r  # a fraction of one GPU
    # at every moment, the fractions of the executions running on a GPU add up to at most 1
    peak_per_gpu = 0
    for t in sorted({r["start"] + 1e-3 for r in runs}):
        running = [r for r in runs if r["start"] <= t < r["end"]]
        for gpu in ("0", "1"):
            on = [r for r in running if r["gpu_ids"] == [gpu]]
            assert sum(r["fraction"] for r in on) <= 1.0 + 1e-9, on
            peak_per_gpu = max(peak_per_gpu, len(on))
    assert peak_per_gpu >= 2  # trials did share a GPU (with whole GPUs at most 1 per GPU would run)
    print(f"peak trials on one GPU: {peak_per_gpu}; peak in all: {max(sum(r['start'] <= t < r['end'] for r in runs) for t in {r['start'] + 1e-3 for r in runs})}")
    # the OOM: retried with twice the fraction (not counted against --max-failures 1), then completed
    oom = [r for r in runs if (r["mode"], r["grid"], r["seed"]) == ("3d", 64, 0)]
    assert len(oom) == 2 and oom[1]["fraction"] == pytest.approx(min(1.0, 2 * oom[0]["fraction"])), oom
    trials = {(t["gaussian_mode"], t["grid_size"], t["seed"]): t
              for t in pq.read_table(tmp_path / "studies" / "gpus" / "trials.parquet").to_pylist()}
    assert {t["status"] for t in trials.values()} == {"completed"}
    t = trials["3d", 64, 0]
    assert t["oom_retries"] == 1 and t["gpu_fraction"] == pytest.approx(oom[1]["fraction"])
    assert "OutOfMemoryError: out of memory on cuda" in t["oom_error"]
