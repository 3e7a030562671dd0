"""Training loop: loss goes down in each mode, resume reproduces the run, failures are loud and clear."""

import json
import subprocess
import sys

import pytest
import torch

from posesplat.config import make_config
from posesplat.model import PoseSplatter
from posesplat.train import NonFiniteLossError, load_checkpoint, read_checkpoint, render_frame, save_checkpoint, train


def tiny(dataset, **kw):
    values = dict(dataset=str(dataset), image_downsample=1, grid_size=16, base_filters=4, num_unets=1,
                  min_n=50, max_n=2000, max_frames=12, eval_frames=2, steps_per_epoch=4, epochs=3, lr=3e-3)
    values.update(kw)
    return make_config(values)


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_loss_decreases(small_dataset, mode):
    cfg = tiny(small_dataset, gaussian_mode=mode, epochs=4, steps_per_epoch=6, lr_schedule="constant", valid_every=4)
    history = train(cfg, progress=False)
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    last = history[-1]
    assert last["params_per_gaussian"] == {"3d": 14, "2d": 13, "2d_screen": 9}[mode]
    assert 0 <= last["valid_heldout_iou"] <= 1 and last["n_gaussians"] >= 50
    assert last["test_heldout_psnr"] > 5 and last["render_ms"] > 0 and last["peak_mem_mb"] >= 0
    assert 0 <= last["gt_iou3d"] <= 1


def test_resume_reproduces_losses(small_dataset, tmp_path):
    cfg = tiny(small_dataset, gaussian_mode="3d", valid_every=10)
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
    cfg = tiny(small_dataset, gaussian_mode="2d", epochs=2)
    train(cfg, ckpt_path=tmp_path / "c.pt", progress=False, epochs=1)
    state = read_checkpoint(tmp_path / "c.pt")
    for k, v in state["model"].items():  # a diverged run: the head's weights have blown up
        if k.startswith("head."):
            v.fill_(float("nan"))
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1"):
        train(cfg, resume_from=tmp_path / "c.pt", progress=False)


def test_load_checkpoint_and_render_frame(small_dataset, tmp_path):
    cfg = tiny(small_dataset, gaussian_mode="3d", epochs=1)
    train(cfg, ckpt_path=tmp_path / "m.pt", progress=False)
    cfg2, model = load_checkpoint(tmp_path / "m.pt")
    assert cfg2 == cfg
    from posesplat.data import open_dataset

    ds = open_dataset(small_dataset)
    out = render_frame(model, cfg2, 0, torch.from_numpy(ds.extrinsics[:2]).float(),
                       torch.from_numpy(ds.intrinsics[:2]).float(), ds.width, ds.height)
    assert out.rgb.shape == (2, ds.height, ds.width, 3) and out.alpha.max() > 0.5


def test_paper_size_checkpoint_is_small():
    """Learnable state plus Adam's two moments at grid 112 stays well under 10 MB."""
    from posesplat.config import load_config

    cfg = load_config("configs/2d_3d_comparison_3d_paper.json")
    model = PoseSplatter(cfg, ell=0.2, volume_idx=[[0, 112], [0, 56], [0, 56]], px_per_voxel=1.0)
    n = sum(p.numel() for p in model.parameters())
    assert 3 * 4 * n < 10_000_000, n
    assert all(k.startswith(("unets.", "head.")) for k in model.state_dict())  # nothing derived is saved


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
