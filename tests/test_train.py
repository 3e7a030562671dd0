"""Training loop: loss goes down in each mode, resume reproduces the run, failures are loud and clear."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import posesplat.train
from posesplat.checkpoint import write as write_checkpoint
from posesplat.config import load_config
from posesplat.metrics import PEAK_MEM
from posesplat.model import PoseSplatter
from posesplat.checkpoint import read as read_checkpoint
from posesplat.checkpoint import rng_state, save_checkpoint, set_rng_state
from posesplat.memory import OutOfMemoryError
from posesplat.train import NonFiniteLossError, main, make_optimizer, train
from posesplat.trained import load_checkpoint, render_frame
from shared import format_1_copy, tiny_config

DOCS = Path(__file__).parents[1] / "docs"


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_loss_decreases(small_dataset, mode):
    cfg = tiny_config(small_dataset, gaussian_mode=mode, epochs=4, steps_per_epoch=6, lr_schedule="constant", valid_every=4)
    history = train(cfg, progress=False)
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    last = history[-1]
    assert last["params_per_gaussian"] == {"3d": 14, "2d": 13, "2d_screen": 9}[mode]
    assert 0 <= last["valid_heldout_iou"] <= 1 and last["gaussians_per_frame"] >= 50
    assert last["test_heldout_psnr"] > 5 and last["render_ms"] > 0 and last[PEAK_MEM[last["mem_kind"]]] > 0
    assert last["mem_kind"] == ("cuda_max_allocated" if last["device"].startswith("cuda") else "cpu_rss_delta")
    assert 0 <= last["gt_iou3d"] <= 1 and 0 <= last["gt_mass_inside"] <= 1


def test_every_reported_metric_is_in_the_schema_and_documented(small_dataset, tmp_path):
    """A real epoch (evaluated) and one without evaluation report exactly the metrics schema's keys (scalars of the
    schema's kind, a list per per-frame metric), and every key is documented."""
    from posesplat import metrics as schema

    cfg = tiny_config(small_dataset, epochs=2, steps_per_epoch=1, valid_every=2)
    skipped, metrics = train(cfg, ckpt_path=tmp_path / "k.pt", progress=False)
    lists = {schema.frame_column(k) for k in schema.names(per_frame=True)} | {schema.FRAMES}
    for epoch in (skipped, metrics):
        assert set(epoch) == set(schema.BY_NAME) | lists
        for k, m in schema.BY_NAME.items():
            assert isinstance(epoch[k], {"float": float, "int": int, "text": str}[m.kind]), (k, epoch[k])
    assert all(math.isnan(skipped[k]) for k in schema.names(evaluated=True))
    assert all(math.isfinite(metrics[k]) for k in schema.names("quality", evaluated=True))
    assert [len(metrics[k]) for k in lists] == [cfg.eval_frames] * len(lists)
    metrics_md, training_md = (DOCS / "metrics.md").read_text(), (DOCS / "training.md").read_text()
    assert [k for k in metrics if f"`{k}`" not in metrics_md] == []
    assert [k for k in metrics if f"`{k}`" not in training_md] == []


def test_resume_reproduces_losses(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, gaussian_mode="3d", valid_every=10)
    full = train(cfg, ckpt_path=tmp_path / "a.pt", progress=False)
    part = train(cfg, ckpt_path=tmp_path / "b.pt", progress=False, epochs=1)
    assert len(part) == 1
    # the second run continues epoch 2 and 3 from b.pt (the scheduler horizon is cfg.epochs in both)
    resumed = train(cfg, ckpt_path=tmp_path / "b.pt", resume_from=tmp_path / "b.pt", progress=False)
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(full, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-7)
    assert read_checkpoint(tmp_path / "b.pt")["epoch"] == 3
    assert full[-1]["checkpoint_bytes"] == (tmp_path / "a.pt").stat().st_size < 2_000_000


def test_non_finite_loss_names_epoch_and_step(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, gaussian_mode="2d", epochs=2)
    train(cfg, ckpt_path=tmp_path / "c.pt", progress=False, epochs=1)
    state = read_checkpoint(tmp_path / "c.pt")
    for k, v in state["model"].items():  # a diverged run: the head's weights have blown up
        if k.startswith("head."):
            v.fill_(float("nan"))
    write_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1"):
        train(cfg, resume_from=tmp_path / "c.pt", progress=False)


