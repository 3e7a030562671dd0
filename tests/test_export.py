"""posesplat.export: splat files read back with plyfile equal the model's Gaussians and render like the model, in
every format gsplat writes; bad input is one line, exit 2, nothing written."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from plyfile import PlyData

from posesplat.export import FORMATS, OPACITY_EPS, SH_C0, SURFEL_THICKNESS, main
from posesplat.modes import MODES
from posesplat.render import Gaussians, render
from posesplat.trained import load_checkpoint, opened_dataset, reconstruct, render_frame
from shared import ROOT, tiny_config

FRAME = 5


@pytest.fixture(scope="module")
def checkpoints(small_dataset, tmp_path_factory):
    """Tiny real models of every mode, trained for two steps."""
    from posesplat.train import train

    d = tmp_path_factory.mktemp("export_ckpt")
    for mode in MODES:
        train(tiny_config(small_dataset, steps_per_epoch=2, epochs=1, gaussian_mode=mode), ckpt_path=d / f"{mode}.pt",
              progress=False)
    return {mode: d / f"{mode}.pt" for mode in MODES}


def read_ply(path, n_scales: int) -> tuple[Gaussians, np.ndarray]:
    """A PLY the export wrote, its activations inverted: (Gaussians as the renderer takes them, all three scales)."""
    v = PlyData.read(str(path))["vertex"]
    col = lambda *names: torch.from_numpy(np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1))
    scales = col("scale_0", "scale_1", "scale_2").exp()
    g = Gaussians(means=col("x", "y", "z"), colors=0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"),
                  opacities=torch.sigmoid(col("opacity")[:, 0]), quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
                  scales=scales[:, :n_scales])
    return g, scales.numpy()


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_a_ply_reads_back_to_the_models_gaussians_and_its_render(checkpoints, tmp_path, mode, capsys):
    """The file's fields are the model's Gaussians of the frame in the world frame (the pose applied), activations
    inverted; rendered with the torch backend they give the model's own render of that frame in every camera."""
    assert main([str(checkpoints[mode]), "--frames", f"{FRAME}:{FRAME + 1}", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 1 ply file(s) to {tmp_path}")
    cfg, model = load_checkpoint(checkpoints[mode], device="cpu")
    want = reconstruct(model, cfg, FRAME)
    n_scales = MODES[mode].fields["scales"][0]
    got, scales = read_ply(tmp_path / f"frame{FRAME}.ply", n_scales)
    assert got.means.shape == want.means.shape and len(want.means) >= 50
    torch.testing.assert_close(got.means, want.means)
    torch.testing.assert_close(got.scales, want.scales, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.quats, torch.nn.functional.normalize(want.quats, dim=-1))
    torch.testing.assert_close(got.opacities, want.opacities.clamp(OPACITY_EPS, 1 - OPACITY_EPS), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.colors, want.colors, rtol=1e-5, atol=1e-6)
    if n_scales == 2:  # the surfel's thin third axis
        np.testing.assert_allclose(scales[:, 2], SURFEL_THICKNESS * scales[:, :2].min(1), rtol=1e-5)
    ds = opened_dataset(cfg.dataset)
    assert np.linalg.norm(got.means.mean(0).numpy() - ds.centre[FRAME]) < 0.5 * model.ell  # world, around the animal
    local, _ = model.local_gaussians(**{k: v for k, v in ds.load(FRAME, ds.view_split(cfg.holdout_views)[0]).items()
                                        if k in ("images", "masks", "viewmats", "Ks", "centre", "heading")})
    assert not torch.allclose(local.means, got.means, atol=1e-3)  # not the animal-local frame
    vm, K = torch.from_numpy(ds.extrinsics).float(), torch.from_numpy(ds.intrinsics).float()
    background = torch.tensor(ds.background, dtype=torch.float32)
    mine = render(got, mode, vm, K, ds.width, ds.height, "torch", background)
    theirs = render_frame(model, cfg, FRAME, vm, K, ds.width, ds.height)
    assert theirs.alpha.max() > 0.5
    torch.testing.assert_close(mine.rgb, theirs.rgb, rtol=0, atol=1e-4)
    torch.testing.assert_close(mine.alpha, theirs.alpha, rtol=0, atol=1e-4)


def test_every_format_is_written(checkpoints, tmp_path):
    """splat: 32 bytes per Gaussian (antimatter15's layout); ply_compressed: SuperSplat's chunks and vertices."""
    cfg, model = load_checkpoint(checkpoints["3d"], device="cpu")
    n = len(reconstruct(model, cfg, FRAME).means)
    for fmt in FORMATS:
        assert main([str(checkpoints["3d"]), "--frames", f"{FRAME}:{FRAME + 2}", "--format", fmt,
                     "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"frame{k}{suffix}" for k in (FRAME, FRAME + 1) for suffix in FORMATS.values())
    assert (tmp_path / f"frame{FRAME}.splat").stat().st_size == 32 * n
    packed = PlyData.read(str(tmp_path / f"frame{FRAME}.compressed.ply"))
    assert packed["chunk"].count == -(-packed["vertex"].count // 256) and 0 < packed["vertex"].count <= n


def refused(argv: list[str], capsys, *, says: str) -> str:
    """main(argv) exits 2 with one line on stderr holding `says`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    return err


def test_bad_input_is_one_line_and_nothing_written(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    ck = str(checkpoints["3d"])
    refused([str(tmp_path / "none.pt"), "--frames", "0:2", "--out", str(out)], capsys, says="no such checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    refused([str(foreign), "--frames", "0:2", "--out", str(out)], capsys, says="not a posesplat checkpoint")
    refused([ck, "--frames", "20:99", "--out", str(out)], capsys, says="the dataset has frames 0 to 23")
    refused([ck, "--frames", "3:3", "--out", str(out)], capsys, says="must be non-empty")
    refused([ck, "--frames", "a:b", "--out", str(out)], capsys, says="expected A:B")
    refused([ck, "--frames", "", "--out", str(out)], capsys, says="expected A:B")
    refused([ck, "--frames", "0:2", "--format", "obj", "--out", str(out)], capsys, says="--format 'obj': unknown")
    refused([str(checkpoints["2d_screen"]), "--frames", "0:2", "--out", str(out)], capsys,
            says="mode '2d_screen': its Gaussians are ellipses drawn in each image")
    assert not out.exists()
    assert main([ck, "--frames", "1", "--out", str(out)]) == 0
    before = (out / "frame1.ply").read_bytes()
    capsys.readouterr()
    refused([ck, "--frames", "0:2", "--out", str(out)], capsys, says="frame1.ply: already exists (1 of the 2 files)")
    assert sorted(p.name for p in out.iterdir()) == ["frame1.ply"] and (out / "frame1.ply").read_bytes() == before
    assert main([ck, "--frames", "0:2", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame0.ply", "frame1.ply"]


def test_the_module_runs(checkpoints, tmp_path):
    """`python -m posesplat.export`, as the README gives it."""
    r = subprocess.run([sys.executable, "-m", "posesplat.export", str(checkpoints["2d"]), "--frames", "22:",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame22.ply", "frame23.ply"]


def test_a_3dgs_renderer_shows_the_exported_surfels_as_discs(checkpoints, tmp_path):
    """A 2d model's file drawn as 3D Gaussians (three scales: what a 3DGS viewer does; here the project's own 3d
    rasteriser, gsplat's conventions) looks like the model's surfel render: the thin third axis makes discs."""
    assert main([str(checkpoints["2d"]), "--frames", str(FRAME), "--out", str(tmp_path)]) == 0
    cfg, model = load_checkpoint(checkpoints["2d"], device="cpu")
    ds = opened_dataset(cfg.dataset)
    g, scales = read_ply(tmp_path / f"frame{FRAME}.ply", 3)
    vm, K = torch.from_numpy(ds.extrinsics).float(), torch.from_numpy(ds.intrinsics).float()
    viewer = render(g, "3d", vm, K, ds.width, ds.height, "torch", torch.tensor(ds.background, dtype=torch.float32))
    own = render_frame(model, cfg, FRAME, vm, K, ds.width, ds.height)
    a, b = viewer.alpha > 0.5, own.alpha > 0.5
    iou = float((a & b).sum() / (a | b).sum())
    psnr = float(-10 * torch.log10(((viewer.rgb - own.rgb) ** 2).mean()))
    assert iou > 0.85 and psnr > 35, (iou, psnr)