def test_load_checkpoint_and_render_frame(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, gaussian_mode="3d", epochs=1)
    train(cfg, ckpt_path=tmp_path / "m.pt", progress=False)
    cfg2, model = load_checkpoint(tmp_path / "m.pt")
    assert cfg2 == cfg
    from posesplat.data import open_dataset

    ds = open_dataset(small_dataset)
    out = render_frame(model, cfg2, 0, torch.from_numpy(ds.extrinsics[:2]).float(),
                       torch.from_numpy(ds.intrinsics[:2]).float(), ds.width, ds.height)
    assert out.rgb.shape == (2, ds.height, ds.width, 3) and out.alpha.max() > 0.5


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_paper_size_checkpoint_is_small(tmp_path, mode):
    """A real checkpoint of a paper-size model (grid 112, crop 112 x 56 x 56) with Adam's two moments and a
    200-epoch history is written by save_checkpoint and stays under 10 MB; nothing derived is saved."""
    cfg = load_config(f"configs/2d_3d_comparison_{mode}_paper.json")
    volume_idx = [[0, 112], [0, 56], [0, 56]]
    model = PoseSplatter(cfg, ell=0.2, volume_idx=volume_idx, px_per_voxel=1.0)
    opt, sched = make_optimizer(cfg, model, total_steps=1000)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    history = [{f"metric_{i}": float(i) for i in range(30)} for _ in range(cfg.epochs)]
    size = save_checkpoint(tmp_path / "paper.pt", cfg, volume_idx, model, opt, sched, cfg.epochs, history,
                           torch.device("cpu"))
    n = sum(p.numel() for p in model.parameters())
    assert size == (tmp_path / "paper.pt").stat().st_size
    assert 3 * 4 * n < size < 10_000_000, (n, size)  # weights and both moments really are in it
    state = read_checkpoint(tmp_path / "paper.pt")
    assert all(k.startswith(("unets.", "head.")) for k in state["model"])  # no voxel grid, no Gaussians
    assert len(state["optimizer"]["state"]) == len(list(model.parameters())) and len(state["history"]) == cfg.epochs
    assert state["volume_idx"] == volume_idx and state["cuda_rng"] is None


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"grid_sise": 32}))
    r = subprocess.run([sys.executable, "-m", "posesplat.train", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {bad}: unknown key 'grid_sise' (did you mean 'grid_size'?)"
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"dataset": str(tmp_path / "nope.zarr")}))
    r = subprocess.run([sys.executable, "-m", "posesplat.train", str(missing), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nope.zarr" in r.stderr


def fake_oom(when_grad: bool):
    """A stand-in for posesplat.train.render that runs out of memory in training (grad on) or evaluation (off)."""
    real = posesplat.train.render

    def render(*args, **kw):
        if torch.is_grad_enabled() == when_grad:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 79.10 GiB of which 1.20 GiB is free.\nSee documentation for Memory Management")
        return real(*args, **kw)

    return render


@pytest.mark.parametrize("where, when_grad", [("training (epoch 1, step 1)", True), ("evaluation (epoch 1)", False)])
def test_out_of_memory_names_mode_grid_and_size(small_dataset, monkeypatch, where, when_grad):
    monkeypatch.setattr(posesplat.train, "render", fake_oom(when_grad))
    cfg = tiny_config(small_dataset, gaussian_mode="2d", epochs=1, steps_per_epoch=2)
    with pytest.raises(OutOfMemoryError) as err:
        train(cfg, progress=False)
    msg = str(err.value)
    assert f"out of memory on cpu in {where}: mode=2d grid_size=16 asked for 2.00 GiB;" in msg and "\n" not in msg
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_cli_run_failures_are_one_line(small_dataset, tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config(small_dataset, epochs=2, steps_per_epoch=2, valid_every=5).model_dump_json())
    with monkeypatch.context() as m:  # out of memory in the first training step
        m.setattr(posesplat.train, "render", fake_oom(True))
        assert main([str(config), "--out", str(tmp_path / "oom")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: out of memory on cpu in training (epoch 1, step 1): mode=3d grid_size=16 "
                                "asked for 2.00 GiB")
    # a diverged run: epoch 1 trains, then the head's weights are NaN and --resume fails at epoch 2, step 1
    out = tmp_path / "nan"
    assert main([str(config), "--out", str(out), "--epochs", "1"]) == 0
    state = read_checkpoint(out / "checkpoint.pt")
    for k, v in state["model"].items():
        if k.startswith("head."):
            v.fill_(float("nan"))
    write_checkpoint(out / "checkpoint.pt", state)
    capsys.readouterr()
    assert main([str(config), "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: non-finite Gaussian") and "epoch 2, step 1" in errors[0], errors[0]
    assert errors[0].endswith("lower lr or lower grad_clip (now 1)"), errors[0]  # clipping is on: never "enable" it
    # a weight so large that the weighted sum of finite terms overflows: the advice names the weights, not lr
    config.write_text(tiny_config(small_dataset, epochs=1, steps_per_epoch=2, valid_every=5, img_lambda=1e39).model_dump_json())
    assert main([str(config), "--out", str(tmp_path / "weights")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "from finite terms (img_lambda 1e+39" in errors[0], errors
    assert errors[0].endswith("lower img_lambda or ssim_lambda (the weighted sum overflows)"), errors[0]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_rng_state_round_trip(device):
    """What a checkpoint saves of the RNGs restores the same random numbers (CUDA's only when on CUDA)."""
    dev = torch.device(device)
    torch.manual_seed(1)
    saved = rng_state(dev)
    assert (saved["cuda_rng"] is None) == (device == "cpu")
    first = (torch.rand(5), torch.rand(5, device=dev))
    torch.manual_seed(2)  # something else moves both generators on
    set_rng_state(saved, dev)
    again = (torch.rand(5), torch.rand(5, device=dev))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_geometry_metrics_and_an_older_store(small_dataset, tmp_path, capsys):
    """On the synthetic store the geometry metrics are finite and plausible (millimetres to centimetres, degrees,
    with a geometry panel); on a copy without gt/depth and gt/normal (format 1) they are NaN, said in one line."""
    from posesplat import metrics as schema

    cfg = tiny_config(small_dataset, epochs=1, steps_per_epoch=2)
    reports = []
    last = train(cfg, progress=False, on_epoch=reports.append)[-1]
    assert 0 < last["test_heldout_depth_err"] < 0.1 and 0 < last["test_heldout_depth_err_rel"] < 0.2
    assert 0 < last["test_heldout_normal_err"] < 90 and 0 < last["test_surface_dist"] < 0.1
    assert len(last["test_surface_dist_frames"]) == len(last["test_frames"]) == cfg.eval_frames
    assert reports[-1].images["geometry"].shape == (64, 4 * 64, 3)
    old = format_1_copy(small_dataset, tmp_path / "old.zarr")
    capsys.readouterr()
    last = train(tiny_config(old, epochs=1, steps_per_epoch=2), progress=False)[-1]
    geo = [k for k in schema.names("quality", per_frame=True) if schema.BY_NAME[k].higher_is_better is False]
    assert len(geo) == 4 and all(math.isnan(last[k]) for k in geo)
    assert all(math.isnan(v) for k in geo for v in last[schema.frame_column(k)])
    assert math.isfinite(last["test_heldout_iou"])
    err = [line for line in capsys.readouterr().err.splitlines() if "gt/depth" in line]
    assert err == [f"warning: {old}: format_version 1 has no gt/depth and gt/normal (added in format 2): geometry "
                   f"metrics are NaN; regenerate it with `python -m posesplat.synth --force`"]


def test_frames_in_memory_train_and_score_as_reads_from_the_store(small_dataset, tmp_path):
    """A run that keeps its frames in memory trains and scores exactly as one that reads every frame from the store
    (frames_in_memory_mb 0): every metric but time, memory and the checkpoint's size equal, the weights equal."""
    varying = {"epoch_time_s", "eval_time_s", "render_ms", "checkpoint_bytes", *PEAK_MEM.values()}
    runs = {mb: train(tiny_config(small_dataset, frames_in_memory_mb=mb, eval_frames=3, epochs=2),
                      ckpt_path=tmp_path / f"{mb}.pt", progress=False) for mb in (0, 1024)}
    for a, b in zip(runs[0], runs[1024], strict=True):
        assert a.keys() == b.keys()
        for k in a.keys() - varying:
            same = a[k] == b[k] if isinstance(a[k], str) else np.array_equal(a[k], b[k], equal_nan=True)
            assert same, (k, a[k], b[k])
    weights = [read_checkpoint(tmp_path / f"{mb}.pt")["model"] for mb in (0, 1024)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
